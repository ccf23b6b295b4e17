"""Standing: at risk for a default card expiring before the next invoice (in the SQL the
admin list filters by, and for one account), and for an account whose balances last less
than 72 hours of what runs."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from portal.extensions import db
from portal.models import PaymentMethod, User
from portal.money import Money
from portal.services.metering import deployments
from portal.services.standing import status
from portal.services.wallet import credits

NOW = datetime(2026, 12, 15, 12, tzinfo=UTC)  # the next invoice is on 1 January 2027


def card(user: User, month: int, year: int) -> PaymentMethod:
    row = PaymentMethod(
        user_id=user.id,
        gateway_id=f"pm_{user.id}_{month}_{year}",
        fingerprint=f"fp{user.id}",
        brand="visa",
        last4="4242",
        exp_month=month,
        exp_year=year,
        is_default=True,
    )
    db.session.add(row)
    db.session.commit()
    return row


def listed(user: User) -> str:
    return db.session.scalar(select(status.standing_of(User.id, NOW)).where(User.id == user.id))


def test_a_default_card_expiring_before_the_next_invoice(ctx, make_user):
    user = db.session.get(User, make_user().id)
    assert listed(user) == "good" and status.standing(user, NOW).status == "good"
    row = card(user, 12, 2026)  # valid through 31 December: expires before 1 January
    assert listed(user) == "at_risk"
    s = status.standing(user, NOW)
    assert s.status == "at_risk"
    assert s.reasons == ("the default card expires before the next invoice",)
    row.exp_year = 2027
    db.session.commit()
    assert listed(user) == "good"


def test_balances_lasting_less_than_72_hours(ctx, make_user):
    user = db.session.get(User, make_user().id)
    deployments.create_deployment(
        external_id="runs", user=user, kind="vm", cpu_cores=1, memory_gb=0, storage_gb=0
    )
    credits.grant_credit(
        user=user, amount=Money(360, "USD"), reason="trial", idempotency_key=f"t:{user.id}"
    )
    db.session.commit()
    s = status.standing(user)  # 3.60 at 0.05 an hour: 72 hours
    assert (s.status, s.runway_hours) == ("good", 72)
    credits.grant_credit(
        user=user, amount=Money(1, "USD"), reason="x", idempotency_key=f"u:{user.id}"
    )
    db.session.commit()
    assert status.standing(user).runway_hours == 72
    deployments.create_deployment(
        external_id="more", user=user, kind="vm", cpu_cores=1, memory_gb=0, storage_gb=0
    )
    db.session.commit()
    s = status.standing(user)
    assert (s.status, s.runway_hours) == ("at_risk", 36)

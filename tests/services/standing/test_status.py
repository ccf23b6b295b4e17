"""Standing: at risk for a default card expiring before the next invoice (in the SQL the
admin list filters by, and for one account), and for an account whose balances last less
than 72 hours of what runs."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select

from portal.extensions import db
from portal.models import (
    Deployment,
    DeploymentState,
    DunningStep,
    Invoice,
    InvoiceStatus,
    PaymentMethod,
    User,
)
from portal.money import Money
from portal.services.metering import deployments
from portal.services.standing import status
from portal.services.wallet import credits
from tests.support.invoices import OCT, issue_invoices

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


def test_counts_by_standing_agree_with_the_list(app, make_user):
    """Each account counted once, at its worst standing, as ``standing_of`` lists it."""
    ids = {name: make_user(name=name).id for name in ("remove", "susp", "late", "card", "ok")}
    invoices = {
        n: issue_invoices(app, ids[n], periods=(OCT,))[0] for n in ("remove", "susp", "late")
    }
    with app.app_context():
        for name in ("remove", "susp", "late"):
            db.session.get(Invoice, invoices[name]).status = InvoiceStatus.OVERDUE.value
        for name in ("remove", "susp"):
            db.session.add(
                DunningStep(invoice_id=invoices[name], user_id=ids[name], step="suspended")
            )
        db.session.scalars(
            select(Deployment).where(Deployment.user_id == ids["remove"])
        ).first().state = str(DeploymentState.REMOVING)
        db.session.commit()
        for name in ("late", "card"):  # an expiring card does not make an overdue account better
            card(db.session.get(User, ids[name]), 12, 2026)
        standing = status.standing_of(User.id, NOW).label("standing")
        listed_counts = dict(
            db.session.execute(
                select(standing, func.count()).select_from(User).group_by(standing)
            ).all()
        )
        counts = status.count_by_standing(NOW)
        db.session.remove()
    assert counts == {s: listed_counts.get(s, 0) for s in status.STANDINGS}
    assert counts == {"removing": 1, "suspended": 1, "overdue": 1, "at_risk": 1, "good": 1}

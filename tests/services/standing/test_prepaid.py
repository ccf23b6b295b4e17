"""Prepaid accounts with a frozen clock: usage charged hour by hour from the funds (credits,
then vouchers, then cash), once per hour; the period's statement paid by those charges, to
the cent; funds running out put the deployments up for removal for a day, money arriving
restores them at once, and with none they are removed at the removal time, never earlier.
The ledger reconciles and the rollups audit clean at every step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from portal.documents import invoice_pdf
from portal.extensions import db
from portal.models import (
    Deployment,
    Event,
    LedgerTransaction,
    OutboundEmail,
    PrepaidCharge,
    PrepaidRemoval,
    User,
)
from portal.money import Money
from portal.services.invoicing import prepaid as charging
from portal.services.invoicing import run as invoice_run
from portal.services.invoicing.snapshot import with_number
from portal.services.metering import deployments, rollups
from portal.services.payments import topups
from portal.services.standing import candeploy, dunning, prepaid, restore, status
from portal.services.wallet import credits, vouchers
from portal.services.wallet.reconcile import find_discrepancies
from tests.support.invoices import pay_offline

from .test_dunning import overdue  # noqa: F401  (the fixture)

HOUR = timedelta(hours=1)
NOV = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


class Clock:
    def __init__(self, now: datetime):
        self.now = now


@pytest.fixture
def clock(monkeypatch):
    """The time the restore job (run at once after a payment commits) takes as now."""
    clock = Clock(NOV[0])
    monkeypatch.setattr(restore, "utcnow", lambda: clock.now)
    return clock


def prepaid_user(make_user) -> User:
    user = db.session.get_one(User, make_user(name="Pre Paid").id)
    user.billing_mode = "prepaid"
    db.session.commit()
    return user


def deploy(user: User, name: str, start: datetime, **size) -> Deployment:
    size = {"cpu_cores": 1, "memory_gb": 0, "storage_gb": 0, **size}
    dep, _ = deployments.create_deployment(
        external_id=name, user=user, kind="vm", started_at=start, **size
    )
    db.session.commit()
    return dep


def top_up(user: User, minor: int, reference: str) -> None:
    topups.credit_top_up(user, Money(minor, "USD"), reference=reference)
    db.session.commit()


def meter(user: User, upto: datetime) -> None:
    rollups.meter_chunk(rollups.chunk_of(user.id), upto)
    db.session.commit()


def stand(at: datetime) -> prepaid.PrepaidResult:
    result = prepaid.run(at)
    db.session.commit()
    return result


def charges(user: User) -> list[PrepaidCharge]:
    return list(
        db.session.scalars(
            select(PrepaidCharge)
            .where(PrepaidCharge.user_id == user.id)
            .order_by(PrepaidCharge.through)
        )
    )


def state(name: str) -> str:
    db.session.expire_all()
    return db.session.scalar(select(Deployment.state).where(Deployment.external_id == name))


def events(name: str) -> list[Event]:
    return list(db.session.scalars(select(Event).where(Event.name == name).order_by(Event.id)))


def mails(user: User, subject: str) -> list[OutboundEmail]:
    return list(
        db.session.scalars(
            select(OutboundEmail)
            .where(OutboundEmail.user_id == user.id, OutboundEmail.subject.contains(subject))
            .order_by(OutboundEmail.id)
        )
    )


def clean() -> None:
    assert not find_discrepancies()
    assert not rollups.audit_usage()


def test_hours_are_charged_credits_then_vouchers_then_cash(ctx, make_user):
    user = prepaid_user(make_user)
    start = datetime(2026, 11, 10, tzinfo=UTC)
    deploy(user, "vm-order", start)  # one core: 0.05 an hour
    credits.grant_credit(
        user=user, amount=Money(32, "USD"), reason="welcome", idempotency_key="grant-1"
    )
    [voucher] = vouchers.create_vouchers(value=Money(30, "USD"))
    vouchers.redeem(user, voucher.code)
    db.session.commit()
    top_up(user, 30, "cash-1")
    for h in range(1, 20):
        meter(user, start + h * HOUR)
    parts = [(c.credit_minor, c.voucher_minor, c.cash_minor) for c in charges(user)]
    assert parts[:6] == [(5, 0, 0)] * 6
    assert parts[6] == (2, 3, 0)  # the credits' last 2 cents, then the vouchers
    assert parts[7:12] == [(0, 5, 0)] * 5
    assert parts[12] == (0, 2, 3)  # the vouchers' last 2 cents, then cash
    assert parts[13:18] == [(0, 0, 5)] * 5
    assert parts[18:] == [(0, 0, 2)]  # 92 cents: the 19th hour takes what is left
    assert charging.shortfall(user, start + 19 * HOUR) == 3
    kinds = db.session.scalars(
        select(func.count()).where(LedgerTransaction.kind == "prepaid_charge")
    ).one()
    assert kinds == 6 + 2 + 5 + 2 + 6
    clean()


def test_an_hour_is_charged_once(ctx, make_user):
    """Metering an hour again, or replaying its charge, charges nothing more: the charge row
    is UNIQUE per user and hour, even while the hour still owes something."""
    user = prepaid_user(make_user)
    start = datetime(2026, 11, 10, tzinfo=UTC)
    deploy(user, "vm-once", start)
    top_up(user, 2, "cash-1")
    meter(user, start + HOUR)  # owes 5, has 2
    meter(user, start + HOUR)  # the same hour again: the mark is past it
    [first] = charges(user)
    assert (first.through, first.total_minor) == (start + HOUR, 2)
    top_up(user, 100, "cash-2")
    rollups_chunk = rollups.chunk_of(user.id)
    charging.charge_window(rollups_chunk, start, start + HOUR)  # a replay of the hour
    db.session.commit()
    assert [c.total_minor for c in charges(user)] == [2]
    meter(user, start + 2 * HOUR)  # the next hour takes what is still owed, then its own
    assert [c.total_minor for c in charges(user)] == [2, 8]
    clean()


def test_the_statement_is_paid_by_the_hourly_charges_to_the_cent(ctx, make_user, client, auth):
    """Sub-cent hours: 0.1 core (0.5 cent an hour), 1 GB of memory (1 cent) and 1 GB of
    disk (0.10 a month) over two days, charged hour by hour; the statement's lines round
    each deployment and resource once, and the charges add up to exactly that."""
    user = prepaid_user(make_user)
    start = datetime(2026, 11, 29, tzinfo=UTC)
    deploy(user, "vm-tenth", start, cpu_cores=Decimal("0.1"))
    deploy(user, "vm-mem", start, cpu_cores=0, memory_gb=1, storage_gb=1)
    credits.grant_credit(
        user=user, amount=Money(1000, "USD"), reason="welcome", idempotency_key="grant-1"
    )
    db.session.commit()
    for h in range(1, 49):
        meter(user, start + h * HOUR)
        if h == 1:
            assert charges(user)[0].total_minor == 2  # 0.5 -> 1, 1 -> 1, 0.0139 -> 0
    amounts = [c.total_minor for c in charges(user)]
    assert sum(amounts) == 24 + 48 + 1  # 48 x 0.5 = 24.00, 48 x 1, 2 days of 0.10/month
    assert set(amounts) <= {1, 2, 3}  # the carried half cents land every other hour
    clean()
    invoice, created = invoice_run.generate_for_user(user, *NOV)
    db.session.commit()
    assert created
    assert invoice.status == "paid"
    assert invoice.total_minor == invoice.amount_paid_minor == sum(amounts) == 73
    assert invoice.credits_minor == 0
    assert [(p.tender, p.amount_minor) for p in invoice.payments] == [("credit", 73)]
    assert invoice.snapshot["statement"] is True
    html = invoice_pdf.render_html(with_number(invoice))
    assert "<h1>Statement</h1>" in html and "nothing more is charged" in html
    assert all(c.invoice_id == invoice.id for c in charges(user))
    assert credits.available_credit(user).amount_minor == 1000 - 73  # no second charge
    assert not mails(user, "Payment failed")
    clean()
    email, invoice_id, number = user.email, invoice.id, invoice.number
    db.session.remove()  # (SQLite: the page's request writes)
    auth.login(email)
    page = client.get(f"/invoices/{invoice_id}").get_data(as_text=True)
    assert f"Statement {number}" in page
    assert "paid $0.73 of it hour by hour, so nothing more is charged" in page


def test_funds_run_out_removing_restored_at_once_then_removed(ctx, make_user, clock):
    user = prepaid_user(make_user)
    t0 = datetime(2026, 11, 10, tzinfo=UTC)
    clock.now = t0
    deploy(user, "vm-pp", t0)  # 0.05 an hour
    top_up(user, 50, "cash-1")  # ten hours

    def hour(h: int, runs: int = 1) -> None:
        clock.now = t0 + h * HOUR + timedelta(minutes=10)
        meter(user, t0 + h * HOUR)
        for _ in range(runs):
            stand(clock.now)

    for h in range(1, 10):
        hour(h)
        assert state("vm-pp") == "active", h
    hour(10, runs=2)  # the funds are spent: the next hour is not covered
    assert state("vm-pp") == "removing"
    removal_at = t0 + 10 * HOUR + timedelta(minutes=10) + timedelta(hours=24)
    [removing] = events("billing.deployment.removing")
    assert removing.payload == {
        "user_id": user.id,
        "external_id": "vm-pp",
        "state": "removing",
        "reason": "prepaid_funds",
        "effective_at": removal_at.isoformat(),
    }
    [notice] = mails(user, "or your deployments are removed")
    assert "$0.05" in notice.body_text and removal_at.strftime("%d %b %Y %H:%M") in notice.body_text
    assert "/wallet/" in notice.body_text
    s = status.standing(user, clock.now)
    assert (s.status, s.removal_at, s.amount_needed) == (
        "removing",
        removal_at,
        Money(5, "USD"),
    )
    clean()
    hour(11)
    hour(12)  # still nothing: 10 cents owed now
    assert state("vm-pp") == "removing"
    assert status.standing(user, clock.now).amount_needed == Money(15, "USD")

    clock.now = t0 + 12 * HOUR + timedelta(minutes=30)
    top_up(user, 100, "cash-2")  # restored right after the payment commits
    assert state("vm-pp") == "active"
    [restored] = events("billing.deployment.restored")
    assert restored.payload["effective_at"] == clock.now.isoformat()
    assert len(mails(user, "Your deployments run again")) == 1
    assert status.standing(user, clock.now).status != "removing"
    clean()

    for h in range(13, 30):
        hour(h)
        assert state("vm-pp") == "active", h
    assert sum(c.total_minor for c in charges(user)) == 145
    hour(30)  # 150 cents spent on 30 hours: out again, and no one tops up
    assert state("vm-pp") == "removing"
    second_removal_at = t0 + 30 * HOUR + timedelta(minutes=10) + timedelta(hours=24)
    assert len(events("billing.deployment.removing")) == 2
    for h in range(31, 54):
        hour(h)
        assert state("vm-pp") == "removing", h
    stand(second_removal_at - timedelta(seconds=1))
    assert state("vm-pp") == "removing"  # never before the removal time
    hour(54, runs=2)  # the run at the removal time
    assert state("vm-pp") == "removed"
    assert [e.payload["external_id"] for e in events("billing.deployment.removed")] == ["vm-pp"]
    assert len(mails(user, "Your deployments were removed")) == 1
    assert len(mails(user, "or your deployments are removed")) == 2
    assert len(events("billing.deployment.restored")) == 1
    outcomes = db.session.scalars(
        select(PrepaidRemoval.outcome)
        .where(PrepaidRemoval.user_id == user.id)
        .order_by(PrepaidRemoval.id)
    ).all()
    assert outcomes == ["restored", "removed"]
    clean()


def test_a_voucher_or_a_credit_restores_too(ctx, make_user, clock):
    user = prepaid_user(make_user)
    t0 = datetime(2026, 11, 10, tzinfo=UTC)
    deploy(user, "vm-v", t0)
    meter(user, t0 + HOUR)
    clock.now = t0 + HOUR + timedelta(minutes=10)
    stand(clock.now)
    assert state("vm-v") == "removing"
    [voucher] = vouchers.create_vouchers(value=Money(5, "USD"))
    vouchers.redeem(user, voucher.code)
    db.session.commit()
    assert state("vm-v") == "removing"  # 5 cents owed plus an hour: 10 needed
    credits.grant_credit(
        user=user, amount=Money(5, "USD"), reason="goodwill", idempotency_key="grant-1"
    )
    db.session.commit()
    assert state("vm-v") == "active"
    clean()


def test_paying_an_overdue_invoice_restores_at_once(app, overdue):  # noqa: F811
    """Postpaid: the dunning suspended the deployments; an offline payment of the invoice
    runs them again as it commits (restore_now), not at the next hourly run."""
    user, invoice = overdue
    dunning.run(invoice.due_at + timedelta(days=8))
    db.session.commit()
    assert state("vm-live") == "suspended"
    invoice_id = invoice.id
    db.session.remove()  # (SQLite: another session pays)
    pay_offline(app, invoice_id)
    assert state("vm-live") == "active"
    assert [e.payload["external_id"] for e in events("billing.deployment.resumed")] == ["vm-live"]
    clean()


def test_can_deploy_sees_the_funds_as_the_hourly_charges_do(ctx, make_user):
    """The one-day rule counts what the hourly charges could not take yet against the funds."""
    user = prepaid_user(make_user)
    now = datetime.now(UTC)
    hour = rollups.floor_hour(now)
    period_start = candeploy.billing_calendar.period_containing(now, 1)[0]
    deploy(user, "vm-now", max(period_start, hour - 2 * HOUR))
    meter(user, hour)  # no funds: owed, not charged
    owed = charging.shortfall(user, now)
    planned = candeploy.planned_deployment(
        kind="vm", sku=None, cpu_cores=1, memory_gb=0, storage_gb=0, now=now
    )
    top_up(user, 240, "cash-1")  # a day of two cores, but not what is owed besides
    decision = candeploy.can_deploy(user, planned, now)
    assert (decision.allowed, decision.reason) == (
        owed == 0,
        "funds_cover_a_day" if owed == 0 else "funds_short",
    )
    top_up(user, owed or 1, "cash-2")
    assert candeploy.can_deploy(user, planned, now).allowed
    clean()

"""Subscribing, upgrading (proration by hand, both directions of the money), downgrading and
cancelling at the period's end, undo, and the period invoice's fee and overage lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from portal.errors import Conflict, ValidationFailed
from portal.extensions import db
from portal.models import (
    Event,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    LedgerAccount,
    Subscription,
)
from portal.services.invoicing import run as invoice_run
from portal.services.payments import settlement
from portal.services.subscriptions import changes
from portal.services.wallet.reconcile import find_discrepancies

from .conftest import fund, run_deployment

NOV = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def invoices_of(user, kind=None):
    query = select(Invoice).where(Invoice.user_id == user.id).order_by(Invoice.id)
    if kind:
        query = query.where(Invoice.kind == str(kind))
    return list(db.session.scalars(query))


def lines_of(invoice):
    return [(l.kind, l.description, l.amount_minor) for l in invoice.lines]


def subscribe(user, plan, now):
    preview, sub = changes.change_plan(user, plan, now=now)
    db.session.commit()
    return preview, sub


def test_subscribing_mid_period_charges_the_rest_of_it(user):
    fund(user, "100.00")
    # Nov 11 00:00: 20 of November's 30 days left: 29.99 x 20/30 = 19.9933.. -> 19.99
    preview, sub = subscribe(user, "pro", at(2026, 11, 11))
    assert preview.kind is changes.Kind.SUBSCRIBE
    assert preview.due_now.amount_minor == 1999
    [invoice] = invoices_of(user, InvoiceKind.PLAN_CHANGE)
    assert lines_of(invoice) == [
        ("proration", "Remaining time on Professional plan · 2026-11-11 to 2026-11-30", 1999)
    ]
    assert invoice.status == "paid" and invoice.credits_minor == 1999
    assert sub.status == "active" and sub.plan_version.code == "pro"
    assert (sub.period_start, sub.period_end) == NOV
    assert not find_discrepancies()


def test_upgrade_on_day_10_of_a_30_day_period_by_hand(user):
    fund(user, "200.00")
    subscribe(user, "pro", NOV[0])
    before = db.session.scalar(
        select(LedgerAccount.balance_minor).where(
            LedgerAccount.user_id == user.id, LedgerAccount.kind == "credit"
        )
    )
    # day 10 done, 20 days left: the unused Pro time comes back, Enterprise is charged
    credit = round(2999 * 20 / 30)  # 1999.33 -> 1999
    charge = round(9999 * 20 / 30)  # 6666.00 -> 6666
    preview, sub = subscribe(user, "enterprise", at(2026, 11, 11))
    assert preview.kind is changes.Kind.UPGRADE
    assert (preview.credit.amount_minor, preview.charge.amount_minor) == (credit, charge)
    assert preview.due_now.amount_minor == charge - credit == 4667
    assert preview.renewal.amount_minor == 9999
    invoice = invoices_of(user, InvoiceKind.PLAN_CHANGE)[-1]
    assert lines_of(invoice) == [
        ("proration", "Unused time on Professional plan · 2026-11-11 to 2026-11-30", -1999),
        ("proration", "Remaining time on Enterprise plan · 2026-11-11 to 2026-11-30", 6666),
    ]
    assert invoice.subtotal_minor == invoice.total_minor + invoice.credits_minor == 4667
    after = db.session.scalar(
        select(LedgerAccount.balance_minor).where(
            LedgerAccount.user_id == user.id, LedgerAccount.kind == "credit"
        )
    )
    assert before - after == 4667  # what the user paid, and no more
    assert sub.plan_version.code == "enterprise" and sub.status == "active"
    event = db.session.scalars(
        select(Event).where(Event.name == "billing.subscription.changed").order_by(Event.id)
    ).all()[-1]
    assert (event.payload["plan"], event.payload["previous_plan"]) == ("enterprise", "pro")
    assert not find_discrepancies()


@pytest.mark.parametrize(
    "invoice_day, start, change_at, plans, expected",
    [
        # across a month end: [Jan 15, Feb 15) 2027 has 31 days; 14 left on Feb 1
        (15, at(2027, 1, 15), at(2027, 2, 1), ("pro", "enterprise"), (2999, 9999, 14, 31)),
        # a leap February: [Feb 1, Mar 1) 2028 has 29 days; 15 left on Feb 15
        (1, at(2028, 2, 1), at(2028, 2, 15), ("pro", "enterprise"), (2999, 9999, 15, 29)),
        # an annual plan: [2026-11-01, 2027-11-01) has 365 days; 184 left on May 1
        (
            1,
            at(2026, 11, 1),
            at(2027, 5, 1),
            ("pro-annual", "enterprise-annual"),
            (29999, 99999, 184, 365),
        ),
    ],
)
def test_upgrade_proration_across_periods(
    user, billing, invoice_day, start, change_at, plans, expected
):
    billing(billing_mode="hybrid", invoice_day=invoice_day)
    fund(user, "2000.00")
    subscribe(user, plans[0], start)
    old, new, left, total = expected
    credit = (2 * old * left + total) // (2 * total)  # half up, by hand
    charge = (2 * new * left + total) // (2 * total)
    preview, sub = subscribe(user, plans[1], change_at)
    assert preview.proration.seconds_left == left * 86400
    assert preview.proration.seconds_total == total * 86400
    assert (preview.credit.amount_minor, preview.charge.amount_minor) == (credit, charge)
    invoice = invoices_of(user, InvoiceKind.PLAN_CHANGE)[-1]
    assert invoice.subtotal_minor == charge - credit
    assert sub.plan_version.code == plans[1]
    assert not find_discrepancies()


def test_an_upgrade_nothing_pays_is_pending_until_paid_and_can_be_cancelled(user):
    fund(user, "29.99")
    subscribe(user, "pro", NOV[0])  # the credit pays the first period exactly
    preview, sub = subscribe(user, "enterprise", at(2026, 11, 16))
    invoice = invoices_of(user, InvoiceKind.PLAN_CHANGE)[-1]
    assert invoice.status == "open" and invoice.total_minor == preview.due_now.amount_minor
    sub = changes.get_subscription(user, at(2026, 11, 17))
    assert sub.plan_version.code == "pro"  # not yet
    assert changes.pending_change(sub).invoice_id == invoice.id
    with pytest.raises(Conflict):  # one change at a time
        changes.change_plan(user, "free", now=at(2026, 11, 17))
    db.session.rollback()
    changes.cancel_pending(user, now=at(2026, 11, 17))
    db.session.commit()
    assert db.session.get(Invoice, invoice.id).status == "void"
    assert changes.get_subscription(user, at(2026, 11, 18)).plan_version.code == "pro"
    assert not find_discrepancies()


def test_a_pending_upgrade_takes_effect_once_its_invoice_is_paid(user):
    fund(user, "29.99")
    subscribe(user, "pro", NOV[0])
    subscribe(user, "enterprise", at(2026, 11, 16))
    invoice = invoices_of(user, InvoiceKind.PLAN_CHANGE)[-1]
    fund(user, "100.00", key="more")
    settlement.settle_user(user)  # as the settlement job does when money arrives
    db.session.commit()
    assert db.session.get(Invoice, invoice.id).status == "paid"
    sub = changes.get_subscription(user)
    db.session.commit()
    assert sub.plan_version.code == "enterprise"
    assert not find_discrepancies()


def test_downgrade_and_cancel_take_effect_at_the_period_end_and_can_be_undone(user):
    fund(user, "500.00")
    subscribe(user, "enterprise", NOV[0])
    preview, sub = subscribe(user, "pro", at(2026, 11, 20))
    assert preview.kind is changes.Kind.DOWNGRADE and preview.effective_at == NOV[1]
    assert sub.plan_version.code == "enterprise" and sub.scheduled_version.code == "pro"
    changes.undo(user)
    db.session.commit()
    assert sub.scheduled_version_id is None
    subscribe(user, "pro", at(2026, 11, 21))  # again, and it holds this time

    invoice_run.generate_period(*NOV, now=at(2026, 12, 2))
    db.session.commit()
    [period] = invoices_of(user, InvoiceKind.USAGE)
    assert lines_of(period) == [("fee", "Professional plan · 2026-12-01 to 2026-12-31", 2999)]
    sub = changes.get_subscription(user)
    assert sub.plan_version.code == "pro" and sub.scheduled_version_id is None
    assert (sub.period_start, sub.period_end) == (NOV[1], at(2027, 1, 1))

    changes.cancel(user)
    db.session.commit()
    assert sub.cancel_at_period_end
    changes.undo(user)
    changes.cancel(user)
    db.session.commit()
    invoice_run.generate_period(NOV[1], at(2027, 1, 1), now=at(2027, 1, 2))
    db.session.commit()
    assert len(invoices_of(user, InvoiceKind.USAGE)) == 1  # no fee after a cancellation
    assert changes.get_subscription(user).status == "canceled"
    assert not find_discrepancies()


def test_a_downgrade_below_what_runs_is_refused_with_the_reason(user):
    fund(user, "500.00")
    subscribe(user, "enterprise", NOV[0])
    run_deployment(user, "big", NOV[0], cpu_cores=10, memory_gb=4, storage_gb=0)
    preview = changes.preview(user, "pro", now=at(2026, 11, 20))
    assert "CPU cores 10 running, the plan allows 8" in preview.refusal
    with pytest.raises(Conflict, match="stop or shrink deployments first"):
        changes.change_plan(user, "pro", now=at(2026, 11, 20))
    db.session.rollback()


def test_the_seed_pro_overage_example_on_the_period_invoice(user):
    fund(user, "100.00")
    subscribe(user, "pro", NOV[0])
    # 10 cores for one hour on Pro (8 included): 2 core-hours x $0.05 = $0.10
    start = at(2026, 11, 5, 10)
    run_deployment(user, "burst", start, start + timedelta(hours=1), cpu_cores=10, memory_gb=4)
    invoice_run.generate_period(*NOV, now=at(2026, 12, 2))
    db.session.commit()
    [period] = invoices_of(user, InvoiceKind.USAGE)
    assert lines_of(period) == [
        ("overage", "Overage · CPU above the plan's limit", 10),
        ("fee", "Professional plan · 2026-12-01 to 2026-12-31", 2999),
    ]
    assert period.subtotal_minor == 3009
    # running the period again changes nothing
    result = invoice_run.generate_period(*NOV, now=at(2026, 12, 3))
    db.session.commit()
    assert result.invoices == 0
    assert len(invoices_of(user, InvoiceKind.USAGE)) == 1
    assert changes.get_subscription(user).period_end == at(2027, 1, 1)
    assert not find_discrepancies()


def test_subscription_mode_bills_the_fee_and_no_usage(user, billing):
    billing(billing_mode="subscription")
    fund(user, "100.00")
    subscribe(user, "pro", NOV[0])
    run_deployment(user, "web", NOV[0], at(2026, 11, 20), cpu_cores=10, memory_gb=4)
    invoice_run.generate_period(*NOV, now=at(2026, 12, 2))
    db.session.commit()
    [period] = invoices_of(user, InvoiceKind.USAGE)
    assert [l.kind for l in period.lines] == ["fee"]


def test_a_subscriber_without_usage_gets_the_fee_invoice_and_free_gives_none(user, make_user):
    fund(user, "100.00")
    subscribe(user, "pro", NOV[0])
    free_user = db.session.get(type(user), make_user().id)
    _, free_sub = subscribe(free_user, "free", at(2026, 11, 3))
    assert free_sub.status == "active"
    assert invoices_of(free_user) == []
    invoice_run.generate_period(*NOV, now=at(2026, 12, 2))
    db.session.commit()
    [fee] = invoices_of(user, InvoiceKind.USAGE)
    assert fee.subtotal_minor == 2999
    assert invoices_of(free_user) == []
    assert changes.get_subscription(free_user).period_start == NOV[1]  # renewed all the same
    assert (
        db.session.scalar(
            select(func.count()).select_from(InvoiceLine).where(InvoiceLine.kind == "fee")
        )
        == 1
    )


def test_bad_choices_are_refused(user, billing):
    with pytest.raises(ValidationFailed) as exc:
        changes.preview(user, "platinum")
    assert exc.value.fields == {"plan_id": "is not a plan on offer"}
    fund(user, "500.00")
    subscribe(user, "pro", NOV[0])
    with pytest.raises(ValidationFailed, match="per year"):
        changes.preview(user, "enterprise-annual", now=at(2026, 11, 5))
    with pytest.raises(Conflict, match="on this plan already"):
        changes.change_plan(user, "pro", now=at(2026, 11, 5))
    db.session.rollback()
    billing(billing_mode="usage")
    with pytest.raises(Conflict, match="not offered"):
        changes.preview(user, "pro")


def test_one_subscription_row_per_user(user):
    fund(user, "100.00")
    subscribe(user, "pro", NOV[0])
    changes.cancel(user)
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(Subscription)) == 1


def test_a_change_unpaid_when_its_period_ends_is_dropped_and_its_invoice_voided(user):
    fund(user, "29.99")
    subscribe(user, "pro", NOV[0])
    subscribe(user, "enterprise", at(2026, 11, 16))  # nothing left to pay it with
    invoice = invoices_of(user, InvoiceKind.PLAN_CHANGE)[-1]
    assert invoice.status == "open"
    # still waiting inside the period; dropped once the period is over (the job looks)
    assert changes.refresh_pending(at(2026, 11, 30)) == 1
    db.session.commit()
    assert db.session.get(Invoice, invoice.id).status == "open"
    changes.refresh_pending(at(2026, 12, 1))
    db.session.commit()
    assert db.session.get(Invoice, invoice.id).status == "void"
    sub = changes.get_subscription(user)
    assert sub.plan_version.code == "pro" and changes.pending_change(sub) is None
    assert not find_discrepancies()

"""Admin › Overview, the admin landing page: each figure against sums worked out by hand
from the invoices, the ledger and the usage rollups, and each linking to its list."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, update

from portal.extensions import db
from portal.models import (
    Invoice,
    LedgerAccount,
    MeterMark,
    PaymentAttempt,
    PaymentMethod,
    UsageDaily,
    User,
)
from portal.money import Money
from portal.services.admin import overview
from portal.services.metering import deployments
from portal.services.standing import status
from tests.support.app import AuthActions
from tests.support.invoices import SEP, issue_invoices, pay_offline
from tests.support.usage import add_rollups

NOW = datetime(2026, 11, 15, tzinfo=UTC)
# One core for a whole day at $0.05 an hour: 86,400,000 milli-core-seconds, $1.20.
CORE_DAY = {"cpu_ms": 86_400_000, "cpu_cost": 86_400_000 * 50_000}
# 10 GB for a whole day at $0.10 a GB-month: 10/30 of $0.10 in November = $0.0333...
TEN_GB_DAY = {"storage_ms": 864_000_000, "storage_cost": 864_000_000 * 100_000}


def usage(deployment_id: int, user_id: int, day: date, **columns) -> UsageDaily:
    return UsageDaily(deployment_id=deployment_id, user_id=user_id, day=day, **columns)


@pytest.fixture
def books(app, make_user):
    """ann: September (overdue) and October invoices, 10.00 paid on October; bob: September
    (overdue), 6.00 paid; carol: a two-core deployment running now; an admin. November usage
    rolled up by hand, metered through Nov 6; three card payments."""
    ann, bob, carol = make_user("ann@example.com"), make_user("bob@example.com"), make_user()
    admin = make_user("boss@example.com", admin=True)
    ann_sep, ann_oct = issue_invoices(app, ann.id)
    [bob_sep] = issue_invoices(app, bob.id, periods=(SEP,), name="api")
    pay_offline(app, ann_oct, 1000)
    with app.app_context():
        db.session.execute(
            update(Invoice)
            .where(Invoice.id.in_([ann_sep, bob_sep]))
            .values(status="overdue", due_at=NOW - timedelta(days=30))
        )
        db.session.commit()
    pay_offline(app, bob_sep, 600)
    with app.app_context():
        deployments.create_deployment(
            external_id="big", user=db.session.get(User, carol.id), kind="vm", cpu_cores=2
        )
        add_rollups(
            [
                usage(9001, ann.id, date(2026, 11, 3), **CORE_DAY),
                usage(9001, ann.id, date(2026, 11, 4), **CORE_DAY),
                usage(9002, bob.id, date(2026, 11, 5), **TEN_GB_DAY),
                usage(9001, ann.id, date(2026, 10, 31), **CORE_DAY),  # last period
                usage(9001, ann.id, date(2026, 12, 1), **CORE_DAY),  # next period
            ]
        )
        db.session.execute(delete(MeterMark))
        db.session.add(MeterMark(chunk=0, metered_through=datetime(2026, 11, 6, tzinfo=UTC)))
        card = PaymentMethod(
            user_id=ann.id,
            gateway_id="pm_1",
            fingerprint="f",
            brand="visa",
            last4="4242",
            exp_month=1,
            exp_year=2030,
        )
        db.session.add(card)
        db.session.flush()
        for n, (status, minor, age) in enumerate(
            [("failed", 500, 2), ("failed", 700, 8), ("pending", 900, 1)], 1
        ):
            at = NOW - timedelta(days=age)
            db.session.add(
                PaymentAttempt(
                    user_id=ann.id,
                    payment_method_id=card.id,
                    purpose="topup",
                    number=n,
                    amount_minor=minor,
                    currency="USD",
                    idempotency_key=f"t{n}",
                    status=status,
                    created_at=at,
                    updated_at=at,
                )
            )
        db.session.commit()
        db.session.remove()
    return admin


def test_the_figures_match_sums_worked_out_by_hand(app, books):
    with app.app_context():
        o = overview.overview(NOW)
        db.session.remove()
    [usd] = o.figures
    # November so far: two core-days (2 x 1.20) and ten GB for a day (0.0333...) = 2.4333...
    assert usd.revenue_so_far == Money(243, "USD")
    # ... plus carol's two cores (0.10 an hour) from the metering mark (Nov 6) to Dec 1:
    # 25 days x 24 h x 0.10 = 60.00, so 62.4333... rounded once.
    assert usd.revenue_projected == Money(6243, "USD")
    # ann owes 36.00 + 37.20 - 10.00, bob 36.00 - 6.00.
    assert usd.receivables == Money(6320 + 3000, "USD")
    # Unpaid on the overdue invoices: ann's September 36.00, bob's 30.00.
    assert (usd.overdue, usd.overdue_count) == (Money(6600, "USD"), 2)
    # Failed in the last 7 days: the 5.00 from two days ago (not the 7.00 of eight days).
    assert (usd.failed_payments, usd.failed_payments_count) == (Money(500, "USD"), 1)
    assert o.standing == {
        "good": 2,
        "at_risk": 0,
        "overdue": 2,
        "suspended": 0,
        "removing": 0,
    }
    assert o.accounts == 4


def test_the_one_statement_reads_what_each_figure_s_own_query_reads(app, books):
    """The overview reads its figures but the revenue in one statement: the same as the
    receivables, overdue and failed-payment queries, ``plan_figures`` and
    ``count_by_standing`` each read on its own."""
    with app.app_context():
        o = overview.overview(NOW)
        receivables = {
            c: int(t)
            for c, t in db.session.execute(
                select(LedgerAccount.currency, func.sum(LedgerAccount.balance_minor))
                .where(LedgerAccount.kind == "receivable", LedgerAccount.user_id.is_not(None))
                .group_by(LedgerAccount.currency)
            )
        }
        overdue = {
            c: (int(t), n)
            for c, t, n in db.session.execute(
                select(
                    Invoice.currency,
                    func.sum(Invoice.total_minor - Invoice.amount_paid_minor),
                    func.count(),
                )
                .where(Invoice.status == "overdue")
                .group_by(Invoice.currency)
            )
        }
        since = NOW - timedelta(days=overview.FAILED_PAYMENTS_DAYS)
        failed = {
            c: (int(t), n)
            for c, t, n in db.session.execute(
                select(PaymentAttempt.currency, func.sum(PaymentAttempt.amount_minor), func.count())
                .where(PaymentAttempt.status == "failed", PaymentAttempt.updated_at >= since)
                .group_by(PaymentAttempt.currency)
            )
        }
        plans = overview.plan_figures()
        counts = status.count_by_standing(NOW)
        db.session.remove()
    assert {f.currency: f.receivables.amount_minor for f in o.figures} == receivables
    assert {f.currency: (f.overdue.amount_minor, f.overdue_count) for f in o.figures} == overdue
    assert {
        f.currency: (f.failed_payments.amount_minor, f.failed_payments_count) for f in o.figures
    } == failed
    assert (o.plans, o.mrr) == plans
    assert o.standing == counts and o.accounts == sum(counts.values()) == 4


def test_the_page_shows_the_figures_each_linking_to_its_list(app, books):
    client = app.test_client()
    AuthActions(client).login(books)
    page = client.get("/admin/").get_data(as_text=True)
    assert "$93.20" in page and "$66.00" in page and "2 invoices" in page
    for href in (
        "/admin/invoices?status=overdue",
        "/admin/users?standing=overdue",
        "/admin/users?standing=good",
        "/admin/users?sort=owed&amp;owes_more_than=0",
        "/admin/payments/failed",
        "/admin/reports?from=",
    ):
        assert f'href="{href}' in page, href
    failed = client.get("/admin/payments/failed")
    assert failed.status_code == 200


@pytest.mark.parametrize("path", ["/admin/", "/admin/payments/failed"])
def test_only_admins_see_the_overview(app, client, make_user, path):
    response = client.get(path)
    assert response.status_code == 302 and "/auth/login" in response.location
    AuthActions(client).login(make_user())
    assert client.get(path).status_code == 403

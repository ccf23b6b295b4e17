"""The Standing page: each deployment's state and countdown (from the dunning schedule and
steps, or a prepaid removal's event), refreshed by an htmx poll of its region; Pay to
restore through the waterfall, a saved card or the checkout page (the Stripe stand-in over
HTTP); and how long the funds last at the last week's rate."""

from __future__ import annotations

import html
import re
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import (
    Deployment,
    Event,
    Invoice,
    InvoicePayment,
    UsageDaily,
    User,
    utcnow,
)
from portal.money import Money
from portal.services import events
from portal.services.metering import deployments
from portal.services.standing import dunning, prepaid, resources
from portal.services.wallet import credits, ledger, settlement_requests
from portal.services.wallet.reconcile import find_discrepancies
from tests.blueprints.test_query_counts import counting
from tests.support.invoices import SEP, issue_invoices, pay_offline
from tests.support.payments import TEST_CARDS, saved_card, settlement_held, type_card
from tests.support.standing import overdue_invoice, running


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def flashes(page: str) -> list[str]:
    return re.findall(r'<p class="flash flash-\w+"[^>]*>([^<]*)</p>', page)


def form_fields(page: str) -> dict:
    form = re.search(r'<form[^>]*action="/standing/restore".*?</form>', page, re.S)
    assert form is not None, "no Pay to restore form"
    return dict(re.findall(r'name="(\w+)"[^>]*value="([^"]*)"', form.group(0)))


def state_of(app, user_id: int) -> str:
    with app.app_context():
        try:
            return db.session.scalar(
                select(Deployment.state).where(
                    Deployment.user_id == user_id, Deployment.name == "api"
                )
            )
        finally:
            db.session.remove()


def paid_total(app, user_id: int) -> int:
    with app.app_context():
        try:
            return db.session.scalar(
                select(func.coalesce(func.sum(InvoicePayment.amount_minor), 0))
                .join(Invoice, Invoice.id == InvoicePayment.invoice_id)
                .where(Invoice.user_id == user_id)
            )
        finally:
            db.session.remove()


def grant(app, user_id: int, minor: int) -> None:
    """Credit that waits: the settlement job that new money starts is held, so Pay to
    restore is what spends it."""
    with app.app_context(), settlement_held():
        try:
            credits.grant_credit(
                user=db.session.get_one(User, user_id),
                amount=Money(minor, "USD"),
                reason="goodwill",
                idempotency_key=f"grant-{user_id}-{minor}",
            )
            db.session.commit()
        finally:
            db.session.remove()


def restore(client, page: str, **overrides):
    fields = {**form_fields(page), **overrides}
    return client.submit("/standing/restore", fields)


# -- the page -----------------------------------------------------------------------------
def test_a_suspended_deployment_shows_its_countdown_and_what_paying_restores(
    pay_app, client, auth, make_user
):
    app = pay_app
    user = make_user(name="Sue Spended")
    invoice_id = overdue_invoice(app, user.id, days_past_due=10)
    assert state_of(app, user.id) == "suspended"
    with app.app_context():
        removal = db.session.get_one(Invoice, invoice_id).due_at + timedelta(days=90)
        db.session.remove()
    auth.login(user)
    page = text(client.get("/standing/"))
    assert "<h1>Standing</h1>" in page
    assert 'id="standing-status">Suspended<' in page
    today = utcnow()
    suspended_on = f"{today.day} {today:%b %Y}"
    removed_on = f"{removal.day} {removal:%b %Y}"
    assert (
        f"Suspended on {suspended_on}; removed on {removed_on} (in 3 months) unless paid." in page
    )
    assert 'id="restore-names">api<' in page
    assert 'id="restore-total">$37.20<' in page
    assert "Pay $37.20 to restore" in page
    # polled by htmx every minute; the poll answers the region alone
    assert 'hx-trigger="every 60s"' in page
    fragment = text(client.htmx_get("/standing/", target="standing-live"))
    assert fragment.lstrip().startswith('<div id="standing-live"')
    assert "<html" not in fragment and "Pay to restore" not in fragment
    assert "Suspended on" in fragment
    # linked from the Overview's standing block and the nav
    overview = text(client.get("/overview/"))
    assert 'href="/standing/" id="overview-standing-link"' in overview
    assert (
        '<a href="/standing/"\n' in overview or 'href="/standing/"' in overview.split("</nav>")[0]
    )


def test_before_the_grace_ends_it_says_when_it_will_be_suspended(app, client, auth, make_user):
    user = make_user()
    invoice_id = overdue_invoice(app, user.id, days_past_due=3)
    assert state_of(app, user.id) == "active"
    with app.app_context():
        due = db.session.get_one(Invoice, invoice_id).due_at
        db.session.remove()
    auth.login(user)
    page = text(client.get("/standing/"))
    suspend = due + timedelta(days=7)
    assert f"Will be suspended on {suspend.day} {suspend:%b %Y} (in 4 days)" in page
    assert 'id="standing-status">Past due<' in page
    assert 'id="restore-names"' not in page  # nothing to bring back yet
    # no card payments on this portal: the way to pay is said instead of a button
    assert 'id="restore-button"' not in page
    assert "Card payments are not set up here" in page


def test_a_prepaid_removal_counts_down_to_its_events_time(app, client, auth, make_user):
    user = make_user()
    now = utcnow()
    with app.app_context():
        ext = running(user.id)
        dep = db.session.scalar(select(Deployment).where(Deployment.external_id == ext))
        deployments.update_deployment(dep, state="removing")
        events.record(
            "billing.deployment.removing",
            f"prepaid:{ext}",
            {
                "user_id": user.id,
                "external_id": ext,
                "state": "removing",
                "reason": "funds",
                "effective_at": (now + timedelta(hours=17, minutes=5)).isoformat(),
            },
            user.id,
        )
        db.session.commit()
        db.session.remove()
    auth.login(user)
    page = text(client.get("/standing/"))
    assert "Removed in 17 hours" in page
    assert "your prepaid funds ran out." in page
    # a day at one core ($0.05 an hour) is $1.20; the funds are empty
    assert "Prepaid funds for a day at the current rate" in page
    assert 'id="restore-total">$1.20<' in page


def test_a_removal_without_its_event_is_a_day_after_it_started(app, make_user):
    user = make_user()
    with app.app_context():
        ext = running(user.id)
        dep = db.session.scalar(select(Deployment).where(Deployment.external_id == ext))
        deployments.update_deployment(dep, state="removing")
        db.session.flush()
        [item] = resources.resources(db.session.get_one(User, user.id), [], utcnow())
        assert item.cause == resources.PREPAID
        assert item.countdown == resources.Countdown(
            "removed", dep.updated_at + timedelta(hours=24)
        )
        db.session.rollback()
        db.session.remove()


def test_the_page_shows_only_the_users_own_deployments(app, client, auth, make_user):
    owner, other = make_user(), make_user()
    overdue_invoice(app, owner.id, days_past_due=10)
    auth.login(other)
    page = text(client.get("/standing/"))
    assert "api-live" not in page and "Pay to restore" not in page
    assert 'id="standing-status">Good standing<' in page


# -- the forecast -------------------------------------------------------------------------
def test_no_usage_says_so(app, client, auth, make_user):
    auth.login(make_user())
    page = text(client.get("/standing/"))
    assert '<p id="forecast-text">No usage in the last 7 days.</p>' in page
    assert "Credits, vouchers and prepaid balance: $0.00." in page


def test_the_runway_is_the_funds_over_last_weeks_hourly_cost_exactly(app, make_user):
    user = make_user()
    now = datetime(2026, 12, 6, 9, tzinfo=UTC)
    with app.app_context():
        u = db.session.get_one(User, user.id)
        u.created_at = datetime(2026, 1, 1, tzinfo=UTC)
        # $2.40 a day of cpu (two cores at $0.05) on each of the last 7 days, and a day of
        # storage in the window's first day; days outside the window do not count.
        for back in range(1, 9):
            db.session.add(
                UsageDaily(
                    deployment_id=1,
                    user_id=user.id,
                    day=date(2026, 12, 6) - timedelta(days=back),
                    cpu_ms=0,
                    cpu_cost=2 * 24 * 3600 * 1000 * 50_000 if back <= 7 else 10**15,
                    memory_ms=0,
                    memory_cost=0,
                    storage_ms=0,
                    storage_cost=0,
                    instance_s=0,
                    instance_cost=0,
                    ip_s=0,
                    ip_cost=0,
                )
            )
        db.session.flush()
        rate = resources.hourly_rates([(user.id, u.created_at)], now)[user.id]
        assert rate == Fraction(100_000)  # $0.10 an hour, exactly
        forecast = resources.Forecast(Money(2200, "USD"), rate, 168)
        assert (forecast.hours, forecast.days, forecast.daily) == (220, 9, Money(240, "USD"))
        # a week-old account is averaged over its own hours
        u.created_at = datetime(2026, 12, 2, 12, 30, tzinfo=UTC)
        half = resources.hourly_rates([(user.id, u.created_at)], now)[user.id]
        assert half == Fraction(7 * 2 * 24 * 3600 * 1000 * 50_000, 3_600_000 * 84)
        db.session.rollback()
        db.session.remove()


def test_the_page_and_overview_show_the_runway(app, client, auth, make_user):
    user = make_user()
    grant(app, user.id, 2200)
    with app.app_context():
        db.session.get_one(User, user.id).created_at = datetime(2026, 1, 1, tzinfo=UTC)
        today = utcnow().date()
        for back in range(1, 8):
            db.session.add(
                UsageDaily(
                    deployment_id=1,
                    user_id=user.id,
                    day=today - timedelta(days=back),
                    cpu_cost=2 * 24 * 3600 * 1000 * 50_000,
                )
            )
        db.session.commit()
        db.session.remove()
    auth.login(user)
    assert "Your balance lasts about <strong>9 days</strong>" in text(client.get("/standing/"))
    assert "Your balance lasts about 9 days at the current rate." in text(client.get("/overview/"))


# -- Pay to restore -----------------------------------------------------------------------
def test_pay_to_restore_from_the_balances(app, client, auth, make_user):
    user = make_user()
    overdue_invoice(app, user.id, days_past_due=10)
    grant(app, user.id, 5000)
    auth.login(user)
    page = text(client.get("/standing/"))
    assert "Your credits, vouchers and prepaid balance pay $37.20." in page
    answer = restore(client, page)
    assert answer.status_code == 303 and answer.headers["Location"] == "/standing/"
    after = text(client.get("/standing/"))
    assert "Paid $37.20. Running again: api." in flashes(after)
    assert state_of(app, user.id) == "active"
    assert "Pay to restore" not in after
    # sent twice (the same form): nothing more is paid
    again = restore(client, page)
    assert "Nothing is due and nothing waits to be restored." in flashes(
        text(client.get(again.headers["Location"]))
    )
    assert paid_total(app, user.id) == 3720
    with app.app_context():
        assert not find_discrepancies()
        db.session.remove()


def test_a_changed_amount_is_refused_unpaid(app, client, auth, make_user):
    user = make_user()
    overdue_invoice(app, user.id, days_past_due=10)
    grant(app, user.id, 5000)
    auth.login(user)
    page = text(client.get("/standing/"))
    answer = restore(client, page, expected_minor="100")
    shown = flashes(text(client.get(answer.headers["Location"])))
    assert any("changed to $37.20" in f and "nothing was paid" in f for f in shown)
    assert paid_total(app, user.id) == 0 and state_of(app, user.id) == "suspended"


def test_pay_to_restore_needs_the_csrf_token(app, client, auth, make_user):
    user = make_user()
    overdue_invoice(app, user.id, days_past_due=10)
    grant(app, user.id, 5000)
    auth.login(user)
    page = text(client.get("/standing/"))
    fields = form_fields(page)
    fields["csrf_token"] = "forged"
    assert client.post("/standing/restore", data=fields).status_code == 400
    assert state_of(app, user.id) == "suspended" and paid_total(app, user.id) == 0


@pytest.mark.parametrize("card,ok", [("ok", True), ("charge_declined", False)])
def test_pay_to_restore_with_a_saved_card(pay_app, client, auth, make_user, in_app, card, ok):
    user = make_user()
    overdue_invoice(pay_app, user.id, days_past_due=10)
    with settlement_held():  # saving a card would pay the invoice at once
        in_app(saved_card, user.id, TEST_CARDS[card])
    auth.login(user)
    page = text(client.get("/standing/"))
    assert re.search(r"Visa •••• \d{4} is charged \$37\.20\.", page)
    answer = restore(client, page)
    assert answer.status_code == 303
    shown = flashes(text(client.get(answer.headers["Location"])))
    if ok:
        assert shown == ["Paid $37.20. Running again: api."]
        assert state_of(pay_app, user.id) == "active"
    else:
        [message] = shown
        assert "was declined: declined by the bank. Nothing was restored" in message
        assert state_of(pay_app, user.id) == "suspended"
        assert paid_total(pay_app, user.id) == 0
    with pay_app.app_context():
        assert not find_discrepancies()
        db.session.remove()


def test_pay_to_restore_on_the_checkout_page(pay_app, client, auth, make_user):
    """No card and $10.00 of credit: the rest ($27.20) is paid on the checkout page."""
    user = make_user()
    overdue_invoice(pay_app, user.id, days_past_due=10)
    grant(pay_app, user.id, 1000)
    auth.login(user)
    page = text(client.get("/standing/"))
    assert "pay $10.00; you pay the rest ($27.20) by card on the card processor" in page
    answer = restore(client, page)
    assert answer.status_code == 303
    checkout_url = answer.headers["Location"]
    assert "/standing/" not in checkout_url  # off to the stand-in
    back = type_card(checkout_url, TEST_CARDS["ok"])
    assert back.status_code == 303
    success = back.headers["Location"]
    assert "/standing/restore/done?session_id=" in success
    done = client.get(success[success.index("/standing/") :])
    shown = flashes(text(client.get(done.headers["Location"])))
    assert shown == ["Thank you: your card paid $27.20. Running again: api."]
    assert state_of(pay_app, user.id) == "active"
    assert paid_total(pay_app, user.id) == 3720
    with pay_app.app_context():
        assert not find_discrepancies()
        db.session.remove()


# -- the admin list -------------------------------------------------------------------------
def used_last_week(app, user_id: int, cents_a_day: int) -> None:
    """Metered usage of ``cents_a_day`` on each of the last 7 days, for an account made
    long ago."""
    with app.app_context():
        db.session.get_one(User, user_id).created_at = datetime(2026, 1, 1, tzinfo=UTC)
        today = utcnow().date()
        for back in range(1, 8):
            db.session.add(
                UsageDaily(
                    deployment_id=user_id,
                    user_id=user_id,
                    day=today - timedelta(days=back),
                    cpu_cost=cents_a_day * 10_000 * 3_600_000,
                )
            )
        db.session.commit()
        db.session.remove()


def test_admin_users_shows_the_runway_and_at_risk_by_it(app, client, auth, make_user):
    lasting = make_user(email="lasting@example.com")
    short = make_user(email="short@example.com")
    idle = make_user(email="idle@example.com")
    for user, credit in ((lasting, 2200), (short, 200), (idle, 500)):
        grant(app, user.id, credit)
    used_last_week(app, lasting.id, 240)
    used_last_week(app, short.id, 240)
    auth.login(make_user(admin=True))
    page = text(client.get("/admin/users?sort=email"))

    def cell(user) -> str:
        row = page[page.index(f'id="user-{user.id}"') :]
        return row[: row.index("</tr>")]

    assert ">good</span> <span" in cell(lasting) and "9 d left" in cell(lasting)
    assert ">at risk</span> <span" in cell(short) and "20 h left" in cell(short)
    assert "left" not in cell(idle)
    detail = text(client.get(f"/admin/users/{short.id}"))
    assert (
        "The balances ($2.00) last about 20 hours at the last 7 days' rate ($2.40 a day)." in detail
    )


@pytest.mark.parametrize("card", ["ok", "three_d_secure"])
def test_a_prepaid_shortfall_is_topped_up_from_the_saved_card(
    pay_app, client, auth, make_user, in_app, card
):
    """A prepaid account's funds ran out and the hourly job put its deployment up for
    removal: Pay to restore tops up a day at what it costs running ($1.20) from the saved
    card, and the deployment runs again (``billing.deployment.restored``)."""
    user = make_user()
    with settlement_held():
        in_app(saved_card, user.id, TEST_CARDS[card])

    def removing():
        db.session.get_one(User, user.id).billing_mode = "prepaid"
        ext = running(user.id)
        db.session.commit()
        prepaid.run()
        return ext

    ext = in_app(removing)
    assert state_of(pay_app, user.id) == "removing"
    auth.login(user)
    page = text(client.get("/standing/"))
    assert 'id="restore-total">$1.20<' in page
    assert re.search(r"Visa •••• \d{4} is charged \$1\.20\.", page)
    answer = restore(client, page)
    if card == "ok":
        shown = flashes(text(client.get(answer.headers["Location"])))
        assert shown == ["Paid $1.20. Running again: api."]
    else:  # the bank's page, then back to the Standing page
        assert "/sandbox/authenticate/" in answer.headers["Location"]
        assert state_of(pay_app, user.id) == "removing"
        back = requests.post(
            answer.headers["Location"], data={"result": "complete"}, allow_redirects=False
        )
        assert urlsplit(back.headers["Location"]).path == "/standing/restore/confirmed"
        parts = urlsplit(back.headers["Location"])
        returned = client.get(f"{parts.path}?{parts.query}")
        shown = flashes(text(client.get(returned.headers["Location"])))
        assert shown[0].startswith("Thank you: the card payment went through.")
    assert state_of(pay_app, user.id) == "active"
    with pay_app.app_context():
        restored = db.session.scalars(
            select(Event).where(
                Event.name == "billing.deployment.restored", Event.user_id == user.id
            )
        ).all()
        assert [e.payload["external_id"] for e in restored] == [ext]
        db.session.remove()
    with pay_app.app_context():
        balances = ledger.balances(db.session.get_one(User, user.id))
        assert balances.cash == Money(120, "USD")
        assert not find_discrepancies()
        db.session.remove()


def test_the_page_makes_as_many_statements_with_more_to_show(app, client, auth, make_user):
    user = make_user()
    overdue_invoice(app, user.id, days_past_due=10)

    def prepaid_removal(name: str) -> None:
        ext = running(user.id, name=name)
        dep = db.session.scalar(select(Deployment).where(Deployment.external_id == ext))
        deployments.update_deployment(dep, state="removing")

    with app.app_context():
        prepaid_removal("prepaid")
        db.session.commit()
        db.session.remove()
    auth.login(user)

    def statements() -> int:
        client.get("/standing/")
        with app.app_context(), counting() as sent:
            assert client.get("/standing/").status_code == 200
        return len(sent)

    few = statements()
    [sep] = issue_invoices(app, user.id, periods=(SEP,), name="older")
    with app.app_context():
        for i in range(6):
            running(user.id, name=f"worker{i}")
        db.session.get_one(Invoice, sep).due_at = utcnow() - timedelta(days=20)
        db.session.commit()
        dunning.run()
        for i in range(3):
            prepaid_removal(f"prepaid{i}")
        db.session.commit()
        db.session.remove()
    page = text(client.get("/standing/"))
    assert page.count("Suspended on") == 7 and page.count("Removed in") == 4
    assert statements() == few


def test_paid_by_other_means_restores_as_the_payment_lands(app, client, auth, make_user):
    """A payment asks for the restore job as it commits: the deployment runs at once and
    the page has nothing left to offer."""
    user = make_user()
    invoice_id = overdue_invoice(app, user.id, days_past_due=10)
    pay_offline(app, invoice_id)
    assert state_of(app, user.id) == "active"
    auth.login(user)
    page = text(client.get("/standing/"))
    assert 'id="restore-button"' not in page


def test_paid_by_other_means_it_restores_at_once(app, client, auth, make_user, monkeypatch):
    """The invoice was paid by bank transfer and the restore job has not run yet (a busy
    worker): the page offers Restore now, which pays nothing and brings the deployment
    back."""
    monkeypatch.setattr(settlement_requests, "request_restore", lambda user_id: None)
    user = make_user()
    invoice_id = overdue_invoice(app, user.id, days_past_due=10)
    pay_offline(app, invoice_id)
    auth.login(user)
    page = text(client.get("/standing/"))
    assert 'id="restore-names">api<' in page and 'id="restore-total">$0.00<' in page
    assert 'id="restore-button">Restore now<' in page
    answer = restore(client, page)
    assert flashes(text(client.get(answer.headers["Location"]))) == ["Running again: api."]
    assert state_of(app, user.id) == "active" and paid_total(app, user.id) == 3720


def test_a_shortfall_under_the_smallest_top_up_says_so(pay_app, client, auth, make_user, in_app):
    """A quarter core ($0.30 a day) put up for removal: the checkout page takes the
    smallest top-up ($1.00), and the page shows the difference before paying."""
    user = make_user()

    def removing():
        dep, _ = deployments.create_deployment(
            external_id=f"tiny-{user.id}",
            user=db.session.get_one(User, user.id),
            kind="vm",
            name="tiny",
            cpu_cores="0.25",
            memory_gb=0,
            storage_gb=0,
            started_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        deployments.update_deployment(dep, state="removing")

    in_app(removing)
    auth.login(user)
    page = text(client.get("/standing/"))
    assert 'Prepaid funds for a day at the current rate</th><td class="num">$0.30<' in page
    assert "To reach the smallest top-up (stays in your prepaid balance)" in page
    assert 'id="restore-total">$1.00<' in page
    assert "You pay $1.00 by card on the card processor's secure page." in page

"""The Overview page, where users land after logging in: the amount due now with a Pay
button per unpaid invoice, the next invoice's date and projected amount, the balances, the
account's standing, what needs action (3-D Secure, a past-due invoice, a card that expires)
and recent activity."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from portal.extensions import db
from portal.models import Invoice, PaymentAttempt, PaymentMethod, User
from portal.models.types import utcnow
from portal.services import calendar
from portal.services.metering import deployments, projection
from tests.support.invoices import OCT, SEP, issue_invoices


def text(response) -> str:
    return response.get_data(as_text=True)


def section(page: str, section_id: str) -> str:
    start = page.index(f'id="{section_id}"')
    return page[start : page.index("</section>", start)]


@pytest.fixture
def owing(app, make_user):
    """Two unpaid invoices (September past due), a card that expires this month whose
    charge for October waits for 3-D Secure, and a deployment running now."""
    user = make_user(name="Olive Owing")
    sep, oct_ = issue_invoices(app, user.id, periods=(SEP, OCT))
    now = utcnow()
    with app.app_context():
        db.session.get(Invoice, sep).status = "overdue"
        card = PaymentMethod(
            user_id=user.id,
            gateway_id=f"pm_test_{user.id}",
            fingerprint="fp",
            brand="visa",
            last4="4242",
            exp_month=now.month,
            exp_year=now.year,
            is_default=True,
        )
        db.session.add(card)
        db.session.flush()
        db.session.add(
            PaymentAttempt(
                user_id=user.id,
                invoice_id=oct_,
                payment_method_id=card.id,
                purpose="invoice",
                number=1,
                amount_minor=3720,
                currency="USD",
                idempotency_key=f"inv:{oct_}:att:1",
                status="requires_action",
            )
        )
        deployments.create_deployment(
            external_id="vm-now",
            user=db.session.get(User, user.id),
            kind="vm",
            name="now",
            cpu_cores=2,
            memory_gb=0,
            storage_gb=0,
            started_at=now - timedelta(hours=1),
        )
        db.session.commit()
        user.numbers = {
            "sep": db.session.get(Invoice, sep).number,
            "oct": db.session.get(Invoice, oct_).number,
        }
        user.invoices = {"sep": sep, "oct": oct_}
        user.card = card.id
        db.session.remove()
    return user


def test_login_lands_on_the_overview(app, client, auth, make_user):
    response = auth.login(make_user())
    assert response.status_code == 303 and response.headers["Location"] == "/overview/"
    assert client.get("/").headers["Location"] == "/overview/"
    page = text(client.get("/overview/"))
    assert re.search(r'<a href="/overview/"\s+aria-current="page">Overview</a>', page)


def test_a_new_account_has_nothing_due_and_good_standing(app, client, auth, make_user):
    auth.login(make_user())
    page = text(client.get("/overview/"))
    assert '<p class="amount" id="overview-due-amount">$0.00</p>' in page
    assert "Nothing is due." in page
    assert 'id="overview-standing-text">Good standing<' in page
    assert "Nothing needs you now." in page and "overview-actions" not in page
    assert "No money has moved yet." in page and "No invoices yet." in page
    start, end = calendar.period_containing(utcnow(), 1)
    assert f'id="overview-next-date">{end.date().isoformat()}<' in page
    assert '<p class="amount" id="overview-next-amount">$0.00</p>' in page


def test_what_is_due_what_needs_action_and_what_comes_next(app, client, auth, owing):
    auth.login(owing)
    response = client.get("/overview/")
    assert response.status_code == 200
    page = text(response)

    due = section(page, "overview-due")
    assert '<p class="amount" id="overview-due-amount">$73.20</p>' in due
    pay_buttons = re.findall(r'action="/invoices/(\d+)/pay".*?>Pay ([^<]+)</button>', due, re.S)
    assert pay_buttons == [
        (str(owing.invoices["sep"]), "$36.00"),
        (str(owing.invoices["oct"]), "$37.20"),
    ]
    assert 'name="csrf_token"' in due
    assert ">Past due<" in due and ">Open<" in due

    assert 'id="overview-standing-text">Past due<' in page

    actions = section(page, "overview-actions")
    assert (
        f"Your bank asks you to confirm the payment of $37.20 for invoice {owing.numbers['oct']}."
        in actions
    )
    assert f'href="/invoices/{owing.invoices["oct"]}">Complete payment</a>' in actions
    assert f"Invoice {owing.numbers['sep']} is past due since" in actions
    now = utcnow()
    assert f"Visa •••• 4242 expires at the end of {now.month:02d}/{now.year}" in actions

    with app.app_context():
        expected = projection.by_user([(owing.id, "USD")], now)[owing.id].projected
        db.session.remove()
    assert expected.amount_minor > 0  # two cores running until the period ends
    assert f'<p class="amount" id="overview-next-amount">{expected.format()}</p>' in page

    assert 'id="overview-cash"' in page and 'id="overview-credit"' in page
    recent = page[page.index('id="recent-invoices-heading"') :]
    assert owing.numbers["sep"] in recent and owing.numbers["oct"] in recent


def test_pay_from_the_overview_goes_through_pay_now(app, client, auth, owing):
    auth.login(owing)
    client.get("/overview/")
    response = client.submit(f"/invoices/{owing.invoices['sep']}/pay")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/invoices/{owing.invoices['sep']}"


def test_an_expired_card_is_named(app, client, auth, make_user):
    user = make_user()
    now = utcnow()
    with app.app_context():
        db.session.add(
            PaymentMethod(
                user_id=user.id,
                gateway_id="pm_old",
                fingerprint="fp",
                brand="visa",
                last4="0341",
                exp_month=12,
                exp_year=now.year - 1,
                is_default=True,
            )
        )
        db.session.commit()
        db.session.remove()
    auth.login(user)
    actions = section(text(client.get("/overview/")), "overview-actions")
    assert f"Visa •••• 0341 expired at the end of 12/{now.year - 1}: add a new card." in actions

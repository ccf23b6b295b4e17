"""Paying an invoice nothing covers on the card processor's checkout page (the stand-in over
HTTP): the button, the hosted page, the card kept or not, and the payment booked once
whether the customer's return or the signed webhook arrives first."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import CheckoutSession, Invoice, LedgerTransaction, OutboundEmail, User
from portal.services.payments import cards
from tests.support.payments import TEST_CARDS, issued_invoice, type_card

WEBHOOK = "/api/plugins/billing/webhook"


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def flashes(page: str) -> list[str]:
    return re.findall(r'<p class="flash flash-\w+"[^>]*>([^<]*)</p>', page)


def payment_rows(page: str) -> list[tuple[str, str]]:
    return re.findall(
        r'<tr id="payment-\d+"><td>[^<]*</td><td>([^<]*)</td><td>[^<]*</td>'
        r'<td class="num">([^<]+)</td></tr>',
        page,
    )


def local(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def checkout_nonce(page: str) -> str:
    form = re.search(r'<form[^>]*id="pay-by-card".*?</form>', page, re.S)
    assert form is not None, "no Pay by card form"
    return re.search(r'name="nonce"[^>]*value="([^"]+)"', form.group(0)).group(1)


def wait_for_completed(receiver, session_id: str) -> tuple[dict, bytes]:
    return receiver.wait_for("checkout.session.completed", session_id)


def booked(pay_app, user_id: int) -> dict:
    with pay_app.app_context():
        try:
            user = db.session.get_one(User, user_id)
            return {
                "bookings": db.session.scalar(
                    select(func.count())
                    .select_from(LedgerTransaction)
                    .where(LedgerTransaction.idempotency_key.like("checkout:%"))
                    .where(LedgerTransaction.user_id == user_id)
                ),
                "cards": [c.label for c in cards.list_cards(user)],
                "receipts": list(
                    db.session.scalars(
                        select(OutboundEmail.subject).where(
                            OutboundEmail.user_id == user_id,
                            OutboundEmail.subject.like("Receipt:%"),
                        )
                    )
                ),
                "sessions": [
                    (s.purpose, s.status)
                    for s in db.session.scalars(
                        select(CheckoutSession).where(CheckoutSession.user_id == user_id)
                    )
                ],
            }
        finally:
            db.session.remove()


@pytest.mark.parametrize("first", ["return page", "webhook"])
def test_an_invoice_nothing_covers_is_paid_by_card_once_whichever_comes_first(
    pay_app, client, auth, make_user, in_app, receiver, first
):
    user = make_user()
    invoice = in_app(issued_invoice, user.id)
    auth.login(user)
    page = text(client.get(f"/invoices/{invoice}"))
    assert "Not covered" in page
    assert "Pay $5.00 by card" in page

    answer = client.submit(
        f"/invoices/{invoice}/pay-by-card", {"nonce": checkout_nonce(page), "save_card": "y"}
    )
    assert answer.status_code == 303
    hosted = answer.headers["Location"]
    assert "/checkout/cs_" in hosted
    back = type_card(hosted, TEST_CARDS["ok"])
    assert back.status_code == 303
    back_url = local(back.headers["Location"])
    assert urlsplit(back_url).path == f"/invoices/{invoice}/card-paid"
    session_id = parse_qs(urlsplit(back_url).query)["session_id"][0]
    headers, body = wait_for_completed(receiver, session_id)

    def webhook():
        answer = client.post(
            WEBHOOK,
            data=body,
            content_type="application/json",
            headers={"Stripe-Signature": headers["Stripe-Signature"]},
        )
        assert answer.status_code == 200

    def return_page():
        assert client.get(back_url).status_code == 303

    steps = [webhook, return_page] if first == "webhook" else [return_page, webhook]
    for step in steps + steps[::-1]:
        step()
        state = booked(pay_app, user.id)
        assert state["bookings"] == 1
        assert state["cards"] == ["Visa •••• 4242"]
        assert state["receipts"] == [f"Receipt: $5.00 paid for {invoice_number(pay_app, invoice)}"]
    assert state["sessions"] == [("invoice", "complete")]

    page = text(client.get(f"/invoices/{invoice}"))
    assert payment_rows(page) == [("Card", "$5.00")]
    assert "Pay $5.00 by card" not in page and 'id="pay-by-card"' not in page
    if first == "return page":
        assert flashes(page)[0].startswith("Thank you: Visa •••• 4242 paid $5.00 of INV-")


def invoice_number(pay_app, invoice_id: int) -> str:
    with pay_app.app_context():
        try:
            return db.session.get_one(Invoice, invoice_id).number
        finally:
            db.session.remove()


def test_without_save_the_card_is_not_kept(pay_app, client, auth, make_user, in_app):
    user = make_user()
    invoice = in_app(issued_invoice, user.id)
    auth.login(user)
    page = text(client.get(f"/invoices/{invoice}"))
    answer = client.submit(f"/invoices/{invoice}/pay-by-card", {"nonce": checkout_nonce(page)})
    back = type_card(answer.headers["Location"], TEST_CARDS["three_d_secure"])
    assert client.get(local(back.headers["Location"])).status_code == 303
    state = booked(pay_app, user.id)
    assert state["bookings"] == 1 and state["cards"] == []
    page = text(client.get(f"/invoices/{invoice}"))
    assert payment_rows(page) == [("Card", "$5.00")]


def test_a_declined_card_on_the_page_books_nothing(pay_app, client, auth, make_user, in_app):
    user = make_user()
    invoice = in_app(issued_invoice, user.id)
    auth.login(user)
    page = text(client.get(f"/invoices/{invoice}"))
    answer = client.submit(f"/invoices/{invoice}/pay-by-card", {"nonce": checkout_nonce(page)})
    refused = type_card(answer.headers["Location"], TEST_CARDS["charge_declined"])
    assert refused.status_code != 303 or "/card-paid" not in refused.headers.get("Location", "")
    assert booked(pay_app, user.id)["bookings"] == 0
    assert "Pay $5.00 by card" in text(client.get(f"/invoices/{invoice}"))


def test_another_users_invoice_cannot_be_paid_by_card(pay_app, client, auth, make_user, in_app):
    user, other = make_user(), make_user()
    theirs = in_app(issued_invoice, other.id)
    mine = in_app(issued_invoice, user.id)
    auth.login(user)
    page = text(client.get(f"/invoices/{mine}"))
    answer = client.submit(f"/invoices/{theirs}/pay-by-card", {"nonce": checkout_nonce(page)})
    assert answer.status_code == 404
    assert client.get(f"/invoices/{theirs}/card-paid?session_id=cs_test_x").status_code == 404
    assert booked(pay_app, other.id)["sessions"] == []

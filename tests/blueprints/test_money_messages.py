"""Messages that say what happened to the money (the stand-in over HTTP): what a card will
pay before it is saved and what it paid after, which invoices a voucher or a top-up paid,
each card attempt on the invoice with its outcome and the bank's reason, and Pay now's
failure naming the card and the reason."""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

from portal.extensions import db
from portal.models import Invoice
from portal.money import Money
from portal.services.payments import outcomes
from portal.services.wallet import vouchers
from tests.support.payments import TEST_CARDS, issued_invoice, saved_card, type_card

DECLINED = TEST_CARDS["charge_declined"]  # saved, then every charge declined


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def flashes(page: str) -> list[str]:
    return re.findall(r'<p class="flash flash-\w+"[^>]*>([^<]*)</p>', page)


def number_of(invoice_id: int) -> str:
    return db.session.get_one(Invoice, invoice_id).number


def test_a_new_card_says_what_it_will_pay_and_then_what_it_paid(
    pay_app, client, auth, make_user, in_app
):
    user = make_user()
    invoice = in_app(issued_invoice, user.id)
    number = in_app(number_of, invoice)
    auth.login(user)
    page = text(client.get("/payment-methods/"))
    assert "Saving this card pays $5.00 of 1 open invoice." in page

    hosted = client.submit("/payment-methods/add").headers["Location"]
    back = type_card(hosted, TEST_CARDS["ok"]).headers["Location"]
    assert client.get(urlsplit(back).path + "?" + urlsplit(back).query).status_code == 303
    page = text(client.get("/payment-methods/"))
    assert flashes(page) == [f"Visa •••• 4242 is saved. It paid {number} in full ($5.00)."]
    assert "Saving this card pays" not in page


def test_a_voucher_says_which_invoices_it_paid(pay_app, client, auth, make_user, in_app):
    user = make_user()
    invoice = in_app(issued_invoice, user.id, 300)  # $15.00

    def voucher() -> str:
        (made,) = vouchers.create_vouchers(value=Money(2000, "USD"))
        return made.display_code

    code = in_app(voucher)
    number = in_app(number_of, invoice)
    auth.login(user)
    answer = client.submit("/wallet/vouchers", {"code": code})
    assert answer.status_code == 303
    page = text(client.get("/wallet/"))
    assert flashes(page) == [
        f"$20.00 added to your voucher balance. It paid {number} in full ($15.00)."
    ]


def test_each_card_attempt_is_listed_with_the_banks_reason(
    pay_app, client, auth, make_user, in_app
):
    user = make_user()
    in_app(saved_card, user.id, DECLINED)
    invoice = in_app(issued_invoice, user.id)
    auth.login(user)
    client.submit(f"/invoices/{invoice}/pay")
    page = text(client.get(f"/invoices/{invoice}"))
    assert flashes(page) == [
        "Visa •••• 0341 was declined: declined by the bank. Pay by card on the secure page "
        "with another card, add money to your balance or redeem a voucher."
    ]
    attempts = re.search(r'<ul class="attempts" id="card-attempts">(.*?)</ul>', page, re.S)
    assert attempts is not None
    assert "$5.00: Visa •••• 0341 declined: declined by the bank" in attempts.group(1)
    # The invoice can still be paid with another card on the checkout page.
    assert "Pay $5.00 with another card" in page


def test_a_top_up_says_which_invoices_it_paid(pay_app, client, auth, make_user, in_app):
    user = make_user()
    card = in_app(saved_card, user.id)
    auth.login(user)

    invoice = in_app(issued_invoice, user.id)
    number = in_app(number_of, invoice)
    page = text(client.get("/wallet/"))
    nonce = re.search(r'<input[^>]*name="nonce"[^>]*value="([^"]+)"', page).group(1)
    answer = client.submit(
        "/wallet/top-up", {"amount": "25.00", "method": f"card:{card}", "nonce": nonce}
    )
    assert answer.status_code == 303
    page = text(client.get("/wallet/"))
    assert flashes(page) == [
        f"$25.00 added to your prepaid balance. It paid {number} in full ($5.00)."
    ]


def test_decline_codes_read_as_people_say_them():
    assert outcomes.decline_reason("insufficient_funds") == "insufficient funds"
    assert outcomes.decline_reason("expired_card") == "the card has expired"
    assert outcomes.decline_reason("weird_code") == "weird code"
    assert outcomes.decline_reason(None, "Your card was declined.") == "Your card was declined"

"""The payment pages through the test client, against the Stripe stand-in: Payment methods
(list, default, remove, the last-card rule, adding a card on the stand-in's page), the
Wallet's top-up (checkout page, saved card, declines, a double submit), an invoice's preview,
Pay now and its tender breakdown, and the CSP that lets forms lead to the card pages."""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import LedgerTransaction, PaymentAttempt, User
from portal.services.payments import cards
from tests.support.payments import (
    TEST_CARDS,
    issued_invoice,
    running_deployment,
    saved_card,
    topped_up,
    type_card,
)


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def flashes(page: str) -> list[str]:
    return re.findall(r'<p class="flash flash-\w+"[^>]*>([^<]*)</p>', page)


def cash_shown(page: str) -> str:
    return re.search(
        r'id="balance-cash"><h2>Prepaid balance</h2><p class="amount">([^<]+)<', page
    ).group(1)


def local(url: str) -> str:
    """A portal URL the test client can open (path and query)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def card_rows(page: str) -> list[tuple[str, bool]]:
    """(label, is default) of each card on the Payment methods page, top to bottom."""
    return [
        (label, bool(default))
        for label, default in re.findall(
            r'<tr id="card-\d+">\s*<td>([^<]+)</td>\s*<td>[^<]*</td>\s*<td>(<span[^>]*>default'
            r"</span>)?</td>",
            page,
        )
    ]


# -- Payment methods ---------------------------------------------------------------------
def test_the_page_lists_cards_and_its_buttons_work(pay_app, client, auth, make_user, in_app):
    user = make_user()
    first = in_app(saved_card, user.id)
    second = in_app(saved_card, user.id, TEST_CARDS["three_d_secure"])
    auth.login(user)

    page = text(client.get("/payment-methods/"))
    assert card_rows(page) == [("Visa •••• 4242", True), ("Visa •••• 3184", False)]
    assert "12/2034" in page
    assert f'action="/payment-methods/{second}/default"' in page
    assert f'action="/payment-methods/{first}/default"' not in page  # already the default

    answer = client.submit(f"/payment-methods/{second}/default")
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/payment-methods/")
    page = text(client.get("/payment-methods/"))
    assert flashes(page) == ["Visa •••• 3184 is your default card."]
    assert card_rows(page) == [("Visa •••• 3184", True), ("Visa •••• 4242", False)]

    answer = client.submit(f"/payment-methods/{second}/delete")
    assert answer.status_code == 303
    page = text(client.get("/payment-methods/"))
    assert flashes(page) == ["Visa •••• 3184 was removed."]
    assert card_rows(page) == [("Visa •••• 4242", True)]  # the other card is the default now


def test_another_users_card_is_not_found(pay_app, client, auth, make_user, in_app):
    user, other = make_user(), make_user()
    in_app(saved_card, user.id)
    theirs = in_app(saved_card, other.id)
    auth.login(user)
    assert client.submit(f"/payment-methods/{theirs}/default").status_code == 404
    assert client.submit(f"/payment-methods/{theirs}/delete").status_code == 404
    with pay_app.app_context():
        [card] = cards.list_cards(db.session.get(User, other.id))
        assert card.id == theirs and card.is_default
        db.session.remove()


def test_the_last_card_with_a_running_deployment_stays_with_the_rule_shown(
    pay_app, client, auth, make_user, in_app
):
    user = make_user()
    only = in_app(saved_card, user.id)
    in_app(running_deployment, user.id)
    auth.login(user)

    answer = client.submit(f"/payment-methods/{only}/delete")
    assert answer.status_code == 409
    page = text(answer)
    [message] = flashes(page)
    assert message.startswith("This is your last card and you have active deployments")
    assert cards.LAST_CARD_RULE in message
    assert card_rows(page) == [("Visa •••• 4242", True)]
    assert card_rows(text(client.get("/payment-methods/"))) == [("Visa •••• 4242", True)]


def test_a_card_is_added_on_the_stand_ins_page(pay_app, client, auth, make_user, standin):
    user = make_user()
    auth.login(user)
    assert "No saved cards." in text(client.get("/payment-methods/"))

    answer = client.submit("/payment-methods/add")
    assert answer.status_code == 303
    hosted = answer.headers["Location"]
    assert hosted.startswith(standin.base_url + "/checkout/cs_")
    back = type_card(hosted, TEST_CARDS["ok"])
    assert back.status_code == 303
    assert urlsplit(back.headers["Location"]).path == "/payment-methods/added"

    answer = client.get(local(back.headers["Location"]))
    assert answer.status_code == 303
    page = text(client.get("/payment-methods/"))
    assert flashes(page) == ["Visa •••• 4242 is saved."]
    assert card_rows(page) == [("Visa •••• 4242", True)]

    # The same number again: refused with a clear message.
    again = client.submit("/payment-methods/add")
    back = type_card(again.headers["Location"], TEST_CARDS["ok"])
    client.get(local(back.headers["Location"]))
    page = text(client.get("/payment-methods/"))
    assert flashes(page) == [
        "This card is already saved (Visa •••• 4242). Each card can be saved once."
    ]
    assert card_rows(page) == [("Visa •••• 4242", True)]


def test_a_card_that_needs_3d_secure_is_added_after_authentication(
    pay_app, client, auth, make_user
):
    auth.login(make_user())
    hosted = client.submit("/payment-methods/add").headers["Location"]
    back = type_card(hosted, TEST_CARDS["three_d_secure"])  # completes 3-D Secure there
    assert urlsplit(back.headers["Location"]).path == "/payment-methods/added"
    client.get(local(back.headers["Location"]))
    assert card_rows(text(client.get("/payment-methods/"))) == [("Visa •••• 3184", True)]


# -- Wallet top-ups ----------------------------------------------------------------------
def top_up_form(client) -> tuple[str, list[str]]:
    """The Wallet page's top-up form: its nonce and the ways to pay it offers."""
    page = text(client.get("/wallet/"))
    nonce = re.search(r'<input[^>]*name="nonce"[^>]*value="([^"]+)"', page).group(1)
    methods = re.findall(r'<input[^>]*name="method"[^>]*value="([^"]+)"', page)
    return nonce, methods


def test_a_top_up_on_the_checkout_page_credits_the_balance(
    pay_app, client, auth, make_user, standin
):
    auth.login(make_user())
    nonce, methods = top_up_form(client)
    assert methods == ["checkout"]

    answer = client.submit(
        "/wallet/top-up", {"amount": "25.00", "method": "checkout", "nonce": nonce}
    )
    assert answer.status_code == 303
    hosted = answer.headers["Location"]
    assert hosted.startswith(standin.base_url + "/checkout/")
    assert "25.00 USD" in requests.get(hosted, timeout=10).text
    back = type_card(hosted, TEST_CARDS["ok"])
    assert urlsplit(back.headers["Location"]).path == "/wallet/top-up/done"

    assert client.get(local(back.headers["Location"])).status_code == 303
    page = text(client.get("/wallet/"))
    assert flashes(page) == ["$25.00 added to your prepaid balance."]
    assert cash_shown(page) == "$25.00"
    assert "Top-up by card (checkout)" in page

    # Coming back again (a reload) adds nothing.
    client.get(local(back.headers["Location"]))
    assert cash_shown(text(client.get("/wallet/"))) == "$25.00"


def test_the_same_top_up_form_twice_opens_one_checkout(pay_app, client, auth, make_user):
    auth.login(make_user())
    nonce, _ = top_up_form(client)
    form = {"amount": "25.00", "method": "checkout", "nonce": nonce}
    first = client.submit("/wallet/top-up", form)
    again = client.submit("/wallet/top-up", form)
    assert first.status_code == again.status_code == 303
    assert again.headers["Location"] == first.headers["Location"]
    changed = client.submit("/wallet/top-up", {**form, "amount": "30.00"})
    assert changed.status_code == 422
    assert "already requested with other details" in text(changed)


def test_return_pages_of_another_users_payments_are_not_found(
    pay_app, client, auth, make_user, in_app
):
    user, other = make_user(), make_user()
    auth.login(other)
    nonce, _ = top_up_form(client)
    checkout = client.submit(
        "/wallet/top-up", {"amount": "25.00", "method": "checkout", "nonce": nonce}
    ).headers["Location"]
    back = type_card(checkout, TEST_CARDS["ok"]).headers["Location"]
    setup = client.submit("/payment-methods/add").headers["Location"]
    added = type_card(setup, TEST_CARDS["ok"]).headers["Location"]
    auth.logout()
    client.csrf_token = None

    auth.login(user)
    assert client.get(local(back)).status_code == 404
    assert client.get(local(added)).status_code == 404
    with pay_app.app_context():
        assert cards.list_cards(db.session.get(User, other.id)) == []
        assert cards.list_cards(db.session.get(User, user.id)) == []
        db.session.remove()
    assert cash_shown(text(client.get("/wallet/"))) == "$0.00"


def test_a_top_up_from_a_saved_card_once_per_form(pay_app, client, auth, make_user, in_app):
    user = make_user()
    card = in_app(saved_card, user.id)
    auth.login(user)
    nonce, methods = top_up_form(client)
    assert methods == ["checkout", f"card:{card}"]
    form = {"amount": "10.00", "method": f"card:{card}", "nonce": nonce}

    for _ in range(2):  # the same rendered form submitted twice
        answer = client.submit("/wallet/top-up", form)
        assert answer.status_code == 303
        page = text(client.get("/wallet/"))
        assert flashes(page) == ["$10.00 added to your prepaid balance."]
        assert cash_shown(page) == "$10.00"
    with pay_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(PaymentAttempt)) == 1
        assert (
            db.session.scalar(
                select(func.count())
                .select_from(LedgerTransaction)
                .where(LedgerTransaction.kind == "topup")
            )
            == 1
        )
        db.session.remove()

    nonce, _ = top_up_form(client)  # a new form is a new top-up
    client.submit("/wallet/top-up", {**form, "nonce": nonce})
    assert cash_shown(text(client.get("/wallet/"))) == "$20.00"


def test_a_declined_card_top_up_shows_the_error(pay_app, client, auth, make_user, in_app):
    user = make_user()
    card = in_app(saved_card, user.id, TEST_CARDS["charge_declined"])
    auth.login(user)
    nonce, _ = top_up_form(client)
    answer = client.submit(
        "/wallet/top-up", {"amount": "10.00", "method": f"card:{card}", "nonce": nonce}
    )
    assert answer.status_code == 303
    page = text(client.get("/wallet/"))
    [message] = flashes(page)
    assert message.startswith("Visa •••• 0341 was declined")
    assert cash_shown(page) == "$0.00"


def test_a_top_up_with_a_card_that_needs_3d_secure(pay_app, client, auth, make_user, in_app):
    user = make_user()
    card = in_app(saved_card, user.id, TEST_CARDS["three_d_secure"])
    auth.login(user)
    nonce, _ = top_up_form(client)
    answer = client.submit(
        "/wallet/top-up", {"amount": "10.00", "method": f"card:{card}", "nonce": nonce}
    )
    assert answer.status_code == 303 and "/sandbox/authenticate/" in answer.headers["Location"]
    back = requests.post(
        answer.headers["Location"], data={"result": "complete"}, allow_redirects=False, timeout=10
    )
    assert urlsplit(back.headers["Location"]).path == "/wallet/top-up/confirmed"
    assert client.get(local(back.headers["Location"])).status_code == 303
    page = text(client.get("/wallet/"))
    assert flashes(page) == ["$10.00 added to your prepaid balance."]
    assert cash_shown(page) == "$10.00"


@pytest.mark.parametrize(
    "amount, error", [("0.50", "must be at least"), ("abc", "The amount"), ("1.234", "The amount")]
)
def test_a_bad_top_up_amount_is_shown_on_the_form(pay_app, client, auth, make_user, amount, error):
    auth.login(make_user())
    nonce, _ = top_up_form(client)
    answer = client.submit(
        "/wallet/top-up", {"amount": amount, "method": "checkout", "nonce": nonce}
    )
    assert answer.status_code == 422
    assert error in text(answer)


# -- an invoice: preview, Pay now, the tender breakdown ------------------------------------
def preview_rows(page: str) -> list[tuple[str, str]]:
    table = re.search(
        r'<table class="preview-table" id="payment-preview">(.*?)</table>', page, re.S
    )
    if table is None:
        return []
    return re.findall(r'<th scope="row">([^<]+)</th><td class="num">([^<]+)</td>', table.group(1))


def payment_rows(page: str) -> list[tuple[str, str]]:
    return [
        (tender, amount)
        for tender, amount in re.findall(
            r'<tr id="payment-\d+"><td>[^<]*</td><td>([^<]*)</td><td>[^<]*</td>'
            r'<td class="num">([^<]+)</td></tr>',
            page,
        )
    ]


def test_the_invoice_page_previews_and_pay_now_pays(pay_app, client, auth, make_user, in_app):
    user = make_user()
    card = in_app(saved_card, user.id)
    in_app(topped_up, user.id, card, 200)
    invoice = in_app(issued_invoice, user.id)
    auth.login(user)

    page = text(client.get(f"/invoices/{invoice}"))
    assert preview_rows(page) == [("Prepaid balance", "$2.00"), ("Card Visa •••• 4242", "$3.00")]
    assert f'action="/invoices/{invoice}/pay"' in page and "Pay now" in page
    assert "No payments yet." in page

    answer = client.submit(f"/invoices/{invoice}/pay")
    assert answer.status_code == 303 and answer.headers["Location"].endswith(f"/invoices/{invoice}")
    page = text(client.get(f"/invoices/{invoice}"))
    assert flashes(page) == ["The invoice is paid."]
    assert payment_rows(page) == [("Prepaid balance", "$2.00"), ("Card", "$3.00")]
    assert "Pay now" not in page and 'id="payment-preview"' not in page

    again = client.submit(f"/invoices/{invoice}/pay")
    assert again.status_code == 303
    page = text(client.get(f"/invoices/{invoice}"))
    assert flashes(page) == ["This invoice is paid: there is nothing to pay."]
    assert len(payment_rows(page)) == 2


def test_a_card_payment_the_bank_wants_confirmed_is_completed_from_the_invoice_page(
    pay_app, client, auth, make_user, in_app
):
    user = make_user()
    in_app(saved_card, user.id, TEST_CARDS["three_d_secure"])
    invoice = in_app(issued_invoice, user.id)
    auth.login(user)

    for _ in range(2):  # pressed twice (the back button): still waiting for the bank
        client.submit(f"/invoices/{invoice}/pay")
        page = text(client.get(f"/invoices/{invoice}"))
        assert flashes(page) == [
            "Your bank asks you to confirm the card payment: press “Complete payment”."
        ]
    assert "Your bank asks you to confirm the payment of $5.00 with Visa •••• 3184." in page
    assert f'action="/invoices/{invoice}/complete-payment"' in page and "Pay now" not in page

    answer = client.submit(f"/invoices/{invoice}/complete-payment")
    assert answer.status_code == 303 and "/sandbox/authenticate/" in answer.headers["Location"]
    back = requests.post(
        answer.headers["Location"], data={"result": "complete"}, allow_redirects=False, timeout=10
    )
    assert urlsplit(back.headers["Location"]).path == f"/invoices/{invoice}/confirmed"
    assert client.get(local(back.headers["Location"])).status_code == 303
    page = text(client.get(f"/invoices/{invoice}"))
    assert flashes(page) == ["Thank you: the card payment went through."]
    assert payment_rows(page) == [("Card", "$5.00")]
    assert "Complete payment" not in page


def test_an_invoice_nothing_can_pay_says_how_to_pay_it(pay_app, client, auth, make_user, in_app):
    user = make_user()
    in_app(saved_card, user.id, TEST_CARDS["charge_declined"])
    invoice = in_app(issued_invoice, user.id)
    auth.login(user)
    page = text(client.get(f"/invoices/{invoice}"))
    assert preview_rows(page) == [("Card Visa •••• 0341", "$5.00")]
    client.submit(f"/invoices/{invoice}/pay")
    page = text(client.get(f"/invoices/{invoice}"))
    assert flashes(page) == [
        "Visa •••• 0341 was declined: declined by the bank. Pay by card on the secure page "
        "with another card, add money to your balance or redeem a voucher."
    ]
    assert payment_rows(page) == []
    assert "Visa •••• 0341 declined: declined by the bank" in page  # the attempts listed


def test_another_users_invoice_cannot_be_paid(pay_app, client, auth, make_user, in_app):
    user, other = make_user(), make_user()
    in_app(saved_card, other.id)
    theirs = in_app(issued_invoice, other.id)
    auth.login(user)
    assert client.get(f"/invoices/{theirs}").status_code == 404
    assert client.submit(f"/invoices/{theirs}/pay").status_code == 404
    with pay_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(PaymentAttempt)) == 0
        db.session.remove()


# -- the CSP -------------------------------------------------------------------------------
def test_forms_may_lead_to_the_stand_in_when_cards_are_on(
    pay_app, client, auth, make_user, standin
):
    auth.login(make_user())
    policy = client.get("/payment-methods/").headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["form-action"] == f"'self' {standin.base_url}"
    assert "unsafe-inline" not in policy


def test_without_cards_forms_stay_on_the_portal(app, client, auth, make_user):
    auth.login(make_user())
    response = client.get("/payment-methods/")
    policy = response.headers["Content-Security-Policy"]
    assert "form-action 'self';" in policy
    assert "Card payments are not set up on this portal." in text(response)

"""The addresses handed to the payment gateway (checkout success and cancel, add-a-card
return, 3-D Secure return) are built from PUBLIC_URL, never from the request's Host header,
which the client chooses: a forged Host must not send the user, with the gateway's session
id, to another site."""

from __future__ import annotations

import re

import pytest
import requests
from sqlalchemy import select

from portal.extensions import db
from portal.models import CheckoutSession
from tests.support.app import AuthActions
from tests.support.payments import SECRET_KEY, TEST_CARDS, issued_invoice, saved_card, type_card

PUBLIC = "http://portal.test"  # PUBLIC_URL in tests/conftest.py


@pytest.fixture
def forged(pay_app, make_user):
    """A logged-in browser whose every request says ``Host: evil.example``, and its user."""
    user = make_user()
    client = pay_app.test_client()
    client.host = "evil.example"
    assert AuthActions(client).login(user).status_code == 303
    assert client.get_cookie("session", domain="evil.example") is not None  # the Host it used
    return client, user


def gateway_session(pay_app, standin) -> dict:
    """The checkout session the portal last opened, as the gateway holds it."""
    with pay_app.app_context():
        session_id = db.session.scalars(
            select(CheckoutSession.gateway_session_id).order_by(CheckoutSession.id.desc())
        ).first()
    answer = requests.get(
        f"{standin.base_url}/v1/checkout/sessions/{session_id}", auth=(SECRET_KEY, ""), timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def nonce_of(client) -> str:
    page = client.get("/wallet/").get_data(as_text=True)
    return re.search(r'<input[^>]*name="nonce"[^>]*value="([^"]+)"', page).group(1)


def test_checkout_top_up_urls_use_public_url(pay_app, standin, forged):
    client, _ = forged
    answer = client.submit(
        "/wallet/top-up", {"amount": "25.00", "method": "checkout", "nonce": nonce_of(client)}
    )
    assert answer.status_code == 303
    session = gateway_session(pay_app, standin)
    assert session["success_url"].startswith(f"{PUBLIC}/wallet/top-up/done?session_id=")
    assert session["cancel_url"] == f"{PUBLIC}/wallet/"
    back = type_card(answer.headers["Location"], TEST_CARDS["ok"])
    assert back.headers["Location"].startswith(f"{PUBLIC}/wallet/top-up/done?session_id=cs_")


def test_add_a_card_urls_use_public_url(pay_app, standin, forged):
    client, _ = forged
    answer = client.submit("/payment-methods/add")
    assert answer.status_code == 303
    session = gateway_session(pay_app, standin)
    assert session["success_url"].startswith(f"{PUBLIC}/payment-methods/added?session_id=")
    assert session["cancel_url"] == f"{PUBLIC}/payment-methods/"
    back = type_card(answer.headers["Location"], TEST_CARDS["ok"])
    assert back.headers["Location"].startswith(f"{PUBLIC}/payment-methods/added?session_id=cs_")


def authenticated(answer) -> str:
    """Complete 3-D Secure on the gateway's page; where it sends the user back to."""
    assert answer.status_code == 303 and "/sandbox/authenticate/" in answer.headers["Location"]
    back = requests.post(
        answer.headers["Location"], data={"result": "complete"}, allow_redirects=False, timeout=10
    )
    assert back.status_code in (302, 303), back.text
    return back.headers["Location"]


def test_a_card_top_up_3d_secure_return_uses_public_url(pay_app, forged, in_app):
    client, user = forged
    card = in_app(saved_card, user.id, TEST_CARDS["three_d_secure"])
    answer = client.submit(
        "/wallet/top-up", {"amount": "10.00", "method": f"card:{card}", "nonce": nonce_of(client)}
    )
    assert authenticated(answer).startswith(f"{PUBLIC}/wallet/top-up/confirmed")


def test_an_invoice_3d_secure_return_uses_public_url(pay_app, forged, in_app):
    client, user = forged
    in_app(saved_card, user.id, TEST_CARDS["three_d_secure"])
    invoice = in_app(issued_invoice, user.id)
    client.submit(f"/invoices/{invoice}/pay")  # the bank asks for confirmation
    answer = client.submit(f"/invoices/{invoice}/complete-payment")
    assert authenticated(answer).startswith(f"{PUBLIC}/invoices/{invoice}/confirmed")

"""Payments in the JSON API, against the Stripe stand-in: saved cards (list, default,
delete with the last-card rule), checkout top-ups (Idempotency-Key), an invoice's payment
preview and Pay now; every object scoped to its owner."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import CheckoutSession, Invoice, PaymentAttempt, PaymentMethod
from portal.services.payments import cards
from tests.support.payments import (
    TEST_CARDS,
    issued_invoice,
    running_deployment,
    saved_card,
    topped_up,
)

CARD_FIELDS = {"id", "brand", "last4", "exp_month", "exp_year", "is_default"}


def delete(api, path: str, token: str):
    return api.client.delete(api.prefix + path, headers={"Authorization": f"Bearer {token}"})


# -- saved cards ---------------------------------------------------------------------------
def test_cards_are_listed_default_first(pay_app, api, make_user, in_app):
    user = make_user()
    first = in_app(saved_card, user.id)
    second = in_app(saved_card, user.id, TEST_CARDS["three_d_secure"])
    token = api.token(user)

    answer = api.get("/payment-methods", token=token)
    assert answer.status_code == 200
    assert [set(card) for card in answer.json] == [CARD_FIELDS, CARD_FIELDS]
    assert answer.json == [
        {
            "id": first,
            "brand": "visa",
            "last4": "4242",
            "exp_month": 12,
            "exp_year": 2034,
            "is_default": True,
        },
        {
            "id": second,
            "brand": "visa",
            "last4": "3184",
            "exp_month": 12,
            "exp_year": 2034,
            "is_default": False,
        },
    ]
    assert api.get("/payment-methods", token=api.token(make_user())).json == []
    assert api.get("/payment-methods").status_code == 401


def test_the_default_card_changes_for_its_owner_only(pay_app, api, make_user, in_app):
    user, other = make_user(), make_user()
    first = in_app(saved_card, user.id)
    second = in_app(saved_card, user.id, TEST_CARDS["three_d_secure"])
    theirs = in_app(saved_card, other.id)

    answer = api.post(f"/payment-methods/{second}/default", token=api.token(user))
    assert answer.status_code == 200
    assert answer.json["id"] == second and answer.json["is_default"] is True
    listed = api.get("/payment-methods", token=api.token(user)).json
    assert [(c["id"], c["is_default"]) for c in listed] == [(second, True), (first, False)]

    refused = api.post(f"/payment-methods/{theirs}/default", token=api.token(user))
    assert refused.status_code == 404 and refused.json["error"]["code"] == "not_found"
    assert [c["is_default"] for c in api.get("/payment-methods", token=api.token(other)).json] == [
        True
    ]


def test_deleting_cards_and_the_last_card_rule(pay_app, api, make_user, in_app):
    user, other = make_user(), make_user()
    first = in_app(saved_card, user.id)
    second = in_app(saved_card, user.id, TEST_CARDS["three_d_secure"])
    theirs = in_app(saved_card, other.id)
    in_app(running_deployment, user.id)
    token = api.token(user)

    assert delete(api, f"/payment-methods/{theirs}", token).status_code == 404
    assert delete(api, f"/payment-methods/{first}", token).status_code == 204
    listed = api.get("/payment-methods", token=token).json
    assert [(c["id"], c["is_default"]) for c in listed] == [(second, True)]  # the next default

    guarded = delete(api, f"/payment-methods/{second}", token)
    assert guarded.status_code == 409
    assert guarded.json["error"]["code"] == "conflict"
    assert cards.LAST_CARD_RULE in guarded.json["error"]["message"]
    assert [c["id"] for c in api.get("/payment-methods", token=token).json] == [second]

    # Without deployments the last card may go.
    assert delete(api, f"/payment-methods/{theirs}", api.token(other)).status_code == 204
    assert api.get("/payment-methods", token=api.token(other)).json == []
    assert delete(api, f"/payment-methods/{first}", token).status_code == 404  # gone


# -- checkout top-ups ----------------------------------------------------------------------
def checkout_rows(app) -> int:
    with app.app_context():
        try:
            return db.session.scalar(select(func.count()).select_from(CheckoutSession))
        finally:
            db.session.remove()


def test_a_checkout_top_up_gives_the_page_to_pay_on(pay_app, api, make_user, standin):
    user = make_user()
    token = api.token(user)
    answer = api.post("/create-checkout", {"purpose": "topup", "amount": "25.00"}, token=token)
    assert answer.status_code == 201
    body = answer.json
    assert {"checkout_url", "session_id"} <= set(body)
    assert (body["amount"], body["amount_minor"], body["currency"]) == ("25.00", 2500, "USD")
    assert body["checkout_url"].startswith(standin.base_url + "/checkout/")
    page = requests.get(body["checkout_url"], timeout=10)
    assert page.status_code == 200 and "25.00 USD" in page.text
    with pay_app.app_context():
        row = db.session.scalar(
            select(CheckoutSession).where(CheckoutSession.gateway_session_id == body["session_id"])
        )
        assert (row.user_id, row.purpose, row.amount_minor, row.status) == (
            user.id,
            "topup",
            2500,
            "open",
        )
        db.session.remove()


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"purpose": "topup", "amount": "0"}, "amount"),
        ({"purpose": "topup", "amount": "-5"}, "amount"),
        ({"purpose": "topup", "amount": "12.345"}, "amount"),
        ({"purpose": "topup", "amount": "ten"}, "amount"),
        ({"purpose": "topup", "amount": "0.50"}, "amount"),  # under the minimum
        ({"purpose": "topup", "amount": "1000000"}, "amount"),  # over the maximum
        ({"purpose": "topup"}, "amount"),
        ({"purpose": "subscription", "amount": "25.00"}, "plan_id"),
        ({"purpose": "donation", "amount": "25.00"}, "purpose"),
        ({"amount": "25.00"}, "purpose"),
    ],
)
def test_a_bad_checkout_request_is_422(pay_app, api, make_user, payload, field):
    answer = api.post("/create-checkout", payload, token=api.token(make_user()))
    assert answer.status_code == 422, answer.json
    assert answer.json["error"]["code"] == "validation_failed"
    assert field in answer.json["error"]["fields"]
    assert checkout_rows(pay_app) == 0


def test_an_idempotency_key_repeat_returns_the_same_checkout(pay_app, api, make_user):
    user = make_user()
    token = api.token(user)
    headers = {"Idempotency-Key": "topup-7f3a"}
    first = api.post(
        "/create-checkout", {"purpose": "topup", "amount": "25.00"}, token=token, headers=headers
    )
    again = api.post(
        "/create-checkout", {"purpose": "topup", "amount": "25.00"}, token=token, headers=headers
    )
    assert first.status_code in (200, 201) and again.status_code in (200, 201)
    assert again.json["session_id"] == first.json["session_id"]
    assert again.json["checkout_url"] == first.json["checkout_url"]
    assert checkout_rows(pay_app) == 1

    other = api.post(
        "/create-checkout",
        {"purpose": "topup", "amount": "25.00"},
        token=token,
        headers={"Idempotency-Key": "topup-8b1c"},
    )
    assert other.json["session_id"] != first.json["session_id"]
    # The same key from another user is another request.
    theirs = api.post(
        "/create-checkout",
        {"purpose": "topup", "amount": "25.00"},
        token=api.token(make_user()),
        headers=headers,
    )
    assert theirs.json["session_id"] != first.json["session_id"]
    # The same key with another amount is refused, not taken for the first request.
    changed = api.post(
        "/create-checkout", {"purpose": "topup", "amount": "30.00"}, token=token, headers=headers
    )
    assert changed.status_code == 409, changed.json
    assert changed.json["error"]["code"] == "idempotency_conflict"
    assert checkout_rows(pay_app) == 3


# -- paying an invoice ---------------------------------------------------------------------
def test_the_preview_then_pay_now_pays_as_previewed(pay_app, api, make_user, in_app):
    user = make_user()
    card = in_app(saved_card, user.id)
    in_app(topped_up, user.id, card, 200)  # $2.00 prepaid
    invoice = in_app(issued_invoice, user.id)  # $5.00
    token = api.token(user)

    preview = api.get(f"/invoices/{invoice}/payment-preview", token=token)
    assert preview.status_code == 200
    assert preview.json == {
        "invoice_id": invoice,
        "status": "sent",
        "currency": "USD",
        "parts": [
            {"tender": "cash", "label": "Prepaid balance", "amount": "2.00", "amount_minor": 200},
            {
                "tender": "card",
                "label": "Card Visa •••• 4242",
                "amount": "3.00",
                "amount_minor": 300,
            },
        ],
        "remaining": "0.00",
        "remaining_minor": 0,
    }

    paid = api.post(f"/invoices/{invoice}/pay", token=token)
    assert paid.status_code == 200
    body = paid.json
    assert (body["id"], body["status"], body["payment_outcome"]) == (invoice, "paid", "paid")
    assert (body["amount_paid_minor"], body["amount_due_minor"]) == (500, 0)
    assert [(p["tender"], p["amount"], p["amount_minor"]) for p in body["payments"]] == [
        ("cash", "2.00", 200),
        ("card", "3.00", 300),
    ]

    again = api.post(f"/invoices/{invoice}/pay", token=token)
    assert again.status_code == 409 and again.json["error"]["code"] == "invalid_transition"
    after = api.get(f"/invoices/{invoice}/payment-preview", token=token).json
    assert (after["status"], after["parts"], after["remaining_minor"]) == ("paid", [], 0)
    with pay_app.app_context():
        assert len(db.session.get(Invoice, invoice).payments) == 2
        db.session.remove()


def test_without_a_tender_the_invoice_stays_open(pay_app, api, make_user, in_app):
    user = make_user()
    invoice = in_app(issued_invoice, user.id)
    token = api.token(user)
    preview = api.get(f"/invoices/{invoice}/payment-preview", token=token).json
    assert (preview["parts"], preview["remaining"]) == ([], "5.00")
    answer = api.post(f"/invoices/{invoice}/pay", token=token)
    assert answer.status_code == 200
    assert (answer.json["status"], answer.json["payments"]) == ("sent", [])
    assert answer.json["payment_outcome"] == "unpaid"


def test_a_card_payment_waiting_for_3d_secure_says_so(pay_app, api, make_user, in_app):
    user = make_user()
    in_app(saved_card, user.id, TEST_CARDS["three_d_secure"])
    invoice = in_app(issued_invoice, user.id)
    token = api.token(user)
    for _ in range(2):  # pressed again while the bank waits: still waiting, no new charge
        answer = api.post(f"/invoices/{invoice}/pay", token=token)
        assert answer.status_code == 200
        assert (answer.json["status"], answer.json["payment_outcome"]) == (
            "sent",
            "requires_action",
        )
    with pay_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(PaymentAttempt)) == 1
        db.session.remove()


def test_a_declined_card_leaves_the_invoice_open_and_says_so(pay_app, api, make_user, in_app):
    user = make_user()
    in_app(saved_card, user.id, TEST_CARDS["charge_declined"])
    invoice = in_app(issued_invoice, user.id)
    answer = api.post(f"/invoices/{invoice}/pay", token=api.token(user))
    assert answer.status_code == 200
    assert (answer.json["status"], answer.json["payment_outcome"]) == ("sent", "failed")
    assert answer.json["payments"] == []


def test_another_users_invoice_is_not_found(pay_app, api, make_user, in_app):
    user, other = make_user(), make_user()
    in_app(saved_card, other.id)
    theirs = in_app(issued_invoice, other.id)
    token = api.token(user)
    for answer in (
        api.get(f"/invoices/{theirs}/payment-preview", token=token),
        api.post(f"/invoices/{theirs}/pay", token=token),
    ):
        assert answer.status_code == 404 and answer.json["error"]["code"] == "not_found"
    with pay_app.app_context():
        invoice = db.session.get(Invoice, theirs)
        assert (invoice.status, invoice.payments) == ("open", [])
        assert db.session.scalar(select(func.count()).select_from(PaymentMethod)) == 1
        db.session.remove()

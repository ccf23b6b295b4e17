"""Money handlers trust only the gateway. A correctly signed event is the gateway's word that
something happened, not a source of amounts: the handlers read the charge, refund, dispute,
checkout session or payment from the gateway (the stand-in, over HTTP) and book its amounts,
never more than the payment brought in, less what was already given or taken back.

Each test takes a real delivery, rewrites its amounts upwards, signs it again with the
endpoint's secret (as someone holding the secret, or a replayed and altered payload, could)
and delivers it."""

from __future__ import annotations

import json
import time
import uuid

import requests
from sqlalchemy import select

from portal.extensions import db
from portal.models import AccountKind, Event, PaymentAttempt, PaymentReversal, User
from portal.money import Money
from portal.services.payments import card_charges, settlement
from tests.services.payments.test_reversals import (
    cash,
    refund,
    refund_events,
    reversals,
    system_balance,
)
from tests.services.payments.test_webhooks import (
    customer_of,
    events_of,
    pay_checkout_on_sandbox,
    post_event,
    sign,
    state_of,
    wait_for_all,
)
from tests.support.payments import TEST_CARDS, add_card, invoice_of


def forged(receiver, delivery: tuple[dict, bytes], change) -> tuple[dict, bytes]:
    """The delivery as a new event (fresh id) with ``change(object)`` applied, signed with the
    endpoint's secret."""
    event = json.loads(delivery[1])
    event["id"] = event["id"] + "_forged"
    change(event["data"]["object"])
    body = json.dumps(event).encode()
    return {"Stripe-Signature": sign(body, receiver.secret)}, body


def card_top_up(user_id: int, amount_minor: int, number: str = TEST_CARDS["ok"]) -> str:
    user = db.session.get(User, user_id)
    card = add_card(user, number).card
    attempt, _ = card_charges.top_up_with_card(
        user,
        card.id,
        Money(amount_minor, "USD"),
        nonce=uuid.uuid4().hex,
        return_url="http://portal.test/",
    )
    assert attempt.status == "succeeded"
    payment = attempt.gateway_payment_id
    db.session.commit()
    return payment


def dispute_of(receiver, customer: str) -> tuple[dict, bytes]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [
            d
            for d in events_of(receiver, customer)
            if json.loads(d[1])["type"] == "charge.dispute.created"
        ]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("no dispute event arrived")


def test_a_signed_refund_claiming_100000_books_the_gateways_10_of_a_25_top_up(
    pctx, make_user, receiver
):
    user_id = make_user().id
    payment = card_top_up(user_id, 2500)
    assert cash(user_id) == 2500
    refund(payment, 1000)
    [real] = refund_events(receiver, customer_of(user_id), payment, 1)

    def inflate(charge):
        charge["amount_refunded"] = 10_000_000  # 100,000.00
        for listed in charge["refunds"]["data"]:
            listed["amount"] = 10_000_000
        charge["refunds"]["data"].append(
            {**charge["refunds"]["data"][0], "id": "re_forged", "amount": 9_999_000}
        )

    client = pctx.test_client()
    assert post_event(client, *forged(receiver, real, inflate)).status_code == 200

    assert reversals(payment) == [("refund", 1000)]  # the gateway's refund, once
    assert cash(user_id) == 1500
    assert system_balance(AccountKind.REFUNDS) == 0
    assert post_event(client, *real).status_code == 200  # the true event adds nothing
    assert reversals(payment) == [("refund", 1000)] and cash(user_id) == 1500


def test_a_signed_dispute_claiming_77777_books_the_gateways_amount(pctx, make_user, receiver):
    user_id = make_user().id
    user = db.session.get(User, user_id)
    add_card(user, TEST_CARDS["disputed"])
    invoice = invoice_of(user, {"web": 100})  # $5.00, paid by the card, then disputed
    settlement.settle(user_id)
    attempt = db.session.scalar(
        select(PaymentAttempt).where(PaymentAttempt.invoice_id == invoice.id)
    )
    payment = attempt.gateway_payment_id
    db.session.commit()
    real = dispute_of(receiver, customer_of(user_id))

    def inflate(dispute):
        dispute["amount"] = 7_777_777

    client = pctx.test_client()
    assert post_event(client, *forged(receiver, real, inflate)).status_code == 200

    assert reversals(payment) == [("dispute", 500)]
    assert system_balance(AccountKind.DISPUTES) == 500
    [told] = db.session.scalars(select(Event).where(Event.name == "billing.payment.disputed"))
    assert (told.payload["amount_minor"], told.payload["amount"]) == (500, "5.00")
    db.session.commit()


def test_a_dispute_after_a_partial_refund_books_only_what_is_left(
    pctx, make_user, receiver, standin
):
    """The gateway's dispute is for the whole 25.00 charge, but 10.00 of it went back as a
    refund already: 15.00 is booked, and no refund or dispute can take back more."""
    user_id = make_user().id
    payment = card_top_up(user_id, 2500)
    customer = customer_of(user_id)
    refund(payment, 1000)
    client = pctx.test_client()
    for delivery in refund_events(receiver, customer, payment, 1):
        assert post_event(client, *delivery).status_code == 200
    opened = requests.post(
        f"{standin.base_url}/_config/disputes", data={"payment_intent": payment}, timeout=10
    )
    assert opened.status_code == 200 and opened.json()["amount"] == 2500
    assert post_event(client, *dispute_of(receiver, customer)).status_code == 200

    assert sorted(reversals(payment)) == [("dispute", 1500), ("refund", 1000)]
    assert system_balance(AccountKind.DISPUTES) == 1500
    total = sum(r.amount_minor for r in db.session.scalars(select(PaymentReversal)))
    db.session.commit()
    assert total == 2500  # never more than the payment brought in


def test_signed_checkout_and_payment_events_claiming_more_credit_the_gateways_amount(
    pctx, make_user, receiver
):
    user_id = make_user().id
    customer = customer_of(user_id)
    session, payment = pay_checkout_on_sandbox(user_id, 2000)
    wait_for_all(
        receiver, [("checkout.session.completed", session), ("payment_intent.succeeded", payment)]
    )
    by_type = {
        json.loads(body)["type"]: (headers, body) for headers, body in events_of(receiver, customer)
    }

    def more_session(obj):
        obj["amount_total"] = obj["amount_subtotal"] = 10_000_000

    def more_payment(obj):
        obj["amount"] = obj["amount_received"] = 10_000_000

    client = pctx.test_client()
    assert (
        post_event(
            client, *forged(receiver, by_type["payment_intent.succeeded"], more_payment)
        ).status_code
        == 200
    )
    assert (
        post_event(
            client, *forged(receiver, by_type["checkout.session.completed"], more_session)
        ).status_code
        == 200
    )
    state = state_of(user_id)
    assert state["balances"]["cash"] == 2000
    assert state["ledger"] == [("topup", (("cash", 2000), ("stripe_clearing", -2000)))]

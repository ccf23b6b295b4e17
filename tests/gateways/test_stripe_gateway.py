"""The Stripe gateway against the stand-in, over HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from portal.gateways import GatewayError, LivemodeMismatch, PaymentStatus, SignatureError
from portal.gateways.stripe import StripeGateway
from portal.money import Money
from tests.support.gateway import SECRET_KEY, TEST_CARDS, save_card


def test_a_customer_is_made_once_per_user(gateway):
    first = gateway.ensure_customer(424242, "same@example.com", "Same")
    assert first.startswith("cus_")
    assert gateway.ensure_customer(424242, "same@example.com", "Same") == first
    assert gateway.ensure_customer(424243, "same@example.com", "Other") != first


def test_a_card_added_on_the_sandbox_setup_page(gateway, customer, standin):
    """A bare SetupIntent: the card number is typed on the stand-in's page, never ours."""
    setup = gateway.create_setup_intent(customer, metadata={"user_id": "7"})
    assert setup.status == "requires_payment_method" and setup.client_secret
    page = f"{standin.base_url}/sandbox/setup_intents/{setup.id}"
    query = {"client_secret": setup.client_secret, "return_url": "http://127.0.0.1:9/cards"}
    assert (
        requests.get(page, params={**query, "client_secret": "wrong"}, timeout=10).status_code
        == 403
    )
    form = requests.get(page, params=query, timeout=10)
    assert form.status_code == 200 and "Card number" in form.text
    answer = requests.post(
        page,
        params=query,
        allow_redirects=False,
        timeout=10,
        data={"number": "4242 4242 4242 4242", "exp": "12 / 34", "cvc": "123"},
    )
    assert answer.status_code == 303
    back = urlparse(answer.headers["Location"])
    assert back.path == "/cards"
    assert parse_qs(back.query)["setup_intent"] == [setup.id]
    assert parse_qs(back.query)["redirect_status"] == ["succeeded"]

    done = gateway.retrieve_setup_intent(setup.id)
    assert done.status == "succeeded"
    card = gateway.get_payment_method(done.payment_method)
    assert (card.brand, card.last4, card.exp_month, card.exp_year) == ("visa", "4242", 12, 2034)
    assert card.customer == customer and card.fingerprint
    # The same number has the same fingerprint (how duplicates are told apart).
    again = gateway.get_payment_method(save_card(gateway, customer, TEST_CARDS["ok"]))
    assert again.fingerprint == card.fingerprint and again.id != card.id

    gateway.detach_payment_method(card.id)
    assert gateway.get_payment_method(card.id).customer is None


def test_a_declined_number_on_the_sandbox_page_shows_the_decline(gateway, customer, standin):
    setup = gateway.create_setup_intent(customer)
    page = f"{standin.base_url}/sandbox/setup_intents/{setup.id}"
    answer = requests.post(
        page,
        params={"client_secret": setup.client_secret},
        timeout=10,
        data={"number": "4000000000000002", "exp": "12/34", "cvc": "123"},
    )
    assert answer.status_code == 402 and "Your card was declined." in answer.text
    assert gateway.retrieve_setup_intent(setup.id).status != "succeeded"


def test_charging_saved_cards(gateway, customer):
    ok = save_card(gateway, customer, TEST_CARDS["ok"])
    declined = save_card(gateway, customer, TEST_CARDS["charge_declined"])
    secure = save_card(gateway, customer, TEST_CARDS["three_d_secure"])

    paid = gateway.create_payment_intent(
        customer, ok, Money(1999, "USD"), idempotency_key="inv:1:att:1", metadata={"invoice": "1"}
    )
    assert paid.status is PaymentStatus.SUCCEEDED
    assert paid.amount == Money(1999, "USD") and paid.decline_code is None
    assert paid.metadata == {"invoice": "1", "idempotency_key": "inv:1:att:1"}

    refused = gateway.create_payment_intent(
        customer, declined, Money(1999, "USD"), idempotency_key="inv:1:att:2"
    )
    assert refused.status is PaymentStatus.FAILED
    assert refused.id and refused.decline_code == "generic_decline"
    assert gateway.retrieve_payment_intent(refused.id).status is PaymentStatus.FAILED

    action = gateway.create_payment_intent(
        customer, secure, Money(1999, "USD"), idempotency_key="inv:1:att:3"
    )
    assert action.status is PaymentStatus.REQUIRES_ACTION
    assert action.decline_code == "authentication_required"


def test_three_d_secure_is_completed_with_the_customer(gateway, customer):
    secure = save_card(gateway, customer, TEST_CARDS["three_d_secure"])
    first = gateway.create_payment_intent(
        customer, secure, Money(500, "USD"), idempotency_key="inv:2:att:1"
    )
    assert first.status is PaymentStatus.REQUIRES_ACTION
    step = gateway.confirm_payment_intent(
        first.id,
        payment_method=secure,
        return_url="http://127.0.0.1:9/invoices/2",
        idempotency_key="inv:2:att:1:confirm",
    )
    assert step.status is PaymentStatus.REQUIRES_ACTION and step.next_action_url
    page = requests.get(step.next_action_url, timeout=10)
    assert "Complete authentication" in page.text
    answer = requests.post(
        step.next_action_url, data={"result": "complete"}, allow_redirects=False, timeout=10
    )
    back = urlparse(answer.headers["Location"])
    assert (back.path, parse_qs(back.query)["redirect_status"]) == ("/invoices/2", ["succeeded"])
    assert gateway.retrieve_payment_intent(first.id).status is PaymentStatus.SUCCEEDED


def test_a_retried_payment_returns_the_same_intent_and_charges_once(gateway, customer):
    card = save_card(gateway, customer, TEST_CARDS["ok"])
    first = gateway.create_payment_intent(
        customer, card, Money(700, "USD"), idempotency_key="inv:3:att:1"
    )
    again = gateway.create_payment_intent(
        customer, card, Money(700, "USD"), idempotency_key="inv:3:att:1"
    )
    assert again.id == first.id and again.status is PaymentStatus.SUCCEEDED
    intents = [gateway.find_payment_intent_by_idempotency_key(customer, "inv:3:att:1")]
    assert [i.id for i in intents] == [first.id]
    # One intent for the customer in all: no second charge.
    assert (
        gateway.find_payment_intent_by_metadata(customer, "idempotency_key", "inv:3:att:2") is None
    )
    # The same key with other parameters is a programming error, refused by Stripe.
    with pytest.raises(GatewayError) as refused:
        gateway.create_payment_intent(
            customer, card, Money(701, "USD"), idempotency_key="inv:3:att:1"
        )
    assert refused.value.code == "idempotency_error" and not refused.value.outcome_unknown


def test_checkout_completes_and_a_signed_webhook_arrives(gateway, customer, receiver, standin):
    session = gateway.create_checkout_session(
        customer,
        Money(2500, "USD"),
        description="Balance top-up",
        success_url="http://127.0.0.1:9/wallet?session={CHECKOUT_SESSION_ID}",
        cancel_url="http://127.0.0.1:9/wallet",
        metadata={"topup": "t-1"},
    )
    assert session.url.startswith(standin.base_url + "/checkout/")
    page = requests.get(session.url, timeout=10)
    assert "25.00 USD" in page.text and "Balance top-up" in page.text

    declined = requests.post(
        session.url,
        timeout=10,
        allow_redirects=False,
        data={"number": TEST_CARDS["charge_declined"], "exp": "12/34", "cvc": "123"},
    )
    assert declined.status_code == 402 and "Your card was declined." in declined.text
    assert gateway.retrieve_checkout_session(session.id).status == "open"

    secure = requests.post(
        session.url,
        timeout=10,
        allow_redirects=False,
        data={"number": TEST_CARDS["three_d_secure"], "exp": "12/34", "cvc": "123"},
    )
    assert "/sandbox/authenticate/" in secure.headers["Location"]
    done = requests.post(
        secure.headers["Location"], data={"result": "complete"}, allow_redirects=False, timeout=10
    )
    assert done.headers["Location"] == f"http://127.0.0.1:9/wallet?session={session.id}"

    paid = gateway.retrieve_checkout_session(session.id)
    assert (paid.status, paid.payment_status) == ("complete", "paid")
    assert paid.amount_total == Money(2500, "USD") and paid.metadata == {"topup": "t-1"}
    intent = gateway.retrieve_payment_intent(paid.payment_intent)
    assert intent.status is PaymentStatus.SUCCEEDED and intent.metadata == {"topup": "t-1"}

    headers, body = receiver.wait_for("checkout.session.completed", session.id)
    receiving = StripeGateway(
        secret_key=SECRET_KEY, webhook_secret=receiver.secret, api_base=standin.base_url
    )
    event = receiving.construct_event(body, headers["Stripe-Signature"])
    assert event.type == "checkout.session.completed" and event.livemode is False
    assert event.object["payment_intent"] == paid.payment_intent
    assert event.object["metadata"] == {"topup": "t-1"}
    _, body = receiver.wait_for("payment_intent.succeeded", paid.payment_intent)
    _, body = receiver.wait_for("payment_intent.payment_failed", paid.payment_intent)
    # Signed with this receiver's secret only.
    with pytest.raises(SignatureError):
        gateway.construct_event(body, headers["Stripe-Signature"])


def test_setup_refund_and_dispute_events(gateway, customer, receiver, standin):
    card = save_card(gateway, customer, TEST_CARDS["ok"])
    setup_events = [
        e
        for e in receiver.events()
        if e["type"] == "setup_intent.succeeded" and e["data"]["object"]["payment_method"] == card
    ]
    if not setup_events:
        deadline = time.monotonic() + 10
        while not setup_events and time.monotonic() < deadline:
            time.sleep(0.05)
            setup_events = [
                e
                for e in receiver.events()
                if e["type"] == "setup_intent.succeeded"
                and e["data"]["object"]["payment_method"] == card
            ]
    assert setup_events

    paid = gateway.create_payment_intent(
        customer, card, Money(1000, "USD"), idempotency_key="inv:4:att:1"
    )
    refund = gateway.refund(paid.id, Money(400, "USD"), idempotency_key="refund:4:1")
    assert (refund.status, refund.amount, refund.payment_intent) == (
        "succeeded",
        Money(400, "USD"),
        paid.id,
    )
    _, body = receiver.wait_for("charge.refunded", refund.charge)

    disputed_card = save_card(gateway, customer, TEST_CARDS["disputed"])
    disputed = gateway.create_payment_intent(
        customer, disputed_card, Money(900, "USD"), idempotency_key="inv:5:att:1"
    )
    assert disputed.status is PaymentStatus.SUCCEEDED
    deadline = time.monotonic() + 10
    disputes = []
    while not disputes and time.monotonic() < deadline:
        disputes = [
            e
            for e in receiver.events()
            if e["type"] == "charge.dispute.created"
            and e["data"]["object"]["payment_intent"] == disputed.id
        ]
        time.sleep(0.05)
    assert disputes and disputes[0]["data"]["object"]["amount"] == 900


def test_charges_their_refunds_and_disputes_are_read_from_the_gateway(
    gateway, customer, receiver, standin
):
    """What the webhook handlers book comes from these reads, never from an event's body."""
    card = save_card(gateway, customer, TEST_CARDS["ok"])
    paid = gateway.create_payment_intent(
        customer, card, Money(2500, "USD"), idempotency_key=f"inv:{customer}:att:1"
    )
    first = gateway.refund(paid.id, Money(1000, "USD"), idempotency_key=f"r:{customer}:1")
    second = gateway.refund(paid.id, Money(500, "USD"), idempotency_key=f"r:{customer}:2")
    charge = gateway.retrieve_charge(first.charge)
    assert (charge.id, charge.payment_intent, charge.amount, charge.amount_refunded) == (
        first.charge,
        paid.id,
        Money(2500, "USD"),
        Money(1500, "USD"),
    )
    assert sorted((r.id, r.amount, r.status) for r in charge.refunds) == sorted(
        [(first.id, Money(1000, "USD"), "succeeded"), (second.id, Money(500, "USD"), "succeeded")]
    )
    # Like Stripe, the stand-in refunds no more than the charge has left.
    with pytest.raises(GatewayError, match="greater than unrefunded amount on charge"):
        gateway.refund(paid.id, Money(1001, "USD"), idempotency_key=f"r:{customer}:3")
    rest = gateway.refund(paid.id, None, idempotency_key=f"r:{customer}:4")
    assert rest.amount == Money(1000, "USD")
    with pytest.raises(GatewayError, match="already been refunded"):
        gateway.refund(paid.id, None, idempotency_key=f"r:{customer}:5")
    assert gateway.retrieve_charge(first.charge).amount_refunded == Money(2500, "USD")

    disputed_card = save_card(gateway, customer, TEST_CARDS["disputed"])
    disputed = gateway.create_payment_intent(
        customer, disputed_card, Money(900, "USD"), idempotency_key=f"inv:{customer}:att:2"
    )
    deadline = time.monotonic() + 10
    found = []
    while not found and time.monotonic() < deadline:
        found = [
            e["data"]["object"]["id"]
            for e in receiver.events()
            if e["type"] == "charge.dispute.created"
            and e["data"]["object"]["payment_intent"] == disputed.id
        ]
        time.sleep(0.05)
    dispute = gateway.retrieve_dispute(found[0])
    assert (dispute.payment_intent, dispute.amount, dispute.reason, dispute.status) == (
        disputed.id,
        Money(900, "USD"),
        "fraudulent",
        "needs_response",
    )
    assert dispute.charge and dispute.charge.startswith("ch_")


def test_events_from_the_other_mode_are_refused(gateway, standin):
    body = json.dumps(
        {
            "id": "evt_live_1",
            "type": "payment_intent.succeeded",
            "livemode": True,
            "data": {"object": {"id": "pi_1"}},
        }
    ).encode()
    stamp = int(time.time())
    digest = hmac.new(b"whsec_gateway_tests", b"%d." % stamp + body, hashlib.sha256).hexdigest()
    with pytest.raises(LivemodeMismatch):
        gateway.construct_event(body, f"t={stamp},v1={digest}")
    with pytest.raises(SignatureError):
        gateway.construct_event(body, f"t={stamp},v1={'0' * 64}")


@pytest.fixture
def silent_server():
    """Accepts connections and never answers (a Stripe that took the request and hung)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_timeout_is_an_unknown_outcome(silent_server):
    base, accepted = silent_server
    gateway = StripeGateway(secret_key=SECRET_KEY, api_base=base, timeout_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(GatewayError) as lost:
        gateway.create_payment_intent(
            "cus_x", "pm_x", Money(1000, "USD"), idempotency_key="inv:9:att:1"
        )
    assert time.monotonic() - started < 5
    assert lost.value.outcome_unknown and "outcome unknown" in str(lost.value)
    assert len(accepted) == 1  # sent once: the library did not retry


def test_an_unknown_outcome_is_resolved_by_looking_the_payment_up(gateway, customer):
    """The answer to a payment was lost: the lookup finds the intent the attempt made (so it
    is not charged again), or nothing when the request never got through."""
    card = save_card(gateway, customer, TEST_CARDS["ok"])
    made = gateway.create_payment_intent(
        customer, card, Money(1200, "USD"), idempotency_key="inv:6:att:1"
    )
    found = gateway.find_payment_intent_by_idempotency_key(customer, "inv:6:att:1")
    assert found.id == made.id and found.status is PaymentStatus.SUCCEEDED
    assert gateway.find_payment_intent_by_idempotency_key(customer, "inv:6:att:2") is None

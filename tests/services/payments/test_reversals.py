"""Money the gateway gives back (refunds) or takes back (disputes), from its webhooks.

Each refund is booked once: a top-up's refund comes out of the prepaid balance as far as it
goes and the rest is a loss in the refunds account; a refund of an invoice's card payment is
a loss and the invoice stays paid. A refund whose payment is not recorded yet waits in the
inbox. A dispute is booked once and told to the platform once.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import func, select

from portal.extensions import db
from portal.gateways import get_gateway
from portal.models import (
    AccountKind,
    Event,
    Invoice,
    LedgerEntry,
    PaymentAttempt,
    PaymentReversal,
    User,
    WebhookEvent,
)
from portal.money import Money
from portal.services.payments import card_charges, inbox, settlement
from portal.services.wallet import ledger
from tests.services.payments.test_webhooks import (
    customer_of,
    events_of,
    pay_checkout_on_sandbox,
    post_event,
    wait_for_all,
)
from tests.support.gateway import save_card as save_card_at_gateway
from tests.support.payments import OCT, TEST_CARDS, add_card, invoice_of


def system_balance(kind: AccountKind) -> int:
    """A system account's balance on its normal side (refunds and disputes: debit-normal)."""
    account = ledger.system_account(kind, "USD")
    total = db.session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
            LedgerEntry.account_id == account.id
        )
    )
    db.session.commit()
    return kind.normal_sign * int(total)


def cash(user_id: int) -> int:
    db.session.commit()
    amount = ledger.balances(db.session.get(User, user_id)).cash.amount_minor
    db.session.commit()
    return amount


def reversals(payment_intent: str | None = None) -> list[tuple[str, int]]:
    db.session.commit()
    query = select(PaymentReversal).order_by(PaymentReversal.amount_minor)
    if payment_intent:
        query = query.where(PaymentReversal.gateway_payment_id == payment_intent)
    found = [(r.kind, r.amount_minor) for r in db.session.scalars(query)]
    db.session.commit()
    return found


def refund_events(receiver, customer: str, payment_intent: str, count: int) -> list:
    """The ``charge.refunded`` deliveries for the payment, oldest first (the last one lists
    every refund), once ``count`` arrived."""

    def found():
        return [
            (headers, body)
            for headers, body in events_of(receiver, customer)
            if json.loads(body)["type"] == "charge.refunded"
            and json.loads(body)["data"]["object"]["payment_intent"] == payment_intent
        ]

    deadline = time.monotonic() + 20
    while len(found()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    deliveries = found()
    assert len(deliveries) == count, deliveries
    return sorted(deliveries, key=lambda d: json.loads(d[1])["data"]["object"]["amount_refunded"])


def refund(payment_intent: str, *amounts: int) -> None:
    gateway = get_gateway()
    for n, amount in enumerate(amounts):
        gateway.refund(
            payment_intent,
            Money(amount, "USD"),
            idempotency_key=f"test-refund:{payment_intent}:{n}",
        )


def test_a_top_up_refunded_in_two_parts_out_of_order_comes_out_of_the_balance_once(
    pctx, make_user, receiver
):
    user_id = make_user().id
    user = db.session.get(User, user_id)
    card = add_card(user).card
    invoice = invoice_of(user, {"web": 100}, period=OCT)  # $5.00, paid by the top-up
    attempt, _ = card_charges.top_up_with_card(
        user, card.id, Money(2000, "USD"), nonce="t1", return_url="http://portal.test/wallet/"
    )
    payment = attempt.gateway_payment_id
    db.session.commit()
    assert db.session.get(Invoice, invoice.id).status == "paid"
    assert [p.tender for p in db.session.get(Invoice, invoice.id).payments] == ["cash"]
    assert cash(user_id) == 1500

    refund(payment, 500, 1500)
    partial, full = refund_events(receiver, customer_of(user_id), payment, 2)
    client = pctx.test_client()
    for delivery in (full, partial, full, partial):  # the full refund's event first
        assert post_event(client, *delivery).status_code == 200

    assert sorted(reversals(payment)) == [("refund", 500), ("refund", 1500)]
    assert cash(user_id) == 0  # $15.00 from the balance...
    assert system_balance(AccountKind.REFUNDS) == 500  # ...the other $5.00 a loss
    invoice = db.session.get(Invoice, invoice.id)
    assert (invoice.status, invoice.amount_paid_minor) == ("paid", 500)
    # The platform is told of the top-up once and of each refund once.
    told = db.session.scalars(select(Event).order_by(Event.id)).all()
    [paid] = [e.payload for e in told if e.name == "billing.payment.succeeded"]
    assert paid["purpose"] == "topup" and paid["amount_minor"] == 2000
    assert paid["payment_intent"] == payment
    refunds = [e.payload["amount_minor"] for e in told if e.name == "billing.payment.refunded"]
    assert sorted(refunds) == [500, 1500]
    db.session.commit()


def test_an_invoice_card_payment_refunded_in_two_parts_out_of_order_leaves_it_paid(
    pctx, make_user, receiver
):
    user_id = make_user().id
    user = db.session.get(User, user_id)
    add_card(user)
    invoice = invoice_of(user, {"web": 100}, period=OCT)
    settlement.settle(user_id)
    attempt = db.session.scalar(
        select(PaymentAttempt).where(PaymentAttempt.invoice_id == invoice.id)
    )
    payment = attempt.gateway_payment_id
    db.session.commit()

    refund(payment, 200, 300)
    partial, full = refund_events(receiver, customer_of(user_id), payment, 2)
    client = pctx.test_client()
    for delivery in (full, full, partial, full, partial):
        assert post_event(client, *delivery).status_code == 200

    assert sorted(reversals(payment)) == [("refund", 200), ("refund", 300)]
    assert system_balance(AccountKind.REFUNDS) == 500
    assert cash(user_id) == 0
    invoice = db.session.get(Invoice, invoice.id)
    assert (invoice.status, invoice.amount_paid_minor) == ("paid", 500)
    assert [(p.tender, p.amount_minor) for p in invoice.payments] == [("card", 500)]
    assert ledger.balances(db.session.get(User, user_id)).receivable.amount_minor == 0
    db.session.commit()


def test_a_refund_before_its_payment_is_recorded_waits_for_it(pctx, make_user, receiver):
    user_id = make_user().id
    customer = customer_of(user_id)
    session, payment = pay_checkout_on_sandbox(user_id, 2000)  # nobody came back yet
    refund(payment, 2000)
    wait_for_all(receiver, [("checkout.session.completed", session)])
    [refunded] = refund_events(receiver, customer, payment, 1)
    client = pctx.test_client()

    assert post_event(client, *refunded).status_code == 200
    event_id = json.loads(refunded[1])["id"]
    row = db.session.scalar(select(WebhookEvent).where(WebhookEvent.event_id == event_id))
    assert row.processed_at is None and row.attempts == 1
    assert row.error.startswith("NotYet: payment ") and payment in row.error
    assert reversals() == [] and cash(user_id) == 0

    completed = next(
        d
        for d in events_of(receiver, customer)
        if json.loads(d[1])["type"] == "checkout.session.completed"
    )
    assert post_event(client, *completed).status_code == 200
    assert cash(user_id) == 2000  # the top-up, recorded now

    result = inbox.process_event(row.id)  # the requeue job's retry
    db.session.commit()
    assert result.outcome == "handled"
    row = db.session.get(WebhookEvent, row.id)
    assert (row.attempts, row.error) == (2, None)
    assert reversals(payment) == [("refund", 2000)]
    assert cash(user_id) == 0
    assert system_balance(AccountKind.REFUNDS) == 0  # all of it came out of the balance
    assert inbox.process_event(row.id).outcome == "already"
    db.session.commit()


def test_a_disputed_payment_is_booked_once_and_told_once(pctx, make_user, receiver):
    user_id = make_user().id
    user = db.session.get(User, user_id)
    add_card(user, TEST_CARDS["disputed"])
    invoice = invoice_of(user, {"web": 100}, period=OCT)
    settlement.settle(user_id)
    attempt = db.session.scalar(
        select(PaymentAttempt).where(PaymentAttempt.invoice_id == invoice.id)
    )
    assert attempt.status == "succeeded"
    payment = attempt.gateway_payment_id
    db.session.commit()

    customer = customer_of(user_id)
    deadline = time.monotonic() + 20
    disputes = []
    while not disputes and time.monotonic() < deadline:
        disputes = [
            d
            for d in events_of(receiver, customer)
            if json.loads(d[1])["type"] == "charge.dispute.created"
        ]
        time.sleep(0.05)
    [disputed] = disputes
    client = pctx.test_client()
    for _ in range(3):
        assert post_event(client, *disputed).status_code == 200

    db.session.commit()
    [row] = db.session.scalars(select(PaymentReversal)).all()
    dispute = json.loads(disputed[1])["data"]["object"]
    assert (row.kind, row.reference, row.amount_minor, row.reason, row.user_id) == (
        "dispute",
        dispute["id"],
        500,
        "fraudulent",
        user_id,
    )
    assert row.gateway_payment_id == payment
    assert system_balance(AccountKind.DISPUTES) == 500
    told = db.session.scalars(select(Event).where(Event.name == "billing.payment.disputed")).all()
    assert len(told) == 1
    assert told[0].payload == {
        "user_id": user_id,
        "payment_intent": payment,
        "amount": "5.00",
        "amount_minor": 500,
        "currency": "USD",
        "reason": "fraudulent",
    }
    invoice = db.session.get(Invoice, invoice.id)
    assert (invoice.status, invoice.amount_paid_minor) == ("paid", 500)
    db.session.commit()


def test_refunds_and_disputes_of_payments_the_portal_did_not_make_are_left_alone(
    pctx, make_user, receiver
):
    """Another portal's customer on the same gateway account, and a payment of our own
    customer taken in the gateway's dashboard (no purpose of ours): acknowledged, handled,
    nothing booked, nothing waiting."""
    gateway = get_gateway()
    stranger = gateway.ensure_customer(987654, "stranger@example.com", "Someone Else")
    ours = customer_of(make_user().id)
    payments = []
    for customer, metadata in ((stranger, {"purpose": "topup", "user_id": "1"}), (ours, {})):
        card = save_card_at_gateway(gateway, customer, TEST_CARDS["disputed"])
        paid = gateway.create_payment_intent(
            customer,
            card,
            Money(700, "USD"),
            idempotency_key=f"elsewhere:{customer}",
            metadata=metadata,
        )
        assert paid.status.value == "succeeded"
        refund(paid.id, 200)
        payments.append((customer, paid.id))

    client = pctx.test_client()
    deliveries = []
    for customer, payment in payments:
        deliveries += refund_events(receiver, customer, payment, 1)
        deadline = time.monotonic() + 20
        disputes = []
        while not disputes and time.monotonic() < deadline:
            disputes = [
                d
                for d in events_of(receiver, customer)
                if json.loads(d[1])["type"] == "charge.dispute.created"
            ]
            time.sleep(0.05)
        deliveries += disputes
    assert len(deliveries) == 4
    for delivery in deliveries:
        assert post_event(client, *delivery).status_code == 200

    db.session.commit()
    rows = db.session.scalars(select(WebhookEvent)).all()
    assert (
        sorted((row.type, row.outcome, row.error) for row in rows)
        == [("charge.dispute.created", "handled", None)] * 2
        + [("charge.refunded", "handled", None)] * 2
    )
    assert reversals() == []
    assert system_balance(AccountKind.REFUNDS) == system_balance(AccountKind.DISPUTES) == 0
    assert (
        db.session.scalars(select(Event).where(Event.name == "billing.payment.disputed")).all()
        == []
    )
    db.session.commit()

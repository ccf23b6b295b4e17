"""Paying one invoice on the gateway's hosted checkout page (Checkout in payment mode).

For an invoice nothing else covers: the customer types a card on the gateway's page (and
may keep it for later). The payment is booked once, under the ledger key
``checkout:{payment intent}``, by whichever comes first: the customer's return to the
portal or the ``checkout.session.completed`` webhook. What the invoice no longer needs (it
was paid meanwhile by other means) goes to the prepaid balance: money received is never
dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from ...errors import Conflict, IdempotencyConflict, NotFound
from ...extensions import db
from ...gateways import CheckoutSessionInfo, GatewayError, get_gateway
from ...models import (
    AccountKind,
    CheckoutSession,
    Invoice,
    LedgerTransaction,
    PaymentTender,
    User,
    utcnow,
)
from ...money import Money
from ..invoicing import invoices
from ..wallet import ledger
from . import card_charges, cards, receipts

log = logging.getLogger(__name__)

PURPOSE = "invoice"


def amount_due(invoice: Invoice) -> Money:
    if invoice.invoice_status not in invoices.UNPAID:
        return Money(0, invoice.currency)
    return Money(invoice.total_minor - invoice.amount_paid_minor, invoice.currency)


def start(
    user: User,
    invoice_id: int,
    *,
    save_card: bool,
    success_url: str,
    cancel_url: str,
    idempotency_key: str | None = None,
) -> CheckoutSession:
    """GATEWAY CALL. Open the checkout page for what ``user``'s invoice still owes; another
    user's invoice is NotFound, a paid or void one a Conflict. ``success_url`` may hold
    ``{CHECKOUT_SESSION_ID}``."""
    invoice = invoices.get_for_owner(user, invoice_id)
    due = amount_due(invoice)
    if due.amount_minor <= 0:
        raise Conflict(
            f"Invoice {invoice.number} is {invoice.invoice_status.label}: nothing to pay."
        )
    metadata = {
        "purpose": PURPOSE,
        "user_id": str(user.id),
        "invoice_id": str(invoice.id),
        "save_card": "1" if save_card else "0",
    }
    try:
        session = get_gateway().create_checkout_session(
            cards.customer_id(user),
            due,
            success_url=success_url,
            cancel_url=cancel_url,
            description=f"Invoice {invoice.number}",
            metadata=metadata,
            save_card=save_card,
            idempotency_key=(
                f"invoice-checkout:{invoice.id}:{idempotency_key}" if idempotency_key else None
            ),
        )
    except GatewayError as exc:
        if exc.code == "idempotency_error":
            raise IdempotencyConflict(
                "this payment was already started with other details"
            ) from None
        raise
    return cards.record_checkout_page(user, session.id, session.url, purpose=PURPOSE, amount=due)


@dataclass(frozen=True)
class Paid:
    session: CheckoutSession
    invoice: Invoice | None
    paid: bool  # the gateway took the money and it is booked
    card: str | None = None  # the card's label ("Visa •••• 4242")
    saved: cards.Saved | None = None  # the card kept for later, when asked


def ledger_key(payment_intent: str) -> str:
    return f"checkout:{payment_intent}"


def finish(info: CheckoutSessionInfo, *, user: User | None = None) -> Paid:
    """Record a checkout session the gateway reports (its webhook, or the customer back on
    our page: ``user``, whose session it must be). A paid one is booked once."""
    row = db.session.scalar(
        select(CheckoutSession).where(CheckoutSession.gateway_session_id == info.id)
    )
    if row is None or row.purpose != PURPOSE or (user is not None and row.user_id != user.id):
        raise NotFound("no such checkout")
    owner = db.session.get_one(User, row.user_id)
    invoice_id = (info.metadata or {}).get("invoice_id", "")
    invoice = (
        db.session.scalar(
            select(Invoice).where(Invoice.id == int(invoice_id), Invoice.user_id == owner.id)
        )
        if invoice_id.isdigit()
        else None
    )
    if invoice is None:
        raise NotFound("no such invoice")
    paid = info.status == "complete" and info.payment_status == "paid"
    if not (paid and info.payment_intent and info.amount_total):
        return Paid(row, invoice, False)
    payment = get_gateway().retrieve_payment_intent(info.payment_intent)
    card_info = (
        get_gateway().get_payment_method(payment.payment_method) if payment.payment_method else None
    )
    label = f"{card_info.brand.title()} •••• {card_info.last4}" if card_info else "Card"
    _book(owner, invoice, info.amount_total, info.payment_intent, label)
    saved = None
    if card_info is not None and (info.metadata or {}).get("save_card") == "1":
        saved = cards.save_card(owner, card_info)
    if row.status != "complete":
        row.status, row.completed_at = "complete", utcnow()
    db.session.flush()
    return Paid(row, invoice, True, label, saved)


def _book(user: User, invoice: Invoice, amount: Money, payment_intent: str, label: str) -> None:
    """Book the payment once: the user's settlement lock first (settlement's order), then
    the invoice. The ledger key is the database's guard: a second booking finds it."""
    ledger.lock_accounts([ledger.user_account(user, AccountKind.RECEIVABLE)])
    key = ledger_key(payment_intent)
    if db.session.scalar(
        select(LedgerTransaction.id).where(LedgerTransaction.idempotency_key == key)
    ):
        return
    invoice = invoices.lock_invoice(invoice)
    pay, excess, legs = card_charges.card_payment_legs(user, invoice, amount)
    txn = ledger.post_transaction(
        idempotency_key=key,
        kind="checkout_payment",
        user_id=user.id,
        description=f"{label} paid {invoice.number} (checkout)",
        legs=legs,
    )
    if pay:
        invoices.record_payment(
            invoice,
            tender=PaymentTender.CARD,
            amount=Money(pay, amount.currency),
            txn_id=txn.id,
            reference=f"{label} {payment_intent}",
        )
    receipts.card_payment(
        user, amount=amount, card=label, invoice=invoice, reference=payment_intent
    )
    log.info(
        "invoice %s (%s) of user %s: checkout payment %s paid %s (%s to the prepaid balance)",
        invoice.id,
        invoice.number,
        user.id,
        payment_intent,
        Money(pay, amount.currency),
        Money(excess, amount.currency),
    )


def return_from_checkout(user: User, gateway_session_id: str) -> Paid:
    """GATEWAY CALL. The customer is back from the checkout page."""
    row = db.session.scalar(
        select(CheckoutSession).where(
            CheckoutSession.gateway_session_id == gateway_session_id,
            CheckoutSession.user_id == user.id,
            CheckoutSession.purpose == PURPOSE,
        )
    )
    if row is None:
        raise NotFound("no such checkout")
    return finish(get_gateway().retrieve_checkout_session(gateway_session_id), user=user)

"""Prepaid balance top-ups: through the gateway's hosted checkout page, or a saved card.

Money lands in the cash wallet once, when the gateway confirms the payment (its webhook, or
the customer's return from the checkout page, whichever is first): the payment's id is the
ledger idempotency key. Pending invoices are settled afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from sqlalchemy import select

from ...errors import IdempotencyConflict, NotFound, ValidationFailed
from ...extensions import db
from ...gateways import CheckoutSessionInfo, GatewayError, get_gateway
from ...models import AccountKind, CheckoutSession, Invoice, LedgerTransaction, User, utcnow
from ...money import Money
from .. import events
from ..wallet import ledger, settlement_requests
from . import cards, receipts

TOPUP = "topup"
INVOICE = "subscription"  # a plan change's invoice, paid on the checkout page


def credit_top_up(
    user: User,
    amount: Money,
    *,
    reference: str,
    description: str = "Top-up",
    card: str | None = None,
) -> int:
    """Credit the cash wallet for a confirmed payment ``reference``; the same reference
    twice credits once, and mails one receipt (``card``: the card's label, when known).
    Returns the ledger transaction id."""
    if amount.amount_minor <= 0:
        raise ValidationFailed.field("amount", "must be greater than 0")
    if amount.currency != user.currency:
        raise ValidationFailed.field("amount", f"must be in {user.currency}")
    key = f"topup:{reference}"
    new = not db.session.scalar(
        select(LedgerTransaction.id).where(LedgerTransaction.idempotency_key == key)
    )
    txn = ledger.post_transaction(
        idempotency_key=key,
        kind="topup",
        user_id=user.id,
        description=description,
        legs=[
            (
                ledger.system_account(AccountKind.STRIPE_CLEARING, amount.currency),
                -amount.amount_minor,
            ),
            (ledger.user_account(user, AccountKind.CASH), amount.amount_minor),
        ],
    )
    events.record(
        "billing.payment.succeeded",
        f"payment:{reference}",
        {
            "user_id": user.id,
            "invoice_id": None,
            "payment_intent": reference,
            "amount": str(amount.amount),
            "amount_minor": amount.amount_minor,
            "currency": amount.currency,
            "purpose": "topup",
        },
        user.id,
    )
    if new:
        receipts.top_up(user, amount=amount, card=card, reference=reference)
    settlement_requests.request_settlement(user.id)
    settlement_requests.request_restore(user.id)
    return txn.id


def check_amount(user: User, amount: Money) -> None:
    """A top-up is in the user's currency, between TOPUP_MIN and TOPUP_MAX."""
    low = Money.from_decimal(
        str(current_app.config.get("TOPUP_MIN", "1")), user.currency, exact=False
    )
    high = Money.from_decimal(
        str(current_app.config.get("TOPUP_MAX", "10000")), user.currency, exact=False
    )
    if amount.currency != user.currency:
        raise ValidationFailed.field("amount", f"must be in {user.currency}")
    if amount.amount_minor < low.amount_minor:
        raise ValidationFailed.field("amount", f"must be at least {low}")
    if amount.amount_minor > high.amount_minor:
        raise ValidationFailed.field("amount", f"must be at most {high}")


def start_checkout(
    user: User,
    amount: Money,
    *,
    success_url: str,
    cancel_url: str,
    idempotency_key: str | None = None,
) -> CheckoutSession:
    """Open the gateway's checkout page for a top-up of ``amount`` (GATEWAY CALL).
    ``success_url`` may hold ``{CHECKOUT_SESSION_ID}``; with an ``idempotency_key`` a repeat
    returns the same page."""
    check_amount(user, amount)
    try:
        session = get_gateway().create_checkout_session(
            cards.customer_id(user),
            amount,
            success_url=success_url,
            cancel_url=cancel_url,
            description="Prepaid balance top-up",
            metadata={"purpose": "topup", "user_id": str(user.id)},
            idempotency_key=f"checkout:{user.id}:{idempotency_key}" if idempotency_key else None,
        )
    except GatewayError as exc:
        if exc.code == "idempotency_error":  # the same key, other details
            raise IdempotencyConflict(
                "this top-up was already requested with other details "
                "(another amount) under the same key"
            ) from None
        raise
    return cards.record_checkout_page(user, session.id, session.url, purpose=TOPUP, amount=amount)


def start_invoice_checkout(
    user: User, invoice: Invoice, *, success_url: str, cancel_url: str
) -> CheckoutSession:
    """Open the gateway's checkout page for what is due on a plan change's invoice (GATEWAY
    CALL); asked again for the same amount due, the same page."""
    due = Money(invoice.total_minor - invoice.amount_paid_minor, invoice.currency)
    if due.amount_minor <= 0:
        raise ValidationFailed("nothing is due on this invoice")
    session = get_gateway().create_checkout_session(
        cards.customer_id(user),
        due,
        success_url=success_url,
        cancel_url=cancel_url,
        description=f"Invoice {invoice.number}",
        metadata={"purpose": INVOICE, "user_id": str(user.id), "invoice_id": str(invoice.id)},
        idempotency_key=f"checkout:{user.id}:invoice:{invoice.id}:{due.amount_minor}",
    )
    return cards.record_checkout_page(user, session.id, session.url, purpose=INVOICE, amount=due)


@dataclass(frozen=True)
class CheckoutOutcome:
    session: CheckoutSession
    credited: bool  # the money is in the balance


def finish_checkout(info: CheckoutSessionInfo, *, user: User | None = None) -> CheckoutOutcome:
    """Record a checkout session the gateway reports: a paid top-up is credited (once).
    ``user``: the customer back on our page; the session must be theirs."""
    row = db.session.scalar(
        select(CheckoutSession).where(CheckoutSession.gateway_session_id == info.id)
    )
    if row is None or (user is not None and row.user_id != user.id):
        raise NotFound("no such checkout")
    paid = info.status == "complete" and info.payment_status == "paid"
    pays = row.purpose in (TOPUP, INVOICE)
    if pays and paid and info.payment_intent and info.amount_total:
        owner = db.session.get_one(User, row.user_id)
        # An invoice's checkout lands in the prepaid balance too, and settlement pays the
        # invoice from it: money received is booked once, whatever happens to the invoice.
        credit_top_up(
            owner,
            info.amount_total,
            reference=info.payment_intent,
            description="Top-up by card (checkout)"
            if row.purpose == TOPUP
            else "Card payment (checkout) for a plan change",
        )
    if info.status == "complete" and row.status != "complete":
        row.status, row.completed_at = "complete", utcnow()
    db.session.flush()
    return CheckoutOutcome(row, paid and pays)


def mark_complete(gateway_session_id: str) -> None:
    """The gateway reports a hosted page completed (an "add a card" page: the card itself
    is saved by cards)."""
    row = db.session.scalar(
        select(CheckoutSession).where(CheckoutSession.gateway_session_id == gateway_session_id)
    )
    if row is not None and row.status != "complete":
        row.status, row.completed_at = "complete", utcnow()
        db.session.flush()


def return_from_checkout(user: User, gateway_session_id: str) -> CheckoutOutcome:
    """GATEWAY CALL. The customer is back from the checkout page."""
    cards.checkout_for_owner(user, gateway_session_id)
    return finish_checkout(get_gateway().retrieve_checkout_session(gateway_session_id), user=user)

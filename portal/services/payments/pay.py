"""What a user starts from a page or the API: Pay now on an invoice, and a top-up.

Each returns one outcome value that the invoice page, the Wallet page and the JSON API all
render, so the decision (paid? waiting for 3-D Secure? declined?) is made here once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from sqlalchemy import select

from ...errors import ValidationFailed
from ...extensions import db
from ...models import AttemptStatus, Invoice, PaymentAttempt, User
from ...money import Money
from ..invoicing import invoices
from . import card_charges, outcomes, settlement, topups


class Outcome(enum.StrEnum):
    """How Pay now ended (the API's ``payment_outcome``)."""

    PAID = "paid"
    REQUIRES_ACTION = "requires_action"  # a card payment waits for 3-D Secure
    PROCESSING = "processing"  # a card charge is not answered yet
    FAILED = "failed"  # every card was declined
    PARTIAL = "partial"  # some of it is paid, the rest is due
    UNPAID = "unpaid"  # nothing could pay any of it
    NOTHING_TO_PAY = "nothing_to_pay"  # the invoice was not unpaid to begin with


@dataclass(frozen=True)
class PayOutcome:
    kind: Outcome
    invoice: Invoice
    action_url: str | None = None  # requires_action: the page with "Complete payment"
    card: str | None = None  # failed: the last card declined
    reason: str | None = None  # failed: what its bank said


def pay_invoice(user: User, invoice_id: int, *, now: datetime | None = None) -> PayOutcome:
    """Pay now (COMMITS, may call the gateway): credits, vouchers, prepaid balance, then the
    cards, as the preview showed. Another user's invoice is NotFound."""
    invoice = invoices.get_for_owner(user, invoice_id)
    if invoice.invoice_status not in invoices.UNPAID:
        return PayOutcome(Outcome.NOTHING_TO_PAY, invoice)
    result = settlement.settle(user.id, invoice_id=invoice_id, now=now)
    invoice = invoices.get_for_owner(user, invoice_id)
    if invoice.invoice_status is invoices.S.PAID:
        return PayOutcome(Outcome.PAID, invoice)
    waiting = card_charges.open_attempt_for(user, invoice)
    if invoice_id in result.needs_action or (
        waiting is not None and waiting.status == AttemptStatus.REQUIRES_ACTION
    ):
        url = f"{current_app.config['PUBLIC_URL']}/invoices/{invoice.id}"
        return PayOutcome(Outcome.REQUIRES_ACTION, invoice, action_url=url)
    if waiting is not None:
        return PayOutcome(Outcome.PROCESSING, invoice)
    if invoice_id in result.failed:
        declined = _last_declined(invoice)
        return PayOutcome(
            Outcome.FAILED,
            invoice,
            card=declined.payment_method.label if declined else None,
            reason=outcomes.decline_reason(declined.decline_code, declined.message)
            if declined
            else None,
        )
    return PayOutcome(Outcome.PARTIAL if invoice.amount_paid_minor else Outcome.UNPAID, invoice)


def _last_declined(invoice: Invoice) -> PaymentAttempt | None:
    return db.session.scalar(
        select(PaymentAttempt)
        .where(
            PaymentAttempt.invoice_id == invoice.id,
            PaymentAttempt.status == AttemptStatus.FAILED.value,
        )
        .order_by(PaymentAttempt.id.desc())
        .limit(1)
    )


# -- top-ups -----------------------------------------------------------------------------------
CHECKOUT = "checkout"  # the gateway's hosted checkout page; a saved card is "card:<id>"


@dataclass(frozen=True)
class TopUpStarted:
    redirect_url: str | None  # the checkout page or the bank's 3-D Secure page
    attempt: PaymentAttempt | None = None  # a saved card's charge, answered or not


def top_up(
    user: User,
    amount: Money,
    *,
    method: str,
    nonce: str,
    success_url: str,
    cancel_url: str,
    return_url: str,
) -> TopUpStarted:
    """Add ``amount`` to the prepaid balance by ``method`` (GATEWAY CALLS; COMMITS before
    the customer is sent to a hosted page): ``checkout`` opens the checkout page, and
    ``card:<id>`` charges that saved card. ``nonce`` names the form submission: sent
    twice, it is charged once."""
    if method == CHECKOUT:
        session = topups.start_checkout(
            user, amount, success_url=success_url, cancel_url=cancel_url, idempotency_key=nonce
        )
        # The session row must exist before the customer reaches the page it names.
        db.session.commit()
        return TopUpStarted(session.url)
    card_id = method.removeprefix("card:")
    if card_id == method or not card_id.isascii() or not card_id.isdigit():
        raise ValidationFailed.field("method", "must be checkout or a saved card")
    attempt, url = card_charges.top_up_with_card(
        user, int(card_id), amount, nonce=nonce, return_url=return_url
    )
    return TopUpStarted(url, attempt)

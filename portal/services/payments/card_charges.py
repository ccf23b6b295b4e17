"""Card charges: one attempt row per charge, committed before the gateway is called.

The attempt's idempotency key (``inv:{invoice}:att:{n}:{token}``, ``topup:{user}:{nonce}``) goes
with the request and into the payment's metadata, so:

- the same request sent again is answered with the same payment, never a second charge;
- an answer lost to a timeout or a crash is found again by that key (``recover``), never by
  charging again;
- the gateway's webhook for the payment finds its attempt even when no answer was recorded.

The random token makes the key the attempt's own: the gateway keeps keys for a day per
account, and another database on the same account (a restored backup, a test run, staging)
has its own invoice 1, attempt 1.

The money is booked once per attempt (ledger key ``card:{idempotency key}``) by whichever
sees the success first: the answer, a webhook, the customer's return from 3-D Secure, or
recovery. A success that arrives after the invoice was paid otherwise goes to the prepaid
balance: money received is never dropped.

Functions that call the gateway are marked; they expect no write transaction to be open
(the caller commits first) and leave the session clean for the caller to commit.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ...errors import IdempotencyConflict, NotFound
from ...extensions import db
from ...gateways import GatewayError, PaymentResult, PaymentStatus, get_gateway
from ...models import (
    OPEN_ATTEMPT_STATUSES,
    AccountKind,
    AttemptPurpose,
    AttemptStatus,
    Invoice,
    InvoiceStatus,
    LedgerAccount,
    LedgerTransaction,
    PaymentAttempt,
    PaymentMethod,
    PaymentTender,
    User,
    utcnow,
)
from ...money import Money
from .. import events, mail
from ..invoicing import invoices
from ..wallet import ledger
from . import cards, receipts, topups

log = logging.getLogger(__name__)

ACTION_EXPIRES = timedelta(days=7)  # an unauthenticated charge stops blocking retries


def stale_after() -> timedelta:
    """How long an unanswered attempt may still be in flight: well over the gateway timeout,
    so recovery never races a live request."""
    return timedelta(seconds=int(current_app.config.get("PAYMENT_ATTEMPT_STALE_SECONDS") or 300))


# -- attempts --------------------------------------------------------------------------------
def open_invoice_attempt(
    invoice: Invoice, card: PaymentMethod, amount: Money
) -> PaymentAttempt | None:
    """A new attempt to charge ``card`` for part of ``invoice``; None when another charge of
    this invoice is in flight (the database allows one)."""
    number = (
        db.session.scalar(
            select(func.max(PaymentAttempt.number)).where(PaymentAttempt.invoice_id == invoice.id)
        )
        or 0
    ) + 1
    attempt = PaymentAttempt(
        user_id=invoice.user_id,
        invoice_id=invoice.id,
        payment_method_id=card.id,
        purpose=AttemptPurpose.INVOICE.value,
        number=number,
        amount_minor=amount.amount_minor,
        currency=amount.currency,
        idempotency_key=f"inv:{invoice.id}:att:{number}:{uuid.uuid4().hex[:12]}",
        status=AttemptStatus.PENDING.value,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    try:
        with db.session.begin_nested():
            db.session.add(attempt)
            db.session.flush()
    except IntegrityError:
        return None
    return attempt


def open_topup_attempt(
    user: User, card: PaymentMethod, amount: Money, nonce: str
) -> PaymentAttempt:
    """The attempt for one top-up form submission (``nonce``): submitted twice, it is the
    same attempt, so the card is charged once."""
    key = f"topup:{user.id}:{nonce}"
    existing = db.session.scalar(
        select(PaymentAttempt).where(PaymentAttempt.idempotency_key == key)
    )
    if existing is None:
        attempt = PaymentAttempt(
            user_id=user.id,
            invoice_id=None,
            payment_method_id=card.id,
            purpose=AttemptPurpose.TOPUP.value,
            number=1,
            amount_minor=amount.amount_minor,
            currency=amount.currency,
            idempotency_key=key,
            status=AttemptStatus.PENDING.value,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        try:
            with db.session.begin_nested():
                db.session.add(attempt)
                db.session.flush()
            return attempt
        except IntegrityError:  # the same submission, inserted a moment ago
            existing = db.session.scalars(
                select(PaymentAttempt).where(PaymentAttempt.idempotency_key == key)
            ).one()
    if (
        existing.user_id != user.id
        or existing.amount_minor != amount.amount_minor
        or existing.payment_method_id != card.id
    ):
        raise IdempotencyConflict("this top-up was already submitted with other details")
    return existing


def _metadata(attempt: PaymentAttempt) -> dict[str, str]:
    data = {
        "purpose": attempt.purpose,
        "attempt_id": str(attempt.id),
        "user_id": str(attempt.user_id),
    }
    if attempt.invoice_id:
        data["invoice_id"] = str(attempt.invoice_id)
    return data


def charge(attempt_id: int) -> PaymentResult | None:
    """GATEWAY CALL. Charge a committed attempt; None when the outcome is unknown (it stays
    pending until ``recover`` looks it up). A refusal that is not a decline (a card removed
    at the gateway, an invalid request) is a failed result."""
    attempt = db.session.get_one(PaymentAttempt, attempt_id)
    user = db.session.get_one(User, attempt.user_id)
    customer = cards.customer_id(user)
    key, pm, amount = attempt.idempotency_key, attempt.payment_method.gateway_id, attempt.amount
    metadata = _metadata(attempt)
    card_id = attempt.payment_method_id
    db.session.commit()  # nothing held while the gateway answers
    log.info("attempt %s (%s): charging card %s for %s", attempt_id, key, card_id, amount)
    try:
        return get_gateway().create_payment_intent(
            customer, pm, amount, idempotency_key=key, metadata=metadata
        )
    except GatewayError as exc:
        if exc.outcome_unknown:
            log.warning("attempt %s (%s): %s; recovery will look it up", attempt_id, key, exc)
            return None
        return PaymentResult(
            id=None,
            status=PaymentStatus.FAILED,
            decline_code=exc.code or "gateway_error",
            message=exc.message,
        )


def _lock(attempt_id: int) -> PaymentAttempt:
    """The attempt, locked in settlement's order: the user's settlement lock (their
    receivable account) first, then the attempt; the invoice and the wallets after. (A
    booking that took the invoice first and the user's accounts after deadlocked with a
    settlement run.)"""
    user_id = db.session.execute(
        select(PaymentAttempt.user_id).where(PaymentAttempt.id == attempt_id)
    ).scalar_one()
    ledger.lock_accounts([ledger.user_account(user_id, AccountKind.RECEIVABLE)])
    # of=: the card is joined in eagerly, and PostgreSQL locks no outer join's nullable side
    return db.session.scalars(
        select(PaymentAttempt)
        .where(PaymentAttempt.id == attempt_id)
        .with_for_update(of=PaymentAttempt)
        .execution_options(populate_existing=True)
    ).one()


def apply_result(attempt_id: int, result: PaymentResult) -> PaymentAttempt:
    """Record what the gateway says about an attempt's payment. Legal moves only: a
    succeeded attempt never changes again; a success is booked exactly once."""
    attempt = _lock(attempt_id)
    if attempt.status == AttemptStatus.SUCCEEDED:
        return attempt
    if result.id and not attempt.gateway_payment_id:
        attempt.gateway_payment_id = result.id
    before = AttemptStatus(attempt.status)
    status = result.status
    if status is PaymentStatus.SUCCEEDED:
        paid = result.amount or attempt.amount
        _book_success(attempt, paid)
        if attempt.purpose == AttemptPurpose.INVOICE:  # a top-up is told by credit_top_up
            reference = attempt.gateway_payment_id or attempt.idempotency_key
            events.record(
                "billing.payment.succeeded",
                f"payment:{reference}",
                {
                    "user_id": attempt.user_id,
                    "invoice_id": attempt.invoice_id,
                    "payment_intent": reference,
                    "amount": str(paid.amount),
                    "amount_minor": paid.amount_minor,
                    "currency": paid.currency,
                    "purpose": "invoice",
                },
                attempt.user_id,
            )
        attempt.status = AttemptStatus.SUCCEEDED.value
        attempt.decline_code = attempt.message = None
    elif status is PaymentStatus.REQUIRES_ACTION:
        if before in OPEN_ATTEMPT_STATUSES:
            attempt.status = AttemptStatus.REQUIRES_ACTION.value
            attempt.decline_code, attempt.message = result.decline_code, result.message
            if (
                before is not AttemptStatus.REQUIRES_ACTION
                and attempt.purpose == AttemptPurpose.INVOICE
            ):
                _ask_for_authentication(attempt)
    elif status is PaymentStatus.PROCESSING:
        if before is AttemptStatus.PENDING:
            attempt.status = AttemptStatus.PROCESSING.value
    elif before in OPEN_ATTEMPT_STATUSES:  # failed
        attempt.status = AttemptStatus.FAILED.value
        attempt.decline_code = result.decline_code or "declined"
        attempt.message = result.message
    attempt.updated_at = utcnow()
    db.session.flush()
    after = AttemptStatus(attempt.status)
    log.log(
        logging.WARNING if after is AttemptStatus.FAILED else logging.INFO,
        "attempt %s (%s, %s of %s): the gateway says %s; attempt %s -> %s%s",
        attempt.id,
        attempt.idempotency_key,
        f"invoice {attempt.invoice_id}" if attempt.invoice_id else "top-up",
        attempt.amount,
        status.value,
        before.value,
        after.value,
        f", decline code {attempt.decline_code}" if attempt.decline_code else "",
    )
    return attempt


def _book_success(attempt: PaymentAttempt, amount: Money) -> None:
    user = db.session.get_one(User, attempt.user_id)
    card = attempt.payment_method
    if attempt.purpose == AttemptPurpose.TOPUP:
        topups.credit_top_up(
            user,
            amount,
            reference=attempt.gateway_payment_id or attempt.idempotency_key,
            description=f"Top-up by {card.label}",
            card=card.label,
        )
        return
    invoice = invoices.lock_invoice(db.session.get_one(Invoice, attempt.invoice_id))
    pay, excess, legs = card_payment_legs(user, invoice, amount)
    if excess:
        log.info(
            "attempt %s: %s more than invoice %s needed went to the prepaid balance",
            attempt.id,
            Money(excess, amount.currency),
            invoice.id,
        )
    key = f"card:{attempt.idempotency_key}"
    new = not db.session.scalar(
        select(LedgerTransaction.id).where(LedgerTransaction.idempotency_key == key)
    )
    txn = ledger.post_transaction(
        idempotency_key=key,
        kind="card_payment",
        user_id=user.id,
        description=f"{card.label} paid {invoice.number}",
        legs=legs,
    )
    if new:
        receipts.card_payment(
            user,
            amount=amount,
            card=card.label,
            invoice=invoice,
            reference=attempt.gateway_payment_id or attempt.idempotency_key,
        )
    if pay:
        invoices.record_payment(
            invoice,
            tender=PaymentTender.CARD,
            amount=Money(pay, amount.currency),
            txn_id=txn.id,
            reference=f"{card.label} {attempt.gateway_payment_id or ''}",
        )
    log.info(
        "settlement: invoice %s (%s) of user %s: card paid %s (attempt %s, ledger transaction %s)",
        invoice.id,
        invoice.number,
        user.id,
        Money(pay, amount.currency),
        attempt.id,
        txn.id,
    )


def _ask_for_authentication(attempt: PaymentAttempt) -> None:
    user = db.session.get_one(User, attempt.user_id)
    invoice = db.session.get_one(Invoice, attempt.invoice_id)
    link = f"{current_app.config['PUBLIC_URL']}/invoices/{invoice.id}"
    mail.queue_email(
        to=user.email,
        subject=f"Confirm your payment for invoice {invoice.number}",
        template="payment_action_required",
        user_id=user.id,
        invoice=invoice,
        attempt=attempt,
        link=link,
    )


def payment_failed(
    invoice: Invoice, attempts: list[PaymentAttempt], *, subject: str | None = None
) -> None:
    """No tender could pay the invoice: the platform is told and the user is emailed.
    ``subject`` names the failure (the event is recorded once per subject): by default the
    round's last attempt, so each failed round of card charges is told."""
    user = db.session.get_one(User, invoice.user_id)
    subject = subject or f"invoice:{invoice.id}:attempt:{attempts[-1].id}"
    due = Money(invoice.total_minor - invoice.amount_paid_minor, invoice.currency)
    events.record(
        "billing.payment.failed",
        subject,
        {
            "invoice_id": invoice.id,
            "invoice_number": invoice.number,
            "user_id": user.id,
            "amount_due": str(due.amount),
            "amount_due_minor": due.amount_minor,
            "currency": due.currency,
            "attempts": [
                {"card": a.payment_method.label, "decline_code": a.decline_code} for a in attempts
            ],
        },
        user.id,
    )
    link = f"{current_app.config['PUBLIC_URL']}/invoices/{invoice.id}"
    # One mail per invoice per day whatever the number of failed rounds (Pay now pressed
    # again and again, each new card, the nightly run): the outbox's UNIQUE key keeps it so.
    mail.queue_email(
        to=user.email,
        subject=f"We could not collect payment for {invoice.number}",
        template="payment_failed",
        user_id=user.id,
        dedupe_key=f"payment-failed:{invoice.id}:{utcnow().date().isoformat()}",
        invoice=invoice,
        due=due,
        attempts=attempts,
        link=link,
    )


# -- the customer completes a payment (3-D Secure) ---------------------------------------------
def open_attempt_for(user: User, invoice: Invoice) -> PaymentAttempt | None:
    return db.session.scalar(
        select(PaymentAttempt).where(
            PaymentAttempt.invoice_id == invoice.id,
            PaymentAttempt.user_id == user.id,
            PaymentAttempt.status.in_([str(s) for s in OPEN_ATTEMPT_STATUSES]),
        )
    )


def start_authentication(user: User, attempt: PaymentAttempt, return_url: str) -> str | None:
    """GATEWAY CALL. Confirm a charge that needs the customer; returns the page to send them
    to, or None when it was settled without one (the result is applied)."""
    if attempt.user_id != user.id or attempt.status != AttemptStatus.REQUIRES_ACTION:
        raise NotFound("no payment waits for you to confirm it")
    if attempt.purpose == AttemptPurpose.INVOICE:
        invoice = db.session.get_one(Invoice, attempt.invoice_id)
        if InvoiceStatus(invoice.status) not in invoices.UNPAID:
            # Paid meanwhile by other means (a top-up, a voucher): the waiting charge is
            # not needed any more, and is never confirmed.
            attempt = _lock(attempt.id)
            if attempt.status == AttemptStatus.REQUIRES_ACTION:
                attempt.status = AttemptStatus.FAILED.value
                attempt.decline_code = "not_needed"
                attempt.message = f"Invoice {invoice.number} was paid by other means."
                attempt.updated_at = utcnow()
            db.session.flush()
            return None
    pi, pm = attempt.gateway_payment_id, attempt.payment_method.gateway_id
    if pi is None:  # the gateway never answered with a payment: nothing to confirm
        raise NotFound("no payment waits for you to confirm it")
    key = f"{attempt.idempotency_key}:confirm:{uuid.uuid4().hex[:12]}"
    attempt_id = attempt.id
    db.session.commit()
    result = get_gateway().confirm_payment_intent(
        pi, payment_method=pm, return_url=return_url, idempotency_key=key
    )
    if result.status is PaymentStatus.REQUIRES_ACTION and result.next_action_url:
        return result.next_action_url
    apply_result(attempt_id, result)
    return None


def get_for_owner(user: User, payment_intent: str) -> PaymentAttempt:
    """The one owner-scoped card payment lookup, by the gateway's payment id: ``user``'s
    attempt; another user's is NotFound, as if it did not exist."""
    attempt = db.session.scalar(
        select(PaymentAttempt).where(
            PaymentAttempt.gateway_payment_id == payment_intent, PaymentAttempt.user_id == user.id
        )
    )
    if attempt is None:
        raise NotFound("no such payment")
    return attempt


def refresh(user: User, payment_intent: str) -> PaymentAttempt:
    """GATEWAY CALL. The customer is back from the gateway's page: take the payment's state
    now (the webhook may not have arrived yet)."""
    attempt_id = get_for_owner(user, payment_intent).id
    db.session.commit()
    return apply_result(attempt_id, get_gateway().retrieve_payment_intent(payment_intent))


# -- the gateway's word, and recovery ----------------------------------------------------------
def attempt_for_payment(result: PaymentResult) -> PaymentAttempt | None:
    """The attempt a gateway payment belongs to: by its id, else by the idempotency key it
    carries in its metadata (an attempt whose answer was never recorded)."""
    if result.id:
        found = db.session.scalar(
            select(PaymentAttempt).where(PaymentAttempt.gateway_payment_id == result.id)
        )
        if found is not None:
            return found
    key = result.metadata.get("idempotency_key")
    if key:
        return db.session.scalar(
            select(PaymentAttempt).where(PaymentAttempt.idempotency_key == key)
        )
    return None


def _look_up(attempt: PaymentAttempt) -> PaymentResult | None:
    gateway = get_gateway()
    if attempt.gateway_payment_id:
        return gateway.retrieve_payment_intent(attempt.gateway_payment_id)
    customer = cards.customer_id(db.session.get_one(User, attempt.user_id))
    return gateway.find_payment_intent_by_idempotency_key(customer, attempt.idempotency_key)


def recover(*, user_id: int | None = None, now: datetime | None = None) -> int:
    """GATEWAY CALLS; commits per attempt. Resolve attempts whose answer was never recorded
    (a timeout, a crash between the attempt row and the answer): the payment is looked up
    by the attempt's key and recorded; one the gateway never saw is failed, so the next
    settlement makes a new attempt. Charges waiting on 3-D Secure for longer than
    ACTION_EXPIRES stop blocking retries. Returns how many attempts were resolved."""
    now = now or utcnow()
    stale = now - stale_after()
    query = select(PaymentAttempt.id).where(
        (
            (
                PaymentAttempt.status.in_(
                    [AttemptStatus.PENDING.value, AttemptStatus.PROCESSING.value]
                )
            )
            & (PaymentAttempt.updated_at < stale)
        )
        | (
            (PaymentAttempt.status == AttemptStatus.REQUIRES_ACTION.value)
            & (PaymentAttempt.updated_at < now - ACTION_EXPIRES)
        )
    )
    if user_id is not None:
        query = query.where(PaymentAttempt.user_id == user_id)
    ids = list(db.session.scalars(query.order_by(PaymentAttempt.id)))
    db.session.commit()
    resolved = 0
    for attempt_id in ids:
        attempt = db.session.get_one(PaymentAttempt, attempt_id)
        waited_too_long = attempt.status == AttemptStatus.REQUIRES_ACTION
        try:
            result = _look_up(attempt)
        except GatewayError as exc:
            log.warning("recovery of attempt %s: %s", attempt_id, exc)
            db.session.rollback()
            continue
        if result is None:
            attempt = _lock(attempt_id)
            if attempt.status == AttemptStatus.PENDING:
                attempt.status = AttemptStatus.FAILED.value
                attempt.decline_code = "not_sent"
                attempt.message = "The charge never reached the card processor."
                attempt.updated_at = utcnow()
                log.warning(
                    "attempt %s (%s): the card processor never saw it; failed as not sent",
                    attempt.id,
                    attempt.idempotency_key,
                )
        else:
            attempt = apply_result(attempt_id, result)
            if waited_too_long and attempt.status == AttemptStatus.REQUIRES_ACTION:
                attempt.status = AttemptStatus.FAILED.value
                attempt.decline_code = "authentication_not_completed"
                attempt.updated_at = utcnow()
        db.session.commit()
        resolved += 1
    return resolved


# -- a top-up charged to a saved card ----------------------------------------------------------
def top_up_with_card(
    user: User, card_id: int, amount: Money, *, nonce: str, return_url: str
) -> tuple[PaymentAttempt, str | None]:
    """GATEWAY CALLS; commits. Charge a saved card to add ``amount`` to the prepaid balance.
    ``nonce`` identifies the form submission (twice submitted, charged once). Returns the
    attempt and, when the bank wants the customer to confirm, the page to send them to."""
    topups.check_amount(user, amount)
    card = cards.get_for_owner(user, card_id)
    attempt = open_topup_attempt(user, card, amount, nonce)
    attempt_id = attempt.id
    db.session.commit()
    if attempt.status == AttemptStatus.PENDING:
        answer = charge(attempt_id)
        if answer is None:
            return db.session.get_one(PaymentAttempt, attempt_id), None
        attempt = apply_result(attempt_id, answer)
        db.session.commit()
    if attempt.status == AttemptStatus.REQUIRES_ACTION:
        url = start_authentication(user, attempt, return_url)
        db.session.commit()
        return db.session.get_one(PaymentAttempt, attempt_id), url
    return attempt, None


def card_payment_legs(
    user: User, invoice: Invoice, amount: Money
) -> tuple[int, int, list[tuple[LedgerAccount, int]]]:
    """The ledger legs of card money taken for a locked ``invoice``: what it still owes is
    paid, the rest (paid meanwhile by other means) waits in the prepaid balance. Returns
    (paid, excess, legs)."""
    due = (
        invoice.total_minor - invoice.amount_paid_minor
        if InvoiceStatus(invoice.status) in invoices.UNPAID
        else 0
    )
    pay = min(amount.amount_minor, due)
    excess = amount.amount_minor - pay
    legs = [
        (ledger.system_account(AccountKind.STRIPE_CLEARING, amount.currency), -amount.amount_minor)
    ]
    if pay:
        legs.append((ledger.user_account(user, AccountKind.RECEIVABLE), pay))
    if excess:  # paid meanwhile by other means: the money waits in the prepaid balance
        legs.append((ledger.user_account(user, AccountKind.CASH), excess))
    return pay, excess, legs

"""What each gateway event does. Handlers run in the webhook job (see webhooks).

Each handler reads the object's state now from the gateway rather than trusting the event's
body: an event only names the object (the checkout session, payment, charge or dispute), and
every amount booked is the gateway's, capped at what the payment brought in. Each acts
only through idempotent, legal moves of our own rows (an attempt that succeeded stays
succeeded, money is booked under one ledger key per payment and per refund, a card is kept
once per payment method and fingerprint). So a replay, a duplicate or an event that arrives
before an older one leaves the same state as one delivery in order.

An event about something we have not recorded yet (a refund of a payment whose success has
not been processed) raises NotYet: the inbox row stays unprocessed and is retried. An event
about what the portal did not make (another portal's customer on the same gateway account,
a payment taken in the gateway's dashboard) is logged and left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, select

from ...errors import NotFound
from ...extensions import db
from ...gateways import ChargeInfo, GatewayEvent, PaymentStatus, get_gateway
from ...models import (
    AccountKind,
    AttemptPurpose,
    LedgerTransaction,
    PaymentAttempt,
    PaymentReversal,
    ReversalKind,
    User,
)
from ...money import Money
from .. import events
from ..wallet import ledger
from . import card_charges, cards, invoice_checkout, topups

log = logging.getLogger(__name__)


class NotYet(Exception):
    """The event is about a payment we have not recorded yet: retried later."""


class _NotOurs(Exception):
    """The event is about a payment this portal did not make: nothing to do."""


def checkout_session_completed(event: GatewayEvent) -> None:
    info = get_gateway().retrieve_checkout_session(event.object["id"])
    if info.mode == "setup":
        if info.setup_intent:
            _save_card(info.setup_intent)
        if info.status == "complete":
            topups.mark_complete(info.id)
        return
    purpose = (info.metadata or {}).get("purpose")
    if purpose == invoice_checkout.PURPOSE:
        try:
            invoice_checkout.finish(info)
        except NotFound:
            log.warning("checkout session %s is not one of ours; nothing to do", info.id)
        return
    if purpose != "topup":
        log.info("checkout session %s is not a top-up; nothing to do", info.id)
        return
    try:
        topups.finish_checkout(info)
    except NotFound:  # not opened by this portal: its payment_intent.succeeded credits it
        log.warning("checkout session %s is not one of ours; nothing to do", info.id)


def payment_intent_changed(event: GatewayEvent) -> None:
    """payment_intent.succeeded / payment_failed / requires_action / processing."""
    result = get_gateway().retrieve_payment_intent(event.object["id"])
    attempt = card_charges.attempt_for_payment(result)
    if attempt is not None:
        card_charges.apply_result(attempt.id, result)
        return
    if result.metadata.get("purpose") == "topup" and result.status is PaymentStatus.SUCCEEDED:
        user = cards.user_for_customer(result.customer)
        if user is None:  # another portal's on the same gateway account
            log.info("top-up %s of customer %s is none of ours", result.id, result.customer)
            return
        if result.id is None or result.amount is None:
            log.error(
                "a top-up payment of customer %s succeeded without an id or an amount (id %s)",
                result.customer,
                result.id,
            )
            return
        topups.credit_top_up(
            user, result.amount, reference=result.id, description="Top-up by card (checkout)"
        )
        return
    log.info("payment %s (%s) is none of ours", result.id, result.status)


def setup_intent_succeeded(event: GatewayEvent) -> None:
    _save_card(event.object["id"])


def _save_card(setup_intent: str) -> None:
    try:
        cards.save_from_setup_intent(setup_intent)
    except NotFound:  # another customer's (another portal on the same gateway account)
        log.warning("setup intent %s is not one of ours; nothing to do", setup_intent)


# -- money taken back -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Paid:
    """A payment the portal recorded: who paid, what for, and how much it booked as received."""

    user: User
    purpose: str  # AttemptPurpose: "invoice" or "topup"
    amount_minor: int


def _payer(payment_intent: str) -> _Paid:
    """Who paid with ``payment_intent``, what for and how much we received."""
    attempt = db.session.scalar(
        select(PaymentAttempt).where(PaymentAttempt.gateway_payment_id == payment_intent)
    )
    if attempt is not None and attempt.status == "succeeded":
        txn = _booked(
            f"topup:{payment_intent}"
            if attempt.purpose == AttemptPurpose.TOPUP
            else f"card:{attempt.idempotency_key}"
        )
        return _Paid(
            _user(attempt.user_id),
            attempt.purpose,
            attempt.amount_minor if txn is None else _received(txn),
        )
    topup = _booked(f"topup:{payment_intent}")
    if topup is not None and topup.user_id is not None:
        return _Paid(_user(topup.user_id), AttemptPurpose.TOPUP.value, _received(topup))
    paid_invoice = _booked(invoice_checkout.ledger_key(payment_intent))
    if paid_invoice is not None and paid_invoice.user_id is not None:
        return _Paid(
            _user(paid_invoice.user_id), AttemptPurpose.INVOICE.value, _received(paid_invoice)
        )
    # Ours (our customer, our purpose) but not recorded yet: wait for it. Anything else was
    # paid without the portal (another portal on the same gateway account, the dashboard).
    payment = get_gateway().retrieve_payment_intent(payment_intent)
    if cards.user_for_customer(payment.customer) is None or payment.metadata.get("purpose") not in {
        p.value for p in AttemptPurpose
    }:
        raise _NotOurs(payment_intent)
    raise NotYet(f"payment {payment_intent} is not recorded as paid yet")


def _user(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}")
    return user


def _booked(ledger_key: str) -> LedgerTransaction | None:
    return db.session.scalar(
        select(LedgerTransaction).where(LedgerTransaction.idempotency_key == ledger_key)
    )


def _received(txn: LedgerTransaction) -> int:
    """What a payment's ledger transaction booked as received from the gateway (its clearing
    account's side)."""
    return -sum(
        entry.amount_minor
        for entry in txn.entries
        if entry.account.kind == AccountKind.STRIPE_CLEARING.value
    )


def _reversal(reference: str) -> PaymentReversal | None:
    return db.session.scalar(select(PaymentReversal).where(PaymentReversal.reference == reference))


def _reversed(payment_intent: str, kind: ReversalKind | None = None) -> int:
    """What was booked as given or taken back for the payment so far (of one kind, or all)."""
    query = select(func.coalesce(func.sum(PaymentReversal.amount_minor), 0)).where(
        PaymentReversal.gateway_payment_id == payment_intent
    )
    if kind is not None:
        query = query.where(PaymentReversal.kind == kind.value)
    return int(db.session.scalar(query) or 0)


def _reverse(
    kind: ReversalKind, reference: str, payment_intent: str, amount: Money, reason: str
) -> PaymentReversal | None:
    """Book money the gateway gave back or took back, once per ``reference``, never more in
    all than the payment brought in: ``amount`` (the gateway's) is capped at what we received
    less what was already refunded or disputed. A top-up's refund comes out of the prepaid
    balance as far as it goes; the rest, and refunds or disputes of invoice payments, are a
    loss (the invoice stays paid). None: nothing booked (done before, or nothing left)."""
    if _reversal(reference) is not None:
        return None
    paid = _payer(payment_intent)
    user = paid.user
    room = paid.amount_minor - _reversed(payment_intent)
    if amount.amount_minor > room:
        log.warning(
            "%s %s of payment %s claims %s; only %s of what it paid is left to take back",
            kind.value,
            reference,
            payment_intent,
            amount,
            Money(max(room, 0), amount.currency),
        )
        amount = Money(max(room, 0), amount.currency)
    if amount.amount_minor <= 0:
        return None
    clearing = ledger.system_account(AccountKind.STRIPE_CLEARING, amount.currency)
    loss_kind = AccountKind.REFUNDS if kind is ReversalKind.REFUND else AccountKind.DISPUTES
    legs = [(clearing, amount.amount_minor)]
    from_balance = 0
    if kind is ReversalKind.REFUND and paid.purpose == AttemptPurpose.TOPUP:
        cash = ledger.lock_accounts([ledger.user_account(user, AccountKind.CASH)])[0]
        from_balance = min(amount.amount_minor, cash.balance_minor or 0)
        if from_balance:
            legs.append((cash, -from_balance))
    if amount.amount_minor - from_balance:
        legs.append(
            (
                ledger.system_account(loss_kind, amount.currency),
                -(amount.amount_minor - from_balance),
            )
        )
    txn = ledger.post_transaction(
        idempotency_key=f"{kind.value}:{reference}",
        kind=f"card_{kind.value}",
        user_id=user.id,
        description=f"Card payment {kind.value} ({reason})"
        if reason
        else f"Card payment {kind.value}",
        legs=legs,
    )
    row = PaymentReversal(
        kind=kind.value,
        reference=reference,
        user_id=user.id,
        gateway_payment_id=payment_intent,
        amount_minor=amount.amount_minor,
        currency=amount.currency,
        reason=reason[:200],
        ledger_transaction_id=txn.id,
    )
    db.session.add(row)
    db.session.flush()
    return row


def charge_refunded(event: GatewayEvent) -> None:
    """A refund (made here or in the gateway's dashboard).

    The event only says which charge: its refunds and amounts are read from the gateway, never
    from the event's body (a signed event is the gateway's word about *that* something
    happened, and the charge it names is the gateway's word about how much). Each refund the
    charge lists is booked once under its own id, so the rows are the same whichever of its
    events comes first. ``amount_refunded`` (the running total) caps what is booked; a part
    the list does not show is booked as the difference, keyed by the total it brings us to."""
    if not event.object.get("payment_intent"):  # no payment of ours: nothing to look up
        log.info(
            "refund of charge %s without a payment intent: none of ours", event.object.get("id")
        )
        return
    charge = get_gateway().retrieve_charge(str(event.object["id"]))
    if not charge.payment_intent:
        log.info("refund of charge %s without a payment intent: none of ours", charge.id)
        return
    try:
        _book_refunds(charge, charge.payment_intent)
    except _NotOurs:
        log.info("refund of payment %s: none of ours", charge.payment_intent)


def _book_refunds(charge: ChargeInfo, payment_intent: str) -> None:
    currency = charge.amount.currency
    total = min(charge.amount_refunded.amount_minor, charge.amount.amount_minor)
    booked = _reversed(payment_intent, ReversalKind.REFUND)
    listed = sorted(
        (r for r in charge.refunds if r.status not in ("failed", "canceled")),
        key=lambda r: (r.created, r.id),
    )
    for refund in listed:
        if _reversal(refund.id) is not None:
            continue
        if booked + refund.amount.amount_minor > total:
            break
        row = _reverse(ReversalKind.REFUND, refund.id, payment_intent, refund.amount, "refunded")
        if row is None:  # nothing of the payment left to give back
            return
        _tell_reversed("billing.payment.refunded", f"refund:{refund.id}", row, payment_intent)
        booked += row.amount_minor
    if total > booked:
        key = f"{charge.id}:{total}"
        row = _reverse(
            ReversalKind.REFUND, key, payment_intent, Money(total - booked, currency), "refunded"
        )
        if row is not None:
            _tell_reversed("billing.payment.refunded", f"refund:{key}", row, payment_intent)


def _tell_reversed(name: str, subject: str, row: PaymentReversal, payment_intent: str) -> None:
    """The platform is told of a refund or a dispute (once per subject)."""
    amount = Money(row.amount_minor, row.currency)
    events.record(
        name,
        subject,
        {
            "user_id": row.user_id,
            "payment_intent": payment_intent,
            "amount": str(amount.amount),
            "amount_minor": amount.amount_minor,
            "currency": amount.currency,
            "reason": row.reason,
        },
        row.user_id,
    )


def dispute_created(event: GatewayEvent) -> None:
    """A cardholder's bank takes a payment back: the dispute (its amount, its payment) is read
    from the gateway, never from the event's body."""
    if not event.object.get("payment_intent"):  # no payment of ours: nothing to look up
        log.info("dispute %s without a payment intent: none of ours", event.object.get("id"))
        return
    dispute = get_gateway().retrieve_dispute(str(event.object["id"]))
    payment_intent = dispute.payment_intent
    if not payment_intent:
        log.info("dispute %s without a payment intent: none of ours", dispute.id)
        return
    try:
        row = _reverse(
            ReversalKind.DISPUTE,
            dispute.id,
            payment_intent,
            dispute.amount,
            dispute.reason or "disputed",
        )
    except _NotOurs:
        log.info("dispute %s of payment %s: none of ours", dispute.id, payment_intent)
        return
    if row is not None:
        _tell_reversed("billing.payment.disputed", f"dispute:{dispute.id}", row, payment_intent)


HANDLERS = {
    "checkout.session.completed": checkout_session_completed,
    "payment_intent.succeeded": payment_intent_changed,
    "payment_intent.payment_failed": payment_intent_changed,
    "payment_intent.requires_action": payment_intent_changed,
    "payment_intent.processing": payment_intent_changed,
    "setup_intent.succeeded": setup_intent_succeeded,
    "charge.refunded": charge_refunded,
    "charge.dispute.created": dispute_created,
}

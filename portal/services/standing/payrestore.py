"""Pay to restore: pay what keeps deployments suspended or up for removal, then bring them
back at once (not at the next hourly dunning run).

What is paid is the standing page's quote (resources.quote): the overdue invoices, oldest
due first, through Pay now's waterfall (credits, vouchers, prepaid balance, then the saved
cards), and for a prepaid account whose funds ran out, a top-up of the shortfall from the
default card. With no saved card, what the wallets leave is taken on the card processor's
checkout page as a top-up; back from it (or when its webhook arrives) the money pays the
overdue invoices from the prepaid balance and what they covered is restored.

Each payment is booked whole or not at all by the payment services; nothing here writes
money itself. A quote that changed since the page showed it is refused unpaid."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from ...extensions import db
from ...models import (
    AccountKind,
    AttemptStatus,
    Deployment,
    DeploymentState,
    Invoice,
    User,
    utcnow,
)
from ...money import Money
from ..payments import card_charges, cards, outcomes, settlement, topups
from ..payments.pay import Outcome, pay_invoice
from ..wallet import ledger
from .resources import labels, overdue_invoices, standing_page
from .restore import restore_now


def restore(user_id: int, now: datetime | None = None) -> list[str]:
    """Bring back what the payments now cover; returns the external ids restored. The one
    place Pay to restore restores."""
    return restore_now(user_id, now)


def restore_named(user: User, now: datetime | None = None) -> list[str]:
    """Restore what the payments now cover (a card top-up confirmed with the bank, say);
    returns the names of the deployments brought back."""
    return labels(user.id, restore(user.id, now))


class Result(enum.StrEnum):
    RESTORED = "restored"  # paid (or nothing was owed) and restored
    CHECKOUT = "checkout"  # off to the card processor's page
    REQUIRES_ACTION = "requires_action"  # a card payment waits for 3-D Secure
    PROCESSING = "processing"  # a card charge is not answered yet
    FAILED = "failed"  # declined, or nothing could pay
    CHANGED = "changed"  # the amount is not the one the page showed
    NOTHING = "nothing"  # nothing to pay, nothing to restore


@dataclass(frozen=True)
class Restored:
    result: Result
    paid: Money
    restored: list[str] = field(default_factory=list)
    redirect_url: str | None = None
    card: str | None = None  # FAILED: the card declined
    reason: str | None = None  # FAILED: what its bank said
    invoice: Invoice | None = None  # the invoice that stopped the run


def pay_to_restore(
    user: User,
    *,
    expected_minor: int,
    nonce: str,
    success_url: str,
    cancel_url: str,
    return_url: str,
    now: datetime | None = None,
) -> Restored:
    """GATEWAY CALLS; COMMITS between payments (each is booked whole by the payment
    services). ``expected_minor`` is the total the page showed."""
    now = now or utcnow()
    page = standing_page(user, cards_on=cards.cards_enabled(), now=now)
    q = page.quote
    zero = Money(0, user.currency)
    if not q.needed:
        return Restored(Result.NOTHING, zero)
    if q.total.amount_minor != expected_minor:
        return Restored(Result.CHANGED, q.total)
    if q.rest.amount_minor > 0:
        if not cards.cards_enabled():
            return Restored(Result.FAILED, zero, reason="card payments are not set up")
        amount = q.rest
        topups.check_amount(user, amount)
        session = topups.start_checkout(
            user, amount, success_url=success_url, cancel_url=cancel_url, idempotency_key=nonce
        )
        db.session.commit()  # the session row exists before the customer reaches its page
        return Restored(Result.CHECKOUT, amount, redirect_url=session.url)
    stopped = _stopped(user.id)
    marker = outcomes.payments_marker(user)
    for invoice in q.invoices:
        outcome = pay_invoice(user, invoice.id, now=now)
        if outcome.kind in (Outcome.PAID, Outcome.NOTHING_TO_PAY):
            continue
        paid = _paid_since(user, marker)
        if outcome.kind is Outcome.REQUIRES_ACTION:
            return Restored(
                Result.REQUIRES_ACTION, paid, redirect_url=outcome.action_url, invoice=invoice
            )
        if outcome.kind is Outcome.PROCESSING:
            return Restored(Result.PROCESSING, paid, invoice=invoice)
        return Restored(
            Result.FAILED, paid, card=outcome.card, reason=outcome.reason, invoice=invoice
        )
    paid = _paid_since(user, marker)
    if q.shortfall.amount_minor > 0:
        assert q.card is not None  # with no card the quote sends the rest to checkout
        card = cards.list_cards(user)[0]
        attempt, url = card_charges.top_up_with_card(
            user,
            card.id,
            q.top_up,
            nonce=f"restore:{nonce}",
            return_url=return_url,
        )
        status = AttemptStatus(attempt.status)
        if url:
            return Restored(Result.REQUIRES_ACTION, paid, redirect_url=url)
        if status is AttemptStatus.FAILED:
            return Restored(
                Result.FAILED,
                paid,
                card=card.label,
                reason=outcomes.decline_reason(attempt.decline_code, attempt.message),
            )
        if status is not AttemptStatus.SUCCEEDED:
            return Restored(Result.PROCESSING, paid)
        paid = paid + attempt.amount
    restored = set(restore(user.id, now))
    # A payment asks for the restore job as it commits: a worker may have restored first.
    restored |= _running(user.id, stopped)
    return Restored(Result.RESTORED, paid, labels(user.id, sorted(restored)))


def _stopped(user_id: int) -> set[str]:
    """The user's deployments suspended or up for removal."""
    return _in_states(user_id, (DeploymentState.SUSPENDED, DeploymentState.REMOVING))


def _running(user_id: int, external_ids: set[str]) -> set[str]:
    """Which of ``external_ids`` run now."""
    return _in_states(user_id, (DeploymentState.ACTIVE,), external_ids) if external_ids else set()


def _in_states(
    user_id: int, states: tuple[DeploymentState, ...], among: set[str] | None = None
) -> set[str]:
    query = select(Deployment.external_id).where(
        Deployment.user_id == user_id, Deployment.state.in_([str(s) for s in states])
    )
    if among is not None:
        query = query.where(Deployment.external_id.in_(among))
    return set(db.session.scalars(query))


def _paid_since(user: User, marker: int) -> Money:
    return sum((p.amount for p in outcomes.paid_since(user, marker)), Money(0, user.currency))


def after_checkout(user: User, now: datetime | None = None) -> list[str]:
    """Back from the checkout page with the money in the prepaid balance: it pays the
    overdue invoices (oldest due first, wallets only), then what they covered is restored.
    Flushes; the caller commits. Returns the names of the deployments restored."""
    now = now or utcnow()
    ledger.lock_accounts([ledger.user_account(user, AccountKind.RECEIVABLE)])
    for invoice in overdue_invoices(user.id):
        settlement.settle_invoice(invoice, user, now)
    return labels(user.id, restore(user.id, now))

"""Saved cards: added on the gateway's hosted page, one per card number per user, one default.

A card is added through Checkout in setup mode: the number is typed on the gateway's page
(never on ours) and the SetupIntent verifies it, with 3-D Secure when the issuer asks. The
card is saved when the customer comes back to the success page or when the gateway's
webhook (setup_intent.succeeded, checkout.session.completed) arrives, whichever comes
first: both end in ``save_card``, which is idempotent by the gateway's payment method id
and refuses a second card with the same fingerprint (the same number).

Every lookup takes the user: another user's card is "not found". Services flush; the caller
commits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from ...errors import Conflict, NotFound
from ...extensions import db
from ...gateways import CardInfo, GatewayError, get_gateway
from ...models import (
    AccountKind,
    CheckoutSession,
    Deployment,
    GatewayCustomer,
    Invoice,
    PaymentMethod,
    User,
    utcnow,
)
from ...money import Money
from ...tasks.queues import enqueue_after_commit
from .. import calendar
from ..invoicing import invoices
from ..metering import usage
from ..wallet import ledger, settlement_requests

log = logging.getLogger(__name__)

# Deployments that still run up a bill (the last-card rule counts them).
LIVE_DEPLOYMENT_STATES = ("pending", "active", "suspended", "removing")
LAST_CARD_RULE = (
    "Your last card can be removed only when you have no active deployments, "
    "or when your voucher balance covers your unpaid invoices and what your "
    "deployments will cost until the end of this billing period."
)


# -- the gateway customer --------------------------------------------------------------------
def customer_id(user: User) -> str:
    """The user's customer at the gateway, made on first use (the gateway call is idempotent
    per user, and so is the row)."""
    row = db.session.get(GatewayCustomer, user.id)
    if row is not None:
        return row.customer_id
    customer = get_gateway().ensure_customer(user.id, user.email, user.name)
    try:
        with db.session.begin_nested():
            db.session.add(GatewayCustomer(user_id=user.id, customer_id=customer))
    except IntegrityError:  # made at the same moment by another request
        pass
    return db.session.get_one(GatewayCustomer, user.id).customer_id


def user_for_customer(customer: str | None) -> User | None:
    if not customer:
        return None
    return db.session.scalar(
        select(User)
        .join(GatewayCustomer, GatewayCustomer.user_id == User.id)
        .where(GatewayCustomer.customer_id == customer)
    )


# -- reading ---------------------------------------------------------------------------------
def list_cards(user: User) -> list[PaymentMethod]:
    """The user's cards, default first, then the newest."""
    return list(
        db.session.scalars(
            select(PaymentMethod)
            .where(PaymentMethod.user_id == user.id, PaymentMethod.removed_at.is_(None))
            .order_by(
                PaymentMethod.is_default.desc(),
                PaymentMethod.created_at.desc(),
                PaymentMethod.id.desc(),
            )
        )
    )


def get_for_owner(user: User, card_id: int) -> PaymentMethod:
    """The one owner-scoped card lookup: ``user``'s saved card; another user's (or a removed
    one) is NotFound, as if it did not exist."""
    card = db.session.scalar(
        select(PaymentMethod).where(
            PaymentMethod.id == card_id,
            PaymentMethod.user_id == user.id,
            PaymentMethod.removed_at.is_(None),
        )
    )
    if card is None:
        raise NotFound("no such card")
    return card


def record_checkout_page(
    user: User, gateway_session_id: str, url: str | None, *, purpose: str, amount: Money
) -> CheckoutSession:
    """Our record of a payment page the gateway opened (a top-up, an invoice): the same
    gateway session (an idempotent repeat) gives the same row."""
    row = db.session.scalar(
        select(CheckoutSession).where(CheckoutSession.gateway_session_id == gateway_session_id)
    )
    if row is None:
        row = CheckoutSession(
            user_id=user.id,
            gateway_session_id=gateway_session_id,
            purpose=purpose,
            amount_minor=amount.amount_minor,
            currency=amount.currency,
            url=url or "",
            created_at=utcnow(),
        )
        db.session.add(row)
        db.session.flush()
    return row


# -- adding ----------------------------------------------------------------------------------
def start_adding(user: User, *, success_url: str, cancel_url: str) -> CheckoutSession:
    """Open the gateway's "add a card" page; returns our record of it (its ``url``).
    ``success_url`` may hold ``{CHECKOUT_SESSION_ID}``."""
    session = get_gateway().create_setup_session(
        customer_id(user),
        success_url=success_url,
        cancel_url=cancel_url,
        metadata={"purpose": "setup", "user_id": str(user.id)},
    )
    row = CheckoutSession(
        user_id=user.id,
        gateway_session_id=session.id,
        purpose="setup",
        currency=user.currency,
        url=session.url or "",
    )
    db.session.add(row)
    db.session.flush()
    return row


@dataclass(frozen=True)
class Saved:
    card: PaymentMethod | None
    created: bool = False
    duplicate_of: PaymentMethod | None = None  # the same number is saved already
    problem: str | None = None  # not verified (yet)

    @property
    def message(self) -> str:
        if self.duplicate_of is not None:
            return (
                f"This card is already saved ({self.duplicate_of.label}). "
                "Each card can be saved once."
            )
        if self.problem:
            return self.problem
        return f"{self.card.label} is saved." if self.card else ""


def checkout_for_owner(
    user: User, gateway_session_id: str, *, purpose: str | None = None
) -> CheckoutSession:
    """The one owner-scoped lookup of a gateway page we opened (a top-up's checkout, an "add a
    card" page), by the gateway's session id: ``user``'s (of ``purpose``, when given);
    another user's is NotFound, as if it did not exist."""
    query = select(CheckoutSession).where(
        CheckoutSession.gateway_session_id == gateway_session_id,
        CheckoutSession.user_id == user.id,
    )
    if purpose is not None:
        query = query.where(CheckoutSession.purpose == purpose)
    row = db.session.scalar(query)
    if row is None:
        raise NotFound("no such card setup" if purpose == "setup" else "no such checkout")
    return row


def finish_setup_session(user: User, gateway_session_id: str) -> Saved:
    """The customer is back from the "add a card" page: save what it verified."""
    row = checkout_for_owner(user, gateway_session_id, purpose="setup")
    session = get_gateway().retrieve_checkout_session(gateway_session_id)
    if session.status != "complete" or not session.setup_intent:
        return Saved(None, problem="The card was not saved: the page was not completed.")
    saved = save_from_setup_intent(session.setup_intent, expected_user=user)
    if row.status != "complete":
        row.status, row.completed_at = "complete", utcnow()
    return saved


def save_from_setup_intent(setup_intent: str, *, expected_user: User | None = None) -> Saved:
    """Save the card a succeeded SetupIntent verified (from the success page or a webhook)."""
    gateway = get_gateway()
    intent = gateway.retrieve_setup_intent(setup_intent)
    if intent.status != "succeeded" or not intent.payment_method:
        return Saved(None, problem="The card is not verified yet.")
    user = user_for_customer(intent.customer)
    if user is None or (expected_user is not None and user.id != expected_user.id):
        raise NotFound(f"setup intent {setup_intent} is not one of ours")
    return save_card(user, gateway.get_payment_method(intent.payment_method))


def save_card(user: User, info: CardInfo) -> Saved:
    """Keep a verified card once. A second card with the same number is refused (and taken
    off the gateway's customer); the first card becomes the default. Settles pending
    invoices after commit."""
    known = db.session.scalar(select(PaymentMethod).where(PaymentMethod.gateway_id == info.id))
    if known is not None:
        if known.user_id != user.id:
            raise NotFound("no such card")
        return Saved(known)
    duplicate = _active_with_fingerprint(user, info.fingerprint)
    if duplicate is not None:
        detach(info.id)
        return Saved(None, duplicate_of=duplicate)
    ledger.lock_accounts([ledger.user_account(user, AccountKind.RECEIVABLE)])
    first = not list_cards(user)
    card = PaymentMethod(
        user_id=user.id,
        gateway_id=info.id,
        fingerprint=info.fingerprint,
        brand=info.brand,
        last4=info.last4,
        exp_month=info.exp_month,
        exp_year=info.exp_year,
        is_default=first,
        created_at=utcnow(),
    )
    try:
        with db.session.begin_nested():
            db.session.add(card)
            db.session.flush()
    except IntegrityError:  # saved at the same moment by the webhook or the success page
        again = db.session.scalar(select(PaymentMethod).where(PaymentMethod.gateway_id == info.id))
        if again is not None:
            return Saved(again)
        duplicate = _active_with_fingerprint(user, info.fingerprint)
        if duplicate is not None:
            detach(info.id)
            return Saved(None, duplicate_of=duplicate)
        raise
    settlement_requests.request_settlement(user.id)
    return Saved(card, created=True)


def _active_with_fingerprint(user: User, fingerprint: str) -> PaymentMethod | None:
    return db.session.scalar(
        select(PaymentMethod).where(
            PaymentMethod.user_id == user.id,
            PaymentMethod.fingerprint == fingerprint,
            PaymentMethod.removed_at.is_(None),
        )
    )


def detach(gateway_id: str) -> None:
    """Take a card off the gateway's customer; a card already detached is fine."""
    try:
        get_gateway().detach_payment_method(gateway_id, idempotency_key=f"detach:{gateway_id}")
    except GatewayError as exc:
        log.warning("could not detach %s: %s", gateway_id, exc)


# -- default and removal ---------------------------------------------------------------------
def set_default(user: User, card_id: int) -> PaymentMethod:
    card = get_for_owner(user, card_id)
    ledger.lock_accounts([ledger.user_account(user, AccountKind.RECEIVABLE)])
    db.session.execute(
        update(PaymentMethod)
        .where(
            PaymentMethod.user_id == user.id,
            PaymentMethod.is_default.is_(True),
            PaymentMethod.id != card.id,
        )
        .values(is_default=False)
    )
    db.session.flush()
    card.is_default = True
    db.session.flush()
    return card


@dataclass(frozen=True)
class RemovalCheck:
    allowed: bool
    reason: str = ""


def live_deployments(user: User) -> int:
    return (
        db.session.scalar(
            select(func.count())
            .select_from(Deployment)
            .where(Deployment.user_id == user.id, Deployment.state.in_(LIVE_DEPLOYMENT_STATES))
        )
        or 0
    )


def voucher_need(user: User, now: datetime | None = None) -> Money:
    """What the voucher balance must cover for the last card to go: the unpaid invoices and
    the current period's projected cost."""
    now = now or utcnow()
    unpaid = (
        db.session.scalar(
            select(
                func.coalesce(func.sum(Invoice.total_minor - Invoice.amount_paid_minor), 0)
            ).where(
                Invoice.user_id == user.id, Invoice.status.in_([str(s) for s in invoices.UNPAID])
            )
        )
        or 0
    )
    start, end = calendar.period_containing(now, calendar.invoice_day())
    projected = usage.usage_report(user, start, end, now=now).projected_total
    return Money(int(unpaid), user.currency) + projected


def can_remove(user: User, card: PaymentMethod, now: datetime | None = None) -> RemovalCheck:
    """The last card may go when nothing runs, or when the voucher balance covers it all.
    (Either condition is enough.)"""
    others = [c for c in list_cards(user) if c.id != card.id]
    if others or live_deployments(user) == 0:
        return RemovalCheck(True)
    need = voucher_need(user, now)
    have = ledger.balances(user).voucher
    if have.amount_minor >= need.amount_minor:
        return RemovalCheck(True)
    return RemovalCheck(
        False,
        f"This is your last card and you have active deployments; "
        f"your voucher balance ({have}) does not cover {need}. " + LAST_CARD_RULE,
    )


def remove_card(user: User, card_id: int, now: datetime | None = None) -> PaymentMethod:
    """Remove a card (kept as history; never charged again); the newest other card becomes
    the default when the default goes."""
    card = get_for_owner(user, card_id)
    ledger.lock_accounts([ledger.user_account(user, AccountKind.RECEIVABLE)])
    check = can_remove(user, card, now)
    if not check.allowed:
        raise Conflict(check.reason)
    was_default = card.is_default
    card.removed_at = now or utcnow()
    card.is_default = False
    db.session.flush()
    if was_default:
        remaining = list_cards(user)
        if remaining:
            remaining[0].is_default = True
            db.session.flush()
    # Taken off the gateway's customer once the removal is committed (never before: a
    # rollback would leave us a card the gateway no longer has).

    enqueue_after_commit(
        "settlement",
        "payments.detach_card",
        card.gateway_id,
        job_id=f"detach:{card.gateway_id}",
    )
    return card


def cards_enabled() -> bool:
    """Whether card payments are configured (a gateway key)."""
    return (
        bool(current_app.config.get("STRIPE_SECRET_KEY"))
        or "portal.gateway" in current_app.extensions
    )

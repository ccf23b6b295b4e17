"""Subscribing and changing plan.

- Subscribing, and an upgrade (a plan with a higher price), take effect at once: a proration
  invoice (exact seconds left in the period; the old plan's unused time credited, the new
  plan charged, each rounded once) is issued and settled from the wallets. While it is not
  paid the change is pending (the hosted checkout pays it) and can be cancelled; it takes
  effect when it is paid.
- A downgrade (same or lower price) and a cancellation take effect at the end of the period,
  and can be undone before then. A downgrade whose limits are below what runs now is refused
  with the reason.
- Plans of another interval (month, year) cannot be changed to in place.
- Every change bumps the subscription's revision with a conditional UPDATE: of two changes
  made at once from the same state, one wins and the other is a conflict.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ...db import rowcount
from ...errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from ...extensions import db
from ...models import (
    BillingMode,
    ChangeKind,
    ChangeStatus,
    CheckoutSession,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    PlanVersion,
    Subscription,
    SubscriptionChange,
    SubscriptionStatus,
    User,
    utcnow,
)
from ...money import Money
from .. import audit, events
from ..invoicing import invoices, run
from ..invoicing.lines import Proration, prorate, proration_lines
from ..invoicing.subscribed import mode_of, period_label, subscription_period
from ..payments import settlement, topups
from . import plans, quotas


class Kind(enum.StrEnum):
    SUBSCRIBE = "subscribe"
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    SAME = "same"  # the plan held: choosing it undoes a scheduled downgrade or cancellation


@dataclass(frozen=True)
class Preview:
    """What choosing ``new`` would do, to the cent, before it is confirmed."""

    kind: Kind
    current: PlanVersion | None
    new: PlanVersion
    period_start: datetime
    period_end: datetime
    effective_at: datetime  # now, or the period's end for a downgrade
    proration: Proration | None  # subscribe and upgrade
    renewal: Money  # what each period costs from the next renewal on
    refusal: str | None = None  # why it cannot be done (a downgrade below what runs)

    @property
    def credit(self) -> Money:
        return Money(self.proration.credit_minor if self.proration else 0, self.new.currency)

    @property
    def charge(self) -> Money:
        return Money(self.proration.charge_minor if self.proration else 0, self.new.currency)

    @property
    def due_now(self) -> Money:
        return Money(self.proration.due_minor if self.proration else 0, self.new.currency)


def offered_to(user: User) -> bool:
    """Plans are offered in the subscription and hybrid modes."""
    return mode_of(user.billing_mode).plans


def get_subscription(user: User, now: datetime | None = None) -> Subscription | None:
    """The user's subscription (canceled ones too), with a paid pending change applied."""
    sub = db.session.scalar(select(Subscription).where(Subscription.user_id == user.id))
    if sub is not None:
        refresh(sub, now)
    return sub


def pending_change(sub: Subscription) -> SubscriptionChange | None:
    return db.session.scalar(
        select(SubscriptionChange).where(
            SubscriptionChange.subscription_id == sub.id,
            SubscriptionChange.status == str(ChangeStatus.PENDING),
        )
    )


def scheduled_change(sub: Subscription) -> SubscriptionChange | None:
    return db.session.scalar(
        select(SubscriptionChange)
        .where(
            SubscriptionChange.subscription_id == sub.id,
            SubscriptionChange.status == str(ChangeStatus.SCHEDULED),
        )
        .order_by(SubscriptionChange.id.desc())
        .limit(1)
    )


def is_live(sub: Subscription | None) -> bool:
    return sub is not None and sub.status != SubscriptionStatus.CANCELED


def preview(user: User, plan_code: object, now: datetime | None = None) -> Preview:
    """What choosing the plan would do now: the proration, line by line, or the date a
    downgrade takes effect (or why it cannot be done)."""
    now = now or utcnow()
    if not offered_to(user):
        raise Conflict("plans are not offered on this account: you pay for what you use")
    plan = plans.get_plan(plan_code)
    new = plans.version_at(plan, now)
    if new is None:
        raise ValidationFailed.field("plan_id", "is not a plan on offer")
    if new.currency != user.currency:
        raise ValidationFailed.field("plan_id", f"is priced in {new.currency}, not {user.currency}")
    sub = get_subscription(user, now)
    if not is_live(sub):
        start, end = subscription_period(now, new.interval)
        proration = prorate(0, new.price_minor, _seconds(end - now), _seconds(end - start))
        return Preview(Kind.SUBSCRIBE, None, new, start, end, now, proration, new.price)
    assert sub is not None
    current = sub.plan_version
    if sub.status == SubscriptionStatus.PENDING:
        raise Conflict("your subscription waits for its payment: pay or cancel it first")
    if pending_change(sub) is not None:
        raise Conflict("an upgrade waits for its payment: pay or cancel it first")
    if new.plan_id == current.plan_id:
        return Preview(
            Kind.SAME, current, current, sub.period_start, sub.period_end, now, None, current.price
        )
    if new.interval != current.interval:
        raise ValidationFailed.field(
            "plan_id",
            f"is billed per {new.interval}, your plan per {current.interval}: cancel and "
            "subscribe to it when your period ends",
        )
    if new.price_minor > current.price_minor:
        proration = prorate(
            current.price_minor,
            new.price_minor,
            _seconds(sub.period_end - now),
            _seconds(sub.period_end - sub.period_start),
        )
        return Preview(
            Kind.UPGRADE, current, new, sub.period_start, sub.period_end, now, proration, new.price
        )
    return Preview(
        Kind.DOWNGRADE,
        current,
        new,
        sub.period_start,
        sub.period_end,
        sub.period_end,
        None,
        new.price,
        refusal=quotas.refusal_for(user, new),
    )


def _seconds(delta) -> int:
    return int(delta.total_seconds())


def change_plan(
    user: User, plan_code: object, *, now: datetime | None = None, actor: User | None = None
) -> tuple[Preview, Subscription]:
    """Do what the preview says (flushes; the caller commits)."""
    now = now or utcnow()
    p = preview(user, plan_code, now)
    if p.refusal:
        raise Conflict(p.refusal, fields={"plan_id": p.refusal})
    sub = get_subscription(user, now)
    if p.kind is Kind.SUBSCRIBE:
        return p, _subscribe(user, sub, p, now, actor)
    assert sub is not None
    if p.kind is Kind.SAME:
        if not sub.scheduled_version_id and not sub.cancel_at_period_end:
            raise Conflict("you are on this plan already", fields={"plan_id": "is your plan"})
        undo(user, now=now)
        return p, sub
    revision = _claim(sub)
    if p.kind is Kind.UPGRADE:
        change = _new_change(sub, revision, ChangeKind.UPGRADE, p, actor)
        _issue_and_settle(user, sub, change, p, now)
    else:
        change = _new_change(sub, revision, ChangeKind.DOWNGRADE, p, actor)
        change.status = str(ChangeStatus.SCHEDULED)
        change.effective_at = sub.period_end
        sub.scheduled_version_id = p.new.id
        sub.cancel_at_period_end = False
        _changed_event(sub, change, p.new, "scheduled")
    db.session.flush()
    return p, sub


def _claim(sub: Subscription) -> int:
    """Bump the revision from the one read: the database lets one change through."""
    claimed = rowcount(
        db.session.execute(
            update(Subscription)
            .where(Subscription.id == sub.id, Subscription.revision == sub.revision)
            .values(revision=Subscription.revision + 1)
        )
    )
    if not claimed:
        raise Conflict("your subscription was changed meanwhile; look again")
    db.session.refresh(sub)
    return sub.revision


def _subscribe(
    user: User, sub: Subscription | None, p: Preview, now: datetime, actor: User | None
) -> Subscription:
    if sub is None:
        sub = Subscription(
            user_id=user.id,
            plan_version_id=p.new.id,
            status=str(SubscriptionStatus.PENDING),
            period_start=p.period_start,
            period_end=p.period_end,
            revision=1,
        )
        try:
            with db.session.begin_nested():
                db.session.add(sub)
                db.session.flush()
        except IntegrityError:
            raise Conflict("your subscription was changed meanwhile; look again") from None
        revision = 1
    else:
        revision = _claim(sub)
        sub.plan_version_id = p.new.id
        sub.status = str(SubscriptionStatus.PENDING)
        sub.period_start, sub.period_end = p.period_start, p.period_end
        sub.scheduled_version_id = None
        sub.cancel_at_period_end = False
        sub.canceled_at = None
    change = _new_change(sub, revision, ChangeKind.SUBSCRIBE, p, actor)
    db.session.flush()
    _issue_and_settle(user, sub, change, p, now)
    return sub


def _new_change(
    sub: Subscription, revision: int, kind: ChangeKind, p: Preview, actor: User | None
) -> SubscriptionChange:
    change = SubscriptionChange(
        subscription_id=sub.id,
        user_id=sub.user_id,
        revision=revision,
        kind=str(kind),
        status=str(ChangeStatus.PENDING),
        from_version_id=p.current.id if p.current else None,
        to_version_id=p.new.id,
        created_by_id=actor.id if actor else None,
    )
    db.session.add(change)
    db.session.flush()
    return change


def _issue_and_settle(
    user: User, sub: Subscription, change: SubscriptionChange, p: Preview, now: datetime
) -> None:
    """The change's invoice, paid from the wallets where they reach; applied once paid."""
    assert p.proration is not None
    if p.proration.due_minor > 0:
        lines = proration_lines(
            p.current.name if p.current else None,
            p.new.name,
            p.proration,
            period_label(now, p.period_end),
            p.new.currency,
        )
        invoice = run.issue_invoice(
            user, InvoiceKind.PLAN_CHANGE, now, p.period_end, lines, now=now
        )
        change.invoice_id = invoice.id
        db.session.flush()
        settlement.settle_user(user, now)
        db.session.refresh(invoice)
        if invoice.status != InvoiceStatus.PAID:
            return
    _apply(sub, change, now)


def _apply(sub: Subscription, change: SubscriptionChange, now: datetime) -> None:
    sub.plan_version_id = change.to_version_id  # type: ignore[assignment]
    if sub.status == SubscriptionStatus.PENDING:
        sub.status = str(SubscriptionStatus.ACTIVE)
    change.status = str(ChangeStatus.APPLIED)
    change.effective_at = now
    db.session.flush()
    db.session.refresh(sub)
    _changed_event(sub, change, sub.plan_version, "applied")
    quotas.resume_fitting(db.session.get_one(User, sub.user_id), now)


def _changed_event(
    sub: Subscription, change: SubscriptionChange, version: PlanVersion, state: str
) -> None:
    """``billing.subscription.changed`` when a plan change takes effect (the plan in force
    and the one before); scheduled, undone and dropped changes change no plan."""
    if state != "applied":
        return
    previous = (
        db.session.get(PlanVersion, change.from_version_id) if change.from_version_id else None
    )
    events.record(
        "billing.subscription.changed",
        f"subscription-change:{change.id}:{state}",
        {
            "user_id": sub.user_id,
            "plan": version.code,
            "previous_plan": previous.code if previous else None,
            "effective_at": (change.effective_at or utcnow()).isoformat(),
        },
        sub.user_id,
    )


def refresh(sub: Subscription, now: datetime | None = None) -> None:
    """A pending change whose invoice was paid takes effect; one whose invoice was voided
    is cancelled, and so is one still unpaid when the period it prorated has ended (its
    invoice is voided: the period's own invoice has billed the plan held)."""
    change = pending_change(sub)
    if change is None or change.invoice_id is None:
        return
    now = now or utcnow()
    invoice = db.session.get_one(Invoice, change.invoice_id)
    if invoice.status == InvoiceStatus.PAID:
        if sub.status == SubscriptionStatus.PENDING and sub.period_end <= now:
            # Paid after its period: the subscription starts in the period of the payment.
            version = change.to_version or sub.plan_version
            sub.period_start, sub.period_end = subscription_period(now, version.interval)
        _apply(sub, change, now)
    elif invoice.status == InvoiceStatus.VOID:
        _drop_pending(sub, change)
    elif invoice.period_end <= now and not invoice.amount_paid_minor:
        invoices.void_invoice(invoice, reason="Plan change not paid before its period ended")
        _drop_pending(sub, change)


def refresh_pending(now: datetime | None = None) -> int:
    """Every subscription with a change waiting for payment, refreshed (the check-quotas
    job): paid ones take effect, stale ones are dropped. Returns how many were looked at."""
    subs = list(
        db.session.scalars(
            select(Subscription).where(
                Subscription.id.in_(
                    select(SubscriptionChange.subscription_id).where(
                        SubscriptionChange.status == str(ChangeStatus.PENDING)
                    )
                )
            )
        )
    )
    for sub in subs:
        refresh(sub, now)
    return len(subs)


def _drop_pending(sub: Subscription, change: SubscriptionChange) -> None:
    change.status = str(ChangeStatus.CANCELED)
    if sub.status == SubscriptionStatus.PENDING:
        sub.status = str(SubscriptionStatus.CANCELED)
        sub.canceled_at = utcnow()
    db.session.flush()
    _changed_event(sub, change, change.to_version or sub.plan_version, "canceled")


def cancel_pending(user: User, *, now: datetime | None = None) -> Subscription:
    """Cancel the subscription or upgrade that waits for payment: its invoice is voided."""
    sub = get_subscription(user, now)
    change = pending_change(sub) if sub is not None else None
    if sub is None or change is None:
        raise NotFound("no change waits for payment")
    _claim(sub)
    if change.invoice_id is not None:
        invoice = db.session.get_one(Invoice, change.invoice_id)
        if invoice.amount_paid_minor:
            raise Conflict(
                "part of this change is paid already; pay the rest to complete it",
            )
        invoices.void_invoice(invoice, reason="Plan change canceled before payment")
    _drop_pending(sub, change)
    return sub


def cancel(user: User, *, now: datetime | None = None, actor: User | None = None) -> Subscription:
    """Cancel at the end of the period (undone by undo, or by choosing the plan again)."""
    now = now or utcnow()
    sub = get_subscription(user, now)
    if not is_live(sub):
        raise NotFound("no subscription to cancel")
    assert sub is not None
    if sub.status == SubscriptionStatus.PENDING or pending_change(sub) is not None:
        raise Conflict("a change waits for its payment: cancel that first")
    if sub.cancel_at_period_end:
        return sub
    revision = _claim(sub)
    change = SubscriptionChange(
        subscription_id=sub.id,
        user_id=sub.user_id,
        revision=revision,
        kind=str(ChangeKind.CANCEL),
        status=str(ChangeStatus.SCHEDULED),
        from_version_id=sub.plan_version_id,
        to_version_id=None,
        effective_at=sub.period_end,
        created_by_id=actor.id if actor else None,
    )
    db.session.add(change)
    sub.cancel_at_period_end = True
    sub.scheduled_version_id = None
    db.session.flush()
    _changed_event(sub, change, sub.plan_version, "scheduled")
    return sub


def undo(user: User, *, now: datetime | None = None) -> Subscription:
    """Undo a scheduled downgrade or cancellation."""
    sub = get_subscription(user, now)
    if not is_live(sub):
        raise NotFound("no subscription")
    assert sub is not None
    change = scheduled_change(sub)
    if change is None:
        raise InvalidTransition("nothing is scheduled to undo")
    _claim(sub)
    db.session.execute(
        update(SubscriptionChange)
        .where(
            SubscriptionChange.subscription_id == sub.id,
            SubscriptionChange.status == str(ChangeStatus.SCHEDULED),
        )
        .values(status=str(ChangeStatus.CANCELED))
    )
    sub.scheduled_version_id = None
    sub.cancel_at_period_end = False
    db.session.flush()
    db.session.refresh(change)
    _changed_event(sub, change, sub.plan_version, "canceled")
    return sub


def pending_invoice(sub: Subscription | None) -> Invoice | None:
    change = pending_change(sub) if sub is not None else None
    if change is None or change.invoice_id is None:
        return None
    return db.session.get(Invoice, change.invoice_id)


def set_mode(user: User, mode: str | None, *, actor: User | None = None) -> User:
    """An admin's override of the installation's billing mode for one account (None or ""
    to follow the installation)."""
    if mode in ("", None):
        value = None
    elif mode in (m.value for m in BillingMode):
        value = mode
    else:
        raise ValidationFailed.field(
            "billing_mode", "must be usage, subscription, hybrid or prepaid"
        )
    before = user.billing_mode
    user.billing_mode = value
    audit.record(
        "user.billing_mode_set",
        "user",
        user.id,
        actor=actor,
        user_id=user.id,
        before={"billing_mode": before},
        after={"billing_mode": value},
    )
    db.session.flush()
    return user


# -- what the page and the API show --------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    user: User
    mode: BillingMode
    subscription: Subscription | None
    status: str  # none, active, pending, canceled, suspended
    version: PlanVersion | None  # the plan held (or waited for, or last held)
    pending: SubscriptionChange | None
    pending_invoice: Invoice | None
    meters: list[quotas.Meter]
    renewal: Money | None

    @property
    def offered(self) -> bool:
        return self.mode.plans


def describe(user: User, now: datetime | None = None) -> Overview:
    sub = get_subscription(user, now)
    mode = mode_of(user.billing_mode)
    pending = pending_change(sub) if sub is not None else None
    version = sub.plan_version if sub is not None else None
    if sub is None:
        status = "none"
    elif sub.status == SubscriptionStatus.CANCELED:
        status = "canceled"
    elif sub.status == SubscriptionStatus.PENDING or pending is not None:
        status = "pending"
    elif quotas.suspended_count(user.id):
        status = "suspended"
    else:
        status = "active"
    live = is_live(sub) and sub is not None and sub.status == SubscriptionStatus.ACTIVE
    renewal = None
    if live and sub is not None and not sub.cancel_at_period_end:
        renewal = (sub.scheduled_version or sub.plan_version).price
    return Overview(
        user,
        mode,
        sub,
        status,
        version,
        pending,
        pending_invoice(sub),
        quotas.meters(user.id, version) if live and version is not None else [],
        renewal,
    )


def checkout_change(
    user: User, plan_code: object, *, success_url: str, cancel_url: str
) -> tuple[Subscription, Invoice | None, CheckoutSession | None]:
    """Choose a plan and pay on the hosted checkout page what the balances do not cover
    (GATEWAY CALL): the change is made first (or the one already waiting for this plan is
    taken up); no page when nothing is left to pay."""
    sub = get_subscription(user)
    waiting = pending_change(sub) if sub is not None else None
    if waiting is None or waiting.to_version is None or waiting.to_version.code != plan_code:
        _, sub = change_plan(user, plan_code)
    assert sub is not None
    invoice = pending_invoice(sub)
    if invoice is None or invoice.status not in invoices.UNPAID:
        return sub, None, None
    session = topups.start_invoice_checkout(
        user, invoice, success_url=success_url, cancel_url=cancel_url
    )
    return sub, invoice, session


def return_from_checkout(user: User, gateway_session_id: str) -> Subscription | None:
    """GATEWAY CALL. Back from the checkout page: the payment is booked, the invoice paid
    from it, and the change applied."""
    topups.return_from_checkout(user, gateway_session_id)
    settlement.settle_user(user)
    return get_subscription(user)

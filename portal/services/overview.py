"""A user's overview, the page they land on: what is due now, the next invoice's date and
projected amount, the balances they can spend, their standing, what needs them, and what
happened lately. Read only: it gathers what the domain packages say."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import lazyload

from ..extensions import db
from ..models import (
    AttemptStatus,
    Invoice,
    InvoiceStatus,
    PaymentAttempt,
    PaymentMethod,
    User,
    utcnow,
)
from ..money import Money
from .calendar import invoice_day, period_containing
from .invoicing.invoices import UNPAID
from .metering import projection
from .standing import resources as standing_resources
from .standing import status as standing_status
from .standing.status import GOOD
from .wallet import credits, ledger

RECENT = 5
# A card is "expiring" in the month it expires and the month before.
EXPIRING_MONTHS = 1


@dataclass(frozen=True)
class Action:
    """Something that needs the user: a kind (``confirm_payment``, ``overdue``,
    ``card_expiring``, ``card_expired``), what to say and where to go."""

    kind: str
    message: str
    invoice_id: int | None = None
    card_id: int | None = None


@dataclass(frozen=True)
class Overview:
    currency: str
    due_now: Money
    unpaid: list[Invoice]
    next_invoice_on: datetime
    next_invoice_period: tuple[datetime, datetime]
    usage_so_far: Money
    next_invoice_projected: Money
    balances: ledger.Balances
    standing: str
    standing_reasons: tuple[str, ...]
    actions: list[Action]
    activity: list[ledger.HistoryRow]
    recent_invoices: list[Invoice]
    runway_hours: int | None = None  # how long the funds last at the recent rate

    @property
    def period_last_day(self) -> datetime:
        """The current period's last day (the period is half-open)."""
        return self.next_invoice_period[1] - timedelta(days=1)

    @property
    def in_good_standing(self) -> bool:
        return self.standing == GOOD


# The page's statements, built once (the Overview is read on every login; building a
# statement costs more than running it).
_UNPAID = (  # oldest due date first: what is late comes first
    select(Invoice)
    .where(Invoice.user_id == bindparam("user_id"), Invoice.status.in_([str(s) for s in UNPAID]))
    .order_by(Invoice.due_at, Invoice.id)
    .options(lazyload("*"))  # listed by their totals: lines and payments unread
)
_RECENT = (
    select(Invoice)
    .where(Invoice.user_id == bindparam("user_id"), Invoice.status != InvoiceStatus.DRAFT.value)
    .order_by(Invoice.period_start.desc(), Invoice.id.desc())
    .limit(3)
    .options(lazyload("*"))
)
_AWAITING = (
    select(PaymentAttempt)
    .where(
        PaymentAttempt.user_id == bindparam("user_id"),
        PaymentAttempt.invoice_id.is_not(None),
        PaymentAttempt.status == AttemptStatus.REQUIRES_ACTION.value,
    )
    .order_by(PaymentAttempt.id)
    .options(lazyload("*"))  # the amount and invoice are shown, not the card
)
_CARDS = (
    select(PaymentMethod)
    .where(PaymentMethod.user_id == bindparam("user_id"), PaymentMethod.removed_at.is_(None))
    .order_by(PaymentMethod.id)
)


def _unpaid(user: User) -> list[Invoice]:
    return list(db.session.scalars(_UNPAID, {"user_id": user.id}))


def _awaiting_confirmation(user: User) -> list[PaymentAttempt]:
    return list(db.session.scalars(_AWAITING, {"user_id": user.id}))


def _cards(user: User) -> list[PaymentMethod]:
    return list(db.session.scalars(_CARDS, {"user_id": user.id}))


def months_left(card: PaymentMethod, now: datetime) -> int:
    """Whole months from this one to the card's expiry month (0: it expires this month)."""
    return (card.exp_year * 12 + card.exp_month) - (now.year * 12 + now.month)


def _actions(user: User, unpaid: list[Invoice], now: datetime) -> list[Action]:
    actions = []
    by_id = {i.id: i for i in unpaid}
    # Only a payment of an unpaid invoice is shown: none to look for when nothing is unpaid.
    for attempt in _awaiting_confirmation(user) if unpaid else []:
        invoice = by_id.get(attempt.invoice_id or 0)
        if invoice is None:
            continue
        amount = Money(attempt.amount_minor, attempt.currency)
        actions.append(
            Action(
                "confirm_payment",
                f"Your bank asks you to confirm the payment of {amount.format()} "
                f"for invoice {invoice.number}.",
                invoice_id=invoice.id,
            )
        )
    for invoice in unpaid:
        if invoice.status == InvoiceStatus.OVERDUE.value:
            due = invoice.due_at.date().isoformat() if invoice.due_at else "its due date"
            actions.append(
                Action(
                    "overdue",
                    f"Invoice {invoice.number} is past due since {due}: "
                    f"{invoice.amount_due.format()} is still to pay.",
                    invoice_id=invoice.id,
                )
            )
    for card in _cards(user):
        left = months_left(card, now)
        expiry = f"{card.exp_month:02d}/{card.exp_year}"
        if left < 0:
            actions.append(
                Action(
                    "card_expired",
                    f"{card.label} expired at the end of {expiry}: add a new card.",
                    card_id=card.id,
                )
            )
        elif left <= EXPIRING_MONTHS:
            actions.append(
                Action(
                    "card_expiring",
                    f"{card.label} expires at the end of {expiry}: add a new card before then.",
                    card_id=card.id,
                )
            )
    return actions


def overview(user: User, now: datetime | None = None) -> Overview:
    now = now or utcnow()
    unpaid = _unpaid(user)
    due = sum((i.amount_due.amount_minor for i in unpaid), 0)
    start, end = period_containing(now, invoice_day())
    projected = projection.by_user([(user.id, user.currency)], now)[user.id]
    standing = standing_status.standing(user, now)
    recent = list(db.session.scalars(_RECENT, {"user_id": user.id}))
    balances = credits.spendable_balances(user, now)
    funds = balances.cash + balances.voucher + balances.credit
    rate = standing_resources.hourly_rates([(user.id, user.created_at)], now)[user.id]
    runway = standing_resources.Forecast(funds, rate, standing_resources.FORECAST_DAYS * 24).hours
    if funds.amount_minor <= 0:
        runway = None  # no balance to run down (the standing says when that matters)
    return Overview(
        currency=user.currency,
        due_now=Money(due, user.currency),
        unpaid=unpaid,
        next_invoice_on=end,
        next_invoice_period=(start, end),
        usage_so_far=projected.so_far,
        next_invoice_projected=projected.projected,
        balances=balances,
        standing=standing.status,
        standing_reasons=standing.reasons,
        actions=_actions(user, unpaid, now),
        activity=ledger.recent_history(user, RECENT),
        recent_invoices=recent,
        runway_hours=runway,
    )

"""A user's overview, the page they land on: what is due now, the next invoice's date and
projected amount, the balances they can spend, their standing, what needs them, and what
happened lately. Read only: it gathers what the domain packages say."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, bindparam, func, literal, select, union_all
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
from ..models.invoices import InvoiceFigures
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


@dataclass(frozen=True, slots=True)
class OverviewInvoice(InvoiceFigures):
    """An invoice as the Overview lists it (unpaid or recent): its own columns that the page
    shows, not the whole Invoice (no snapshot, lines or payments)."""

    id: int
    number: str | None
    status: str
    due_at: datetime | None
    currency: str
    total_minor: int
    amount_paid_minor: int


@dataclass(frozen=True)
class Overview:
    currency: str
    due_now: Money
    unpaid: list[OverviewInvoice]
    next_invoice_on: datetime
    next_invoice_period: tuple[datetime, datetime]
    usage_so_far: Money
    next_invoice_projected: Money
    balances: ledger.Balances
    standing: str
    standing_reasons: tuple[str, ...]
    actions: list[Action]
    activity: list[ledger.HistoryRow]
    recent_invoices: list[OverviewInvoice]
    runway_hours: int | None = None  # how long the funds last at the recent rate

    @property
    def period_last_day(self) -> datetime:
        """The current period's last day (the period is half-open)."""
        return self.next_invoice_period[1] - timedelta(days=1)

    @property
    def in_good_standing(self) -> bool:
        return self.standing == GOOD


_SHOWN = (
    Invoice.id,
    Invoice.number,
    Invoice.status,
    Invoice.due_at,
    Invoice.currency,
    Invoice.total_minor,
    Invoice.amount_paid_minor,
)
RECENT_INVOICES = 3


def _invoices_statement() -> Select:
    """The user's unpaid invoices (oldest due date first: what is late comes first) and their
    three most recent issued ones (newest period first), in one statement: each row says
    which list it is in (``part``) and where (``pos``)."""
    unpaid = select(
        literal(0).label("part"),
        *_SHOWN,
        func.row_number().over(order_by=(Invoice.due_at, Invoice.id)).label("pos"),
    ).where(Invoice.user_id == bindparam("user_id"), Invoice.status.in_([str(s) for s in UNPAID]))
    newest = (
        select(*_SHOWN, Invoice.period_start)
        .where(Invoice.user_id == bindparam("user_id"), Invoice.status != InvoiceStatus.DRAFT.value)
        .order_by(Invoice.period_start.desc(), Invoice.id.desc())
        .limit(RECENT_INVOICES)
        .subquery()
    )
    recent = select(
        literal(1),
        *(newest.c[c.key] for c in _SHOWN),
        func.row_number().over(order_by=(newest.c.period_start.desc(), newest.c.id.desc())),
    )
    both = union_all(unpaid, recent).subquery()
    return select(both).order_by(both.c.part, both.c.pos)


# The page's statements, built once (the Overview is read on every login; building a
# statement costs more than running it).
_INVOICES = _invoices_statement()
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


def _invoices(user: User) -> tuple[list[OverviewInvoice], list[OverviewInvoice]]:
    """The user's unpaid invoices and their recent ones."""
    lists: tuple[list[OverviewInvoice], list[OverviewInvoice]] = ([], [])
    for part, *columns, _ in db.session.execute(_INVOICES, {"user_id": user.id}):
        lists[part].append(OverviewInvoice(*columns))
    return lists


def _awaiting_confirmation(user: User) -> list[PaymentAttempt]:
    return list(db.session.scalars(_AWAITING, {"user_id": user.id}))


def _cards(user: User) -> list[PaymentMethod]:
    return list(db.session.scalars(_CARDS, {"user_id": user.id}))


def months_left(card: PaymentMethod, now: datetime) -> int:
    """Whole months from this one to the card's expiry month (0: it expires this month)."""
    return (card.exp_year * 12 + card.exp_month) - (now.year * 12 + now.month)


def _actions(user: User, unpaid: list[OverviewInvoice], now: datetime) -> list[Action]:
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
    unpaid, recent = _invoices(user)
    due = sum((i.amount_due.amount_minor for i in unpaid), 0)
    start, end = period_containing(now, invoice_day())
    projected = projection.by_user([(user.id, user.currency)], now)[user.id]
    standing = standing_status.standing(user, now)
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

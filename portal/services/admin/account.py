"""Everything about one account for its admin page, newest first, each list capped (the
page links to the full lists where one exists)."""

from __future__ import annotations

import functools
from collections import namedtuple
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Select, bindparam, cast, join, literal, null, select, union_all

from ...extensions import db
from ...models import (
    AuditEntry,
    Deployment,
    Event,
    Invoice,
    OutboundEmail,
    PaymentMethod,
    User,
    Voucher,
    VoucherRedemption,
    WebhookDelivery,
    utcnow,
)
from ...models.invoices import InvoiceFigures
from ...models.vouchers import display_code
from ...money import Money
from ..budgets import rules as budgets
from ..standing import resources
from ..wallet import ledger

SHOWN = 20


@dataclass(frozen=True)
class Card:
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    is_default: bool
    removed: bool


@dataclass(frozen=True)
class Redemption:
    at: object
    code: str
    value: Money


@dataclass(frozen=True)
class AccountDetail:
    invoices: list[ShownInvoice]
    deployments: list[tuple]  # the columns of _SHOWN, by name
    cards: list[Card]  # brand and last 4 only: nothing else about a card leaves the gateway
    redemptions: list[Redemption]
    events: list[ShownEvent]
    deliveries: dict[int, list[ShownDelivery]]  # the shown events' webhook deliveries
    mail: list[tuple]
    admin_actions: list[tuple]


# What the lists show: rows of these columns, not whole objects (an audit entry's before and
# after documents, a message's bodies stay unread), each list by the model of its rows.
_SHOWN = {
    Invoice: (
        Invoice.id,
        Invoice.number,
        Invoice.status,
        Invoice.period_start,
        Invoice.currency,
        Invoice.total_minor,
        Invoice.amount_paid_minor,
    ),
    Deployment: (
        Deployment.id,
        Deployment.name,
        Deployment.external_id,
        Deployment.kind,
        Deployment.state,
        Deployment.started_at,
    ),
    PaymentMethod: (
        PaymentMethod.id,
        PaymentMethod.brand,
        PaymentMethod.last4,
        PaymentMethod.exp_month,
        PaymentMethod.exp_year,
        PaymentMethod.is_default,
        PaymentMethod.removed_at,
    ),
    OutboundEmail: (
        OutboundEmail.id,
        OutboundEmail.created_at,
        OutboundEmail.subject,
        OutboundEmail.status,
    ),
    AuditEntry: (
        AuditEntry.id,
        AuditEntry.created_at,
        AuditEntry.action,
        AuditEntry.object_type,
        AuditEntry.object_id,
        AuditEntry.actor_email,
    ),
    VoucherRedemption: (
        VoucherRedemption.id,
        VoucherRedemption.created_at,
        Voucher.code,
        Voucher.value_minor,
        Voucher.currency,
    ),
}
# The tables a list reads besides its model's.
_JOINED = {VoucherRedemption: join(VoucherRedemption, Voucher)}
_MODELS: tuple[Any, ...] = tuple(_SHOWN)


def _spans() -> dict[type, slice]:
    """Each list's columns' place in a row of ``_lists_statement``: after its part and row
    id, every list's columns in the order of ``_SHOWN``."""
    spans, start = {}, 2
    for model in _MODELS:
        spans[model] = slice(start, start + len(_SHOWN[model]))
        start += len(_SHOWN[model])
    return spans


_SPANS = _spans()


# The statement is built once (building it costs more than running it); the user is bound
# per call.
@functools.cache
def _lists_statement() -> Select:
    """The newest rows of every list of ``_SHOWN`` in one statement: a UNION ALL of each
    table's newest rows, each row carrying which list it is in (``part``, the model's place
    in ``_SHOWN``), its id and every list's columns (another list's as NULL, cast to that
    column's type: PostgreSQL would make a column of bare NULLs text, which a later
    branch's number or time does not match)."""
    branches = []
    for part, model in enumerate(_MODELS):
        newest = (
            select(*_SHOWN[model])
            .select_from(_JOINED.get(model, model))
            .where(model.user_id == bindparam("user_id"))
            .order_by(model.id.desc())
            .limit(SHOWN)
            .subquery()
        )
        branches.append(
            select(
                literal(part).label("part"),
                newest.c.id.label("row_id"),
                *(
                    (newest.c[c.key] if other is model else cast(null(), c.type)).label(
                        f"{other.__tablename__}_{c.key}"
                    )
                    for other in _MODELS
                    for c in _SHOWN[other]
                ),
            )
        )
    lists = union_all(*branches).subquery()
    return select(lists).order_by(lists.c.part, lists.c.row_id.desc())


@dataclass(frozen=True, slots=True)
class ShownInvoice(InvoiceFigures):
    """An invoice of the list, its columns of ``_SHOWN`` (its status's label and style are
    the model's)."""

    id: int
    number: str | None
    status: str
    period_start: datetime
    currency: str
    total_minor: int
    amount_paid_minor: int


# A list's row as the page reads it, by the columns' names.
_ROWS: dict[type, type] = {
    Invoice: ShownInvoice,
    **{
        model: namedtuple(f"{model.__name__}Row", [c.key for c in _SHOWN[model]])
        for model in _MODELS
        if model is not Invoice
    },
}


def _newest_lists(user_id: int) -> dict[type, list]:
    """Each list's newest rows, newest first, by model."""
    lists: dict[type, list] = {model: [] for model in _MODELS}
    for row in db.session.execute(_lists_statement(), {"user_id": user_id}):
        model = _MODELS[row.part]
        lists[model].append(_ROWS[model](*row[_SPANS[model]]))
    return lists


class ShownEvent(NamedTuple):
    id: int
    name: str
    subject: str
    created_at: datetime
    delivered_at: datetime | None


class ShownDelivery(NamedTuple):
    id: int
    endpoint_id: int
    status: str


@functools.cache
def _events_statement() -> Select:
    newest = (
        select(Event.id)
        .where(Event.user_id == bindparam("user_id"))
        .order_by(Event.id.desc())
        .limit(SHOWN)
        .subquery()
    )
    return (  # the events' and deliveries' columns of the tuples' field names
        select(*(getattr(Event, f) for f in ShownEvent._fields))
        .add_columns(*(getattr(WebhookDelivery, f) for f in ShownDelivery._fields))
        .join(newest, newest.c.id == Event.id)
        .outerjoin(WebhookDelivery, WebhookDelivery.event_id == Event.id)
        .order_by(Event.id.desc(), WebhookDelivery.endpoint_id)
    )


def _events_and_deliveries(
    user_id: int,
) -> tuple[list[ShownEvent], dict[int, list[ShownDelivery]]]:
    """The newest events with their webhook deliveries (by endpoint), in one statement: a
    row per delivery (or per event without one), the event's columns first."""
    events: list[ShownEvent] = []
    deliveries: dict[int, list[ShownDelivery]] = {}
    split = len(ShownEvent._fields)
    for row in db.session.execute(_events_statement(), {"user_id": user_id}):
        if not events or events[-1].id != row[0]:
            events.append(ShownEvent(*row[:split]))
        if row[split] is not None:
            deliveries.setdefault(row[0], []).append(ShownDelivery(*row[split:]))
    return events, deliveries


def account_detail(user: User) -> AccountDetail:
    lists = _newest_lists(user.id)
    cards = [
        Card(m.brand, m.last4, m.exp_month, m.exp_year, m.is_default, m.removed_at is not None)
        for m in lists[PaymentMethod]
    ]
    redemptions = [
        Redemption(r.created_at, display_code(r.code), Money(r.value_minor, r.currency))
        for r in lists[VoucherRedemption]
    ]
    events, deliveries = _events_and_deliveries(user.id)
    return AccountDetail(
        invoices=lists[Invoice],
        deployments=lists[Deployment],
        cards=cards,
        redemptions=redemptions,
        events=events,
        deliveries=deliveries,
        mail=lists[OutboundEmail],
        admin_actions=lists[AuditEntry],
    )


@dataclass(frozen=True)
class MoneyFigures:
    balances: ledger.Balances  # the credit as spendable now (``credits.spendable_balances``)
    budget: budgets.Status
    forecast: resources.Forecast


def money_figures(user: User, now: datetime | None = None) -> MoneyFigures:
    """The balances, the budget and the runway, from one statement (``resources.figures``):
    the same figures as ``credits.spendable_balances``, ``budgets.status`` and
    ``resources.forecast``, which read them in seven."""
    now = now or utcnow()
    figures = resources.figures(user, now)
    account, cur = figures.account, user.currency
    return MoneyFigures(
        balances=ledger.Balances(
            currency=cur,
            cash=Money(account.cash_minor, cur),
            voucher=Money(account.voucher_minor, cur),
            credit=figures.available_credit,
            receivable=figures.receivable,
        ),
        budget=budgets.status_of(
            user, account.budget_cap_minor, account.budget_stop, account.spent_minor, now
        ),
        forecast=figures.forecast,
    )

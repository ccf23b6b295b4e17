"""Everything about one account for its admin page, newest first, each list capped (the
page links to the full lists where one exists)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row, Select, bindparam, select
from sqlalchemy.orm import defer, lazyload, load_only

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
    invoices: list[Invoice]
    deployments: list[Row]  # the columns of _SHOWN, by name
    cards: list[Card]  # brand and last 4 only: nothing else about a card leaves the gateway
    redemptions: list[Redemption]
    events: list[Event]
    deliveries: dict[int, list[WebhookDelivery]]  # the shown events' webhook deliveries
    mail: list[Row]
    admin_actions: list[Row]


# What the lists show: rows of these columns, not whole objects (an audit entry's before and
# after documents, a message's bodies stay unread). Invoices stay objects (loaded with these
# columns only): their status's label and style are the model's.
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
}


# The statements are built once (building them costs more than running them); the user is
# bound per call.
@functools.cache
def _newest_statement(model) -> Select:
    newest = select(model) if model is Invoice else select(*_SHOWN[model])
    newest = newest.where(model.user_id == bindparam("user_id"))
    if model is Invoice:  # its lines and payments are not read with it
        newest = newest.options(lazyload("*"), load_only(*_SHOWN[Invoice]))
    return newest.order_by(model.id.desc()).limit(SHOWN)


def _newest(model, user_id: int) -> list:
    rows = db.session.execute(_newest_statement(model), {"user_id": user_id})
    return list(rows.scalars() if model is Invoice else rows)


@functools.cache
def _redemptions_statement() -> Select:
    return (
        select(VoucherRedemption.created_at, Voucher)
        .join(Voucher, Voucher.id == VoucherRedemption.voucher_id)
        .where(VoucherRedemption.user_id == bindparam("user_id"))
        .order_by(VoucherRedemption.id.desc())
        .limit(SHOWN)
    )


@functools.cache
def _events_statement() -> Select:
    newest = (
        select(Event.id)
        .where(Event.user_id == bindparam("user_id"))
        .order_by(Event.id.desc())
        .limit(SHOWN)
        .subquery()
    )
    return (
        select(Event, WebhookDelivery)
        .join(newest, newest.c.id == Event.id)
        .outerjoin(WebhookDelivery, WebhookDelivery.event_id == Event.id)
        .order_by(Event.id.desc(), WebhookDelivery.endpoint_id)
        .options(lazyload("*"), lazyload(WebhookDelivery.event), defer(Event.payload))
    )


def _events_and_deliveries(user_id: int) -> tuple[list[Event], dict[int, list[WebhookDelivery]]]:
    """The newest events with their webhook deliveries (by endpoint), in one statement; a
    delivery's event is the row beside it, not joined again."""
    events: list[Event] = []
    deliveries: dict[int, list[WebhookDelivery]] = {}
    for event, delivery in db.session.execute(_events_statement(), {"user_id": user_id}):
        if not events or events[-1] is not event:
            events.append(event)
        if delivery is not None:
            deliveries.setdefault(event.id, []).append(delivery)
    return events, deliveries


def account_detail(user: User) -> AccountDetail:
    cards = [
        Card(m.brand, m.last4, m.exp_month, m.exp_year, m.is_default, m.removed_at is not None)
        for m in _newest(PaymentMethod, user.id)
    ]
    redemptions = [
        Redemption(at, v.display_code, v.value)
        for at, v in db.session.execute(_redemptions_statement(), {"user_id": user.id})
    ]
    events, deliveries = _events_and_deliveries(user.id)
    return AccountDetail(
        invoices=_newest(Invoice, user.id),
        deployments=_newest(Deployment, user.id),
        cards=cards,
        redemptions=redemptions,
        events=events,
        deliveries=deliveries,
        mail=_newest(OutboundEmail, user.id),
        admin_actions=_newest(AuditEntry, user.id),
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

"""Everything about one account for its admin page, newest first, each list capped (the
page links to the full lists where one exists)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import defer, lazyload

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
    deployments: list[Deployment]
    cards: list[Card]  # brand and last 4 only: nothing else about a card leaves the gateway
    redemptions: list[Redemption]
    events: list[Event]
    deliveries: dict[int, list[WebhookDelivery]]  # the shown events' webhook deliveries
    mail: list[OutboundEmail]
    admin_actions: list[AuditEntry]


# Columns the lists do not show: an invoice's snapshot (its document), a message's bodies,
# an event's payload.
_NOT_SHOWN = {
    Invoice: (Invoice.snapshot,),
    OutboundEmail: (OutboundEmail.body_text, OutboundEmail.body_html),
}


# The statements are built once (building them costs more than running them); the user is
# bound per call.
@functools.cache
def _newest_statement(model) -> Select:
    # The lists show the rows' own columns: an invoice's lines and payments, a deployment's
    # intervals are not read with them (they would load on access).
    return (
        select(model)
        .where(model.user_id == bindparam("user_id"))
        .order_by(model.id.desc())
        .limit(SHOWN)
        .options(lazyload("*"), *(defer(c) for c in _NOT_SHOWN.get(model, ())))
    )


def _newest(model, user_id: int) -> list:
    return list(db.session.scalars(_newest_statement(model), {"user_id": user_id}))


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

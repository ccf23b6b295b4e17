"""Everything about one account for its admin page, newest first, each list capped (the
page links to the full lists where one exists)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import lazyload

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
)
from ...money import Money

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


def _newest(model, user_id: int, limit: int = SHOWN):
    # The lists show the rows' own columns: an invoice's lines and payments, a deployment's
    # intervals are not read with them (they would load on access).
    return list(
        db.session.scalars(
            select(model)
            .where(model.user_id == user_id)
            .order_by(model.id.desc())
            .limit(limit)
            .options(lazyload("*"))
        )
    )


def account_detail(user: User) -> AccountDetail:
    cards = [
        Card(m.brand, m.last4, m.exp_month, m.exp_year, m.is_default, m.removed_at is not None)
        for m in _newest(PaymentMethod, user.id)
    ]
    redemptions = [
        Redemption(at, v.display_code, v.value)
        for at, v in db.session.execute(
            select(VoucherRedemption.created_at, Voucher)
            .join(Voucher, Voucher.id == VoucherRedemption.voucher_id)
            .where(VoucherRedemption.user_id == user.id)
            .order_by(VoucherRedemption.id.desc())
            .limit(SHOWN)
        )
    ]
    events = _newest(Event, user.id)
    deliveries: dict[int, list[WebhookDelivery]] = {}
    if events:
        for d in db.session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_id.in_([e.id for e in events]))
            .order_by(WebhookDelivery.endpoint_id)
        ):
            deliveries.setdefault(d.event_id, []).append(d)
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

"""What standing and can-deploy read about an account, in one statement: its flags
(overdue, suspended, removing), its cards, its balances and the hourly cost of what runs now
(the user's open deployment intervals, at their snapshotted rates; indexed by user and
end)."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from sqlalchemy import ColumnElement, and_, bindparam, exists, func, select

from ...extensions import db
from ...models import (
    AccountKind,
    Deployment,
    DeploymentInterval,
    DeploymentState,
    DunningStep,
    Invoice,
    InvoiceStatus,
    LedgerAccount,
    PaymentMethod,
    User,
)
from ...money import currency_digits
from .. import calendar as billing_calendar

I = DeploymentInterval


def next_invoice_at(now: datetime) -> datetime:
    return billing_calendar.period_containing(now, billing_calendar.invoice_day())[1]


def card_expiry_limit(now: datetime) -> int:
    """A card whose (year * 12 + month) is below this expires before the next invoice
    (a card is valid through the last day of its expiry month)."""
    at = next_invoice_at(now)
    return at.year * 12 + at.month


@dataclass(frozen=True)
class Account:
    removing: bool
    suspended: bool
    overdue: bool
    valid_card: bool  # a saved card that has not expired
    card_expiring: bool  # the default card expires before the next invoice
    cash_minor: int
    voucher_minor: int
    credit_minor: int
    hourly_micros: Fraction  # what runs now costs an hour, exactly

    @property
    def funds_minor(self) -> int:
        return self.cash_minor + self.voucher_minor + self.credit_minor

    def funds_micros(self, currency: str) -> int:
        return self.funds_minor * 10 ** (6 - currency_digits(currency))

    def voucher_micros(self, currency: str) -> int:
        return self.voucher_minor * 10 ** (6 - currency_digits(currency))


def hourly_micros(rates_row, now: datetime) -> Fraction:
    """An hour of (summed) interval quantities times rates; storage is priced by the month."""
    per_hour, instances, storage = (int(v or 0) for v in rates_row)
    month_seconds = calendar.monthrange(now.year, now.month)[1] * 86400
    return Fraction(per_hour, 1000) + instances + Fraction(storage * 3600, 1000 * month_seconds)


def _account_columns(uid, currency) -> list:
    """The account's columns for the user ``uid`` (a bound value, or ``User.id`` to read
    them beside the user's row)."""

    def balance(kind: AccountKind):
        return (
            select(func.coalesce(func.sum(LedgerAccount.balance_minor), 0))
            .where(
                LedgerAccount.user_id == uid,
                LedgerAccount.kind == str(kind),
                LedgerAccount.currency == currency,
            )
            .scalar_subquery()
        )

    def open_sum(expr):
        return (
            select(func.coalesce(func.sum(expr), 0))
            .where(I.user_id == uid, I.end_epoch.is_(None))
            .scalar_subquery()
        )

    card = and_(PaymentMethod.user_id == uid, PaymentMethod.removed_at.is_(None))
    card_month = PaymentMethod.exp_year * 12 + PaymentMethod.exp_month
    return [
        exists().where(
            Deployment.user_id == uid, Deployment.state == str(DeploymentState.REMOVING)
        ),
        exists().where(
            DunningStep.user_id == uid,
            DunningStep.step == "suspended",
            Invoice.id == DunningStep.invoice_id,
            Invoice.status == InvoiceStatus.OVERDUE.value,
        ),
        exists().where(Invoice.user_id == uid, Invoice.status == InvoiceStatus.OVERDUE.value),
        exists().where(card, card_month >= bindparam("month_now")),
        exists().where(
            card, PaymentMethod.is_default.is_(True), card_month < bindparam("expiry_limit")
        ),
        balance(AccountKind.CASH),
        balance(AccountKind.VOUCHER),
        balance(AccountKind.CREDIT),
        open_sum(I.cpu_milli * I.cpu_rate_micros + I.memory_mgb * I.memory_rate_micros),
        open_sum(I.instances * I.instance_rate_micros + I.public_ips * I.ip_rate_micros),
        open_sum(I.storage_mgb * I.storage_rate_micros),
    ]


# Built once (building them costs more than running them); values are bound per call.
_ACCOUNT = select(*_account_columns(bindparam("uid"), bindparam("currency")))
_USER_ACCOUNT = select(User, *_account_columns(User.id, User.currency))


def _time_params(now: datetime) -> dict[str, int]:
    return {"month_now": now.year * 12 + now.month, "expiry_limit": card_expiry_limit(now)}


def read_account(user: User, now: datetime) -> Account:
    """Everything in one round trip of scalar subqueries, each on an index."""
    row = db.session.execute(
        _ACCOUNT, {"uid": user.id, "currency": user.currency, **_time_params(now)}
    ).one()
    return _account_of(tuple(row), now)


def read_user_account(condition: ColumnElement[bool], now: datetime) -> tuple[User, Account] | None:
    """The user matching ``condition`` (e.g. ``User.email == ...``) and their account, in the
    same one round trip; None when no user matches."""
    row = db.session.execute(_USER_ACCOUNT.where(condition), _time_params(now)).one_or_none()
    if row is None:
        return None
    return row[0], _account_of(tuple(row)[1:], now)


def _account_of(values: tuple, now: datetime) -> Account:
    return Account(
        removing=bool(values[0]),
        suspended=bool(values[1]),
        overdue=bool(values[2]),
        valid_card=bool(values[3]),
        card_expiring=bool(values[4]),
        cash_minor=int(values[5]),
        voucher_minor=int(values[6]),
        credit_minor=int(values[7]),
        hourly_micros=hourly_micros(values[8:11], now),
    )

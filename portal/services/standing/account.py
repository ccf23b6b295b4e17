"""What standing and can-deploy read about an account, in one statement: its flags
(overdue, suspended, removing), its cards, its balances and the hourly cost of what runs now
(the user's open deployment intervals, at their snapshotted rates; indexed by user and
end), and its budget cap with the period's spending (summed only when a cap is set)."""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from sqlalchemy import ColumnElement, Select, and_, bindparam, case, exists, func, select

from ...extensions import db
from ...models import (
    AccountKind,
    Budget,
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
from ..budgets import spending

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
    budget_cap_minor: int | None = None  # the monthly cap; None: no cap
    budget_stop: bool = False  # stop at the cap (else only tell)
    # this period's spending as budgets count it (0 without a cap, unless read always)
    spent_minor: int = 0

    @property
    def budget_reached(self) -> bool:
        return self.budget_cap_minor is not None and self.spent_minor >= self.budget_cap_minor

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


def account_columns(uid, currency, parts: int, *, spending_always: bool = False) -> list:
    """The account's columns for the user ``uid`` (a bound value, or ``User.id`` to read
    them beside the user's row); the budget's spending over a period touching ``parts``
    calendar months (their dates are bound per call: ``time_params``), summed only for an
    account with a cap unless ``spending_always``."""

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

    months = spending.Months(
        bindparam("m_start"),  # type: ignore[arg-type]
        bindparam("m_end"),  # type: ignore[arg-type]
        tuple((bindparam(f"m{i}_lo"), bindparam(f"m{i}_hi")) for i in range(parts)),  # type: ignore[misc]
    )
    has_cap = exists().where(Budget.user_id == uid, Budget.cap_minor.is_not(None))
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
        select(Budget.cap_minor).where(Budget.user_id == uid).scalar_subquery(),
        select(Budget.stop_at_cap).where(Budget.user_id == uid).scalar_subquery(),
        # spending is summed only for an account with a cap (unless always)
        *(
            c if spending_always else case((has_cap, c), else_=None)
            for c in spending.columns(uid, months)
        ),
    ]


# Built once per shape (building them costs more than running them); values are bound per
# call. A billing period touches one or two calendar months.
@functools.cache
def _account_statement(parts: int) -> Select:
    return select(*account_columns(bindparam("uid"), bindparam("currency"), parts))


@functools.cache
def _user_account_statement(parts: int) -> Select:
    return select(User, *account_columns(User.id, User.currency, parts))


def time_params(months: spending.Months, now: datetime) -> dict[str, object]:
    params: dict[str, object] = {
        "month_now": now.year * 12 + now.month,
        "expiry_limit": card_expiry_limit(now),
        "m_start": months.start,
        "m_end": months.end,
    }
    for i, (lo, hi) in enumerate(months.parts):
        params[f"m{i}_lo"], params[f"m{i}_hi"] = lo, hi
    return params


def read_account(user: User, now: datetime) -> Account:
    """Everything in one round trip of scalar subqueries, each on an index."""
    months = spending.months_of(now)
    row = db.session.execute(
        _account_statement(len(months.parts)),
        {"uid": user.id, "currency": user.currency, **time_params(months, now)},
    ).one()
    return account_of(user, tuple(row), months, now)


def read_user_account(condition: ColumnElement[bool], now: datetime) -> tuple[User, Account] | None:
    """The user matching ``condition`` (e.g. ``User.email == ...``) and their account, in the
    same one round trip; None when no user matches."""
    months = spending.months_of(now)
    row = db.session.execute(
        _user_account_statement(len(months.parts)).where(condition), time_params(months, now)
    ).one_or_none()
    if row is None:
        return None
    user = row[0]
    return user, account_of(user, tuple(row)[1:], months, now)


ACCOUNT_COLUMNS = 13  # the columns before the spending's in account_columns


def account_of(
    user: User,
    values: tuple,
    months: spending.Months,
    now: datetime,
    *,
    spending_always: bool = False,
) -> Account:
    """The Account from what ``account_columns`` read (with the same ``spending_always``)."""
    cap = None if values[11] is None else int(values[11])
    summed = cap is not None or spending_always
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
        budget_cap_minor=cap,
        budget_stop=bool(values[12]),
        spent_minor=spending.from_row(user, values[ACCOUNT_COLUMNS:], months) if summed else 0,
    )

"""The admin overview's figures, per currency: each from the ledger (cached balances) or the
invoices, in one grouped query per figure."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    String,
    bindparam,
    cast,
    func,
    literal_column,
    null,
    or_,
    select,
    union_all,
)

from ...db import Page
from ...extensions import db
from ...models import (
    AccountKind,
    AttemptStatus,
    Invoice,
    InvoiceStatus,
    LedgerAccount,
    PaymentAttempt,
    Plan,
    PlanVersion,
    Subscription,
    User,
)
from ...money import Money
from ..calendar import invoice_day, period_containing
from ..metering import projection
from ..standing.account import card_expiry_limit
from ..standing.status import STANDINGS, count_statement, counts_of

FAILED_PAYMENTS_DAYS = 7


@dataclass
class Figures:
    """One currency's figures."""

    currency: str
    revenue_so_far: Money
    revenue_projected: Money
    receivables: Money  # what every account owes (receivable balances)
    overdue: Money  # unpaid on overdue invoices
    overdue_count: int
    failed_payments: Money
    failed_payments_count: int


@dataclass
class Overview:
    now: datetime
    period_start: datetime
    period_end: datetime
    figures: list[Figures]
    standing: dict[str, int] = field(default_factory=dict)  # accounts by standing
    accounts: int = 0
    plans: list[PlanFigure] = field(default_factory=list)  # active subscribers per plan
    mrr: list[Money] = field(default_factory=list)  # per currency


@dataclass
class PlanFigure:
    code: str
    subscribers: int
    mrr: Money  # monthly recurring revenue: month fees, and a twelfth of year fees


def _plan_figures(rows: Iterable[Any]) -> tuple[list[PlanFigure], list[Money]]:
    """Per plan and currency, the subscribers and the monthly recurring revenue, from rows of
    (plan, interval, currency, subscribers, the sum of their prices)."""
    twelfths: dict[tuple[str, str], int] = defaultdict(int)  # (plan, currency) -> 12 x MRR
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for code, interval, currency, n, total in rows:
        twelfths[(code, currency)] += int(total) * (1 if interval == "year" else 12)
        counts[(code, currency)] += int(n)
    figures = [
        PlanFigure(code, counts[(code, cur)], Money((twelfths[(code, cur)] + 6) // 12, cur))
        for code, cur in sorted(counts)
    ]
    totals: dict[str, int] = defaultdict(int)
    for (_, cur), value in twelfths.items():
        totals[cur] += value
    return figures, [Money((v + 6) // 12, cur) for cur, v in sorted(totals.items())]


def _subscribers():
    """Active subscribers and the sum of the prices they hold, by plan, interval, currency."""
    return (
        select(
            Plan.code,
            PlanVersion.interval,
            PlanVersion.currency,
            func.count(),
            func.coalesce(func.sum(PlanVersion.price_minor), 0),
        )
        .select_from(Subscription)
        .join(PlanVersion, PlanVersion.id == Subscription.plan_version_id)
        .join(Plan, Plan.id == PlanVersion.plan_id)
        .where(Subscription.status == "active")
        .group_by(Plan.code, PlanVersion.interval, PlanVersion.currency)
    )


def plan_figures() -> tuple[list[PlanFigure], list[Money]]:
    """Active subscribers per plan and the monthly recurring revenue their fees make (the
    price each one holds; a year's fee counts a twelfth, rounded once per figure)."""
    return _plan_figures(db.session.execute(_subscribers()))


RECEIVABLES, OVERDUE, FAILED, PLAN, STANDING = (
    "receivables",
    "overdue",
    "failed",
    "plan",
    "standing",
)


@functools.cache
def _figures_statement() -> CompoundSelect:
    """The overview's figures but the revenue, in one statement: rows of (figure, currency,
    plan, interval, amount, count), each figure grouped as its own query would be (the
    receivables, the overdue invoices, the failed payments since ``:failed_since``, the
    subscribers, and the accounts by standing with its rank as the amount). Built once."""
    text = String(32)
    none = cast(null(), text)

    def figure(name: str):
        return literal_column(f"'{name}'", text)

    def whole(value):
        return cast(value, BigInteger)

    la = LedgerAccount
    receivables = (  # only the accounts that owe (or are owed): the index on (kind, balance)
        select(
            figure(RECEIVABLES),
            la.currency,
            none,
            none,
            whole(func.sum(la.balance_minor)),
            whole(func.count()),
        )
        .where(
            la.kind == AccountKind.RECEIVABLE.value,
            or_(la.balance_minor > 0, la.balance_minor < 0),
            la.user_id.is_not(None),
        )
        .group_by(la.currency)
    )
    overdue = (
        select(
            figure(OVERDUE),
            Invoice.currency,
            none,
            none,
            whole(func.sum(Invoice.total_minor - Invoice.amount_paid_minor)),
            whole(func.count()),
        )
        .where(Invoice.status == InvoiceStatus.OVERDUE.value)
        .group_by(Invoice.currency)
    )
    failed = (
        select(
            figure(FAILED),
            PaymentAttempt.currency,
            none,
            none,
            whole(func.sum(PaymentAttempt.amount_minor)),
            whole(func.count()),
        )
        .where(
            PaymentAttempt.status == AttemptStatus.FAILED.value,
            PaymentAttempt.updated_at >= bindparam("failed_since"),
        )
        .group_by(PaymentAttempt.currency)
    )
    plans = _subscribers().subquery()
    code, interval, currency, n, total = plans.c
    subscribers = select(
        figure(PLAN), currency, code, interval, whole(total), whole(n)
    ).select_from(plans)
    ranks = count_statement().subquery()
    rank, accounts = ranks.c
    standing = select(figure(STANDING), none, none, none, whole(rank), whole(accounts)).select_from(
        ranks
    )
    return union_all(receivables, overdue, failed, subscribers, standing)


def overview(now: datetime) -> Overview:
    start, end = period_containing(now, invoice_day())
    per: dict[str, dict] = defaultdict(dict)

    for currency, p in projection.by_currency(now).items():
        per[currency]["revenue"] = p
    subscribers = []
    ranks = []
    for name, currency, code, interval, total, count in db.session.execute(
        _figures_statement(),
        {
            "failed_since": now - timedelta(days=FAILED_PAYMENTS_DAYS),
            "expiry_limit": card_expiry_limit(now),
        },
    ):
        if name == RECEIVABLES:
            per[currency]["receivables"] = int(total or 0)
        elif name == OVERDUE:
            per[currency]["overdue"] = (int(total or 0), int(count))
        elif name == FAILED:
            per[currency]["failed"] = (int(total or 0), int(count))
        elif name == PLAN:
            subscribers.append((code, interval, currency, count, total))
        else:
            ranks.append((int(total), int(count)))

    figures = []
    for currency in sorted(per):
        f = per[currency]
        zero = Money.zero(currency)
        revenue = f.get("revenue", projection.Projection(zero, zero))
        overdue_minor, overdue_count = f.get("overdue", (0, 0))
        failed_minor, failed_count = f.get("failed", (0, 0))
        figures.append(
            Figures(
                currency=currency,
                revenue_so_far=revenue.so_far,
                revenue_projected=revenue.projected,
                receivables=Money(f.get("receivables", 0), currency),
                overdue=Money(overdue_minor, currency),
                overdue_count=overdue_count,
                failed_payments=Money(failed_minor, currency),
                failed_payments_count=failed_count,
            )
        )
    counts = counts_of(ranks)
    plans, mrr = _plan_figures(subscribers)
    return Overview(
        now=now,
        period_start=start,
        period_end=end,
        figures=figures,
        standing={s: counts.get(s, 0) for s in STANDINGS},
        accounts=sum(counts.values()),
        plans=plans,
        mrr=mrr,
    )


def failed_payments(now: datetime, *, page: int = 1, per_page: int = 50):
    """The card payments that failed in the last FAILED_PAYMENTS_DAYS days, newest first."""
    stmt = select(PaymentAttempt, User.email).join(User, User.id == PaymentAttempt.user_id)
    stmt = stmt.where(
        PaymentAttempt.status == AttemptStatus.FAILED.value,
        PaymentAttempt.updated_at >= now - timedelta(days=FAILED_PAYMENTS_DAYS),
    )
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = db.session.execute(
        stmt.order_by(PaymentAttempt.updated_at.desc(), PaymentAttempt.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    items = [(a, email, Money(a.amount_minor, a.currency)) for a, email in rows]
    return Page(items, page, per_page, total)

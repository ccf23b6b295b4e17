"""What a user has spent in the current billing period, as budgets count it.

Spending = the period's metered usage so far, priced and rounded once as the invoice prices
it (the Overview's "usage so far"), plus the fee of the plan held for one period (an annual
plan's fee over twelve). By billing mode: usage accounts count the usage; subscription
accounts the fee (the plan includes the usage); hybrid accounts both, every metered resource
included (the cap errs on the side of warning early).

``by_user`` reads many accounts in a few grouped queries (the job); ``columns`` and
``from_row`` are the same figure as scalar subqueries, for standing and can-deploy to read in
their one statement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from fractions import Fraction

from sqlalchemy import ColumnElement, func, select

from ...extensions import db
from ...models import (
    BillingMode,
    PlanVersion,
    Subscription,
    SubscriptionStatus,
    UsageDaily,
    User,
)
from ...money import currency_digits
from ..calendar import invoice_day, period_containing
from ..invoicing.subscribed import mode_of
from ..metering import projection
from ..metering.usage import month_seconds, round_micros


def fee_minor(price_minor: int, interval: str) -> int:
    """A plan's fee for one billing period: an annual fee over twelve, half up."""
    if interval == "year":
        return (2 * price_minor + 12) // 24
    return price_minor


def counts(user: User) -> tuple[bool, bool]:
    """(usage counts, plan fee counts) for the user's billing mode."""
    mode = mode_of(user.billing_mode)
    return mode is not BillingMode.SUBSCRIPTION, mode is not BillingMode.USAGE


def by_user(users: list[User], now: datetime) -> dict[int, int]:
    """Each user's spending so far this period, in minor units of their currency."""
    if not users:
        return {}
    so_far = projection.by_user([(u.id, u.currency) for u in users], now)
    fees = dict(
        db.session.execute(
            select(Subscription.user_id, PlanVersion)
            .join(PlanVersion, PlanVersion.id == Subscription.plan_version_id)
            .where(
                Subscription.user_id.in_([u.id for u in users]),
                Subscription.status == str(SubscriptionStatus.ACTIVE),
            )
        ).all()
    )
    out = {}
    for user in users:
        usage, fee = counts(user)
        version = fees.get(user.id)
        out[user.id] = (so_far[user.id].so_far.amount_minor if usage else 0) + (
            fee_minor(version.price_minor, version.interval)
            if fee and version is not None and version.currency == user.currency
            else 0
        )
    return out


# -- the same figure in one statement ----------------------------------------------------


@dataclass(frozen=True)
class Months:
    """The calendar months the period [start, end) touches, each with its part of it."""

    start: date
    end: date
    parts: tuple[tuple[date, date], ...]


def months_of(now: datetime) -> Months:
    start, end = period_containing(now, invoice_day())
    return months_between(start.date(), end.date())


def months_between(start: date, end: date) -> Months:
    """The days [start, end) split at the calendar months."""
    parts, lo = [], start
    while lo < end:
        first_next = date(lo.year + lo.month // 12, lo.month % 12 + 1, 1)
        hi = min(first_next, end)
        parts.append((lo, hi))
        lo = hi
    return Months(start, end, tuple(parts))


def usage_columns(user_id, months: Months) -> list[ColumnElement]:
    """Scalar subqueries on ix_usage_daily_user_id_day: the usage of the days ``months``
    covers, priced per hour (cpu and memory; instances and IPs) and, storage, per month."""
    u = UsageDaily

    def usage(expr, lo: date, hi: date):
        return (
            select(func.coalesce(func.sum(expr), 0))
            .where(u.user_id == user_id, u.day >= lo, u.day < hi)
            .scalar_subquery()
        )

    return [
        usage(u.cpu_cost + u.memory_cost, months.start, months.end),
        usage(u.instance_cost + u.ip_cost, months.start, months.end),
        *(usage(u.storage_cost, lo, hi) for lo, hi in months.parts),
    ]


def usage_micros(values, months: Months) -> Fraction:
    """Exact micro-units of what ``usage_columns`` read."""
    per_hour_ms, per_hour_s, *storage = values
    exact = Fraction(int(per_hour_ms or 0), 3_600_000) + Fraction(int(per_hour_s or 0), 3600)
    for (lo, _), cost in zip(months.parts, storage, strict=True):
        exact += Fraction(int(cost or 0), 1000 * month_seconds(lo))
    return exact


def columns(user_id: int, months: Months) -> list[ColumnElement]:
    """Scalar subqueries on ix_usage_daily_user_id_day and the subscription: per-hour
    usage (cpu and memory), per-hour usage (instances and IPs), storage of each month, the
    plan's price, interval and currency."""

    def plan(column):
        return (
            select(column)
            .join(Subscription, Subscription.plan_version_id == PlanVersion.id)
            .where(
                Subscription.user_id == user_id,
                Subscription.status == str(SubscriptionStatus.ACTIVE),
            )
            .scalar_subquery()
        )

    return [
        *usage_columns(user_id, months),
        plan(PlanVersion.price_minor),
        plan(PlanVersion.interval),
        plan(PlanVersion.currency),
    ]


def width(months: Months) -> int:
    """How many values ``columns`` reads."""
    return 2 + len(months.parts) + 3


def from_row(user: User, values, months: Months) -> int:
    """Spending from what ``columns`` read (the same arithmetic as ``by_user``)."""
    used, (price, interval, plan_currency) = values[:-3], values[-3:]
    exact = usage_micros(used, months)
    usage, fee = counts(user)
    spent = round_micros(exact, user.currency).amount_minor if usage else 0
    if fee and price is not None and plan_currency == user.currency:
        spent += fee_minor(int(price), str(interval))
    return spent


def minor_to_micros(minor: int, currency: str) -> int:
    return minor * 10 ** (6 - currency_digits(currency))


def percent(spent_minor: int, cap_minor: int) -> int:
    """Whole percent of the cap spent, rounded down (a cap is more than 0)."""
    return spent_minor * 100 // cap_minor

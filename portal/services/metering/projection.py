"""The current billing period's usage, priced exactly, and its projection to the period's
end, for many accounts in a few grouped queries (never one query per account). The same
arithmetic as a user's Usage page: exact micro-units, rounded once to the currency."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from sqlalchemy import extract, func, select

from ...extensions import db
from ...models import DeploymentInterval, MeterMark, UsageDaily, User
from ...money import Money
from ..calendar import invoice_day, period_containing
from . import rollups
from .usage import month_seconds, round_micros


@dataclass(frozen=True)
class Projection:
    so_far: Money
    projected: Money


def _usage_sums(start: datetime, end: datetime, key, where) -> dict:
    """Exact micro-units of metered usage in [start, end), grouped by ``key``. Storage is
    priced per month, so rows are grouped by month as well."""
    month = extract("month", UsageDaily.day)
    year = extract("year", UsageDaily.day)
    stmt = (
        select(
            key,
            year,
            month,
            func.sum(UsageDaily.cpu_cost + UsageDaily.memory_cost),
            func.sum(UsageDaily.storage_cost),
            func.sum(UsageDaily.instance_cost + UsageDaily.ip_cost),
        )
        .join(User, User.id == UsageDaily.user_id)
        .where(UsageDaily.day >= start.date(), UsageDaily.day < end.date(), *where)
        .group_by(key, year, month)
    )
    out: dict = defaultdict(Fraction)
    for k, y, m, per_hour_ms, storage, per_hour_s in db.session.execute(stmt):
        first = datetime(int(y), int(m), 1).date()
        out[k] += Fraction(int(per_hour_ms or 0), 3_600_000)
        out[k] += Fraction(int(storage or 0), 1000 * month_seconds(first))
        out[k] += Fraction(int(per_hour_s or 0), 3600)
    return out


def _burn_sums(key, where, at: datetime) -> dict:
    """What running deployments cost per hour now (exact micro-units), grouped by ``key``."""
    i = DeploymentInterval
    stmt = (
        select(
            key,
            func.sum(i.cpu_milli * i.cpu_rate_micros + i.memory_mgb * i.memory_rate_micros),
            func.sum(i.storage_mgb * i.storage_rate_micros),
            func.sum(i.instances * i.instance_rate_micros + i.public_ips * i.ip_rate_micros),
        )
        .join(User, User.id == i.user_id)
        .where(i.end_epoch.is_(None), *where)
        .group_by(key)
    )
    hours_in_month = Fraction(month_seconds((at - _DAY).date()), 3600)
    out: dict = {}
    for k, per_milli, storage, per_hour in db.session.execute(stmt):
        out[k] = (
            Fraction(int(per_milli or 0), 1000)
            + Fraction(int(storage or 0), 1000) / hours_in_month
            + int(per_hour or 0)
        )
    return out


def _remaining_hours(mark: datetime | None, now: datetime, start: datetime, end: datetime):
    since = max(mark or now, start)
    return Fraction(int((end - since).total_seconds()), 3600)


def by_user(users: Iterable[tuple[int, str]], now: datetime) -> dict[int, Projection]:
    """``users``: (id, currency) pairs. The current period's usage and projection of each."""
    users = list(users)
    if not users:
        return {}
    start, end = period_containing(now, invoice_day())
    ids = [u for u, _ in users]
    so_far = _usage_sums(start, end, UsageDaily.user_id, [UsageDaily.user_id.in_(ids)])
    burn = _burn_sums(DeploymentInterval.user_id, [DeploymentInterval.user_id.in_(ids)], end)
    marks = _marks({rollups.chunk_of(u) for u in ids})
    out = {}
    for user_id, currency in users:
        exact = so_far.get(user_id, Fraction(0))
        hours = _remaining_hours(marks.get(rollups.chunk_of(user_id)), now, start, end)
        out[user_id] = Projection(
            round_micros(exact, currency),
            round_micros(exact + burn.get(user_id, Fraction(0)) * hours, currency),
        )
    return out


def by_currency(now: datetime) -> dict[str, Projection]:
    """Every account's current period together, per currency: the usage metered so far and
    the projection (running deployments at today's rates until the period ends, from the
    oldest metering mark)."""
    start, end = period_containing(now, invoice_day())
    so_far = _usage_sums(start, end, User.currency, [])
    burn = _burn_sums(User.currency, [], end)
    oldest = db.session.scalar(select(func.min(MeterMark.metered_through)))
    hours = _remaining_hours(oldest, now, start, end)
    out = {}
    for currency in sorted(set(so_far) | set(burn)):
        exact = so_far.get(currency, Fraction(0))
        out[currency] = Projection(
            round_micros(exact, currency),
            round_micros(exact + burn.get(currency, Fraction(0)) * hours, currency),
        )
    return out


def _marks(chunks: set[int]) -> dict[int, datetime]:
    rows = db.session.execute(
        select(MeterMark.chunk, MeterMark.metered_through).where(MeterMark.chunk.in_(chunks))
    )
    return {c: m for c, m in rows}


_DAY = timedelta(days=1)

"""The current billing period's usage, priced exactly, and its projection to the period's
end, for many accounts in a few grouped queries (never one query per account). The same
arithmetic as a user's Usage page: exact micro-units, rounded once to the currency."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from fractions import Fraction

from sqlalchemy import BindParameter, Select, bindparam, extract, func, select

from ...extensions import db
from ...models import DeploymentInterval, MeterMark, UsageDaily
from ...money import Money
from ..calendar import invoice_day, period_containing
from . import rollups, totals
from .usage import month_seconds, round_micros


@dataclass(frozen=True)
class Projection:
    so_far: Money
    projected: Money


def _usage_query(key, where) -> Select:
    """Metered usage in [:start_day, :end_day), grouped by ``key``. Storage is priced per
    month, so rows are grouped by month as well."""
    month = extract("month", UsageDaily.day)
    year = extract("year", UsageDaily.day)
    return (
        select(
            key,
            year,
            month,
            func.sum(UsageDaily.cpu_cost + UsageDaily.memory_cost),
            func.sum(UsageDaily.storage_cost),
            func.sum(UsageDaily.instance_cost + UsageDaily.ip_cost),
        )
        .where(
            UsageDaily.day >= bindparam("start_day"),
            UsageDaily.day < bindparam("end_day"),
            *where,
        )
        .group_by(key, year, month)
    )


def _usage_sums(stmt: Select, start: datetime, end: datetime, **params) -> dict:
    """Exact micro-units of metered usage in [start, end), by the key of ``stmt`` (a
    ``_usage_query``)."""
    out: dict = defaultdict(Fraction)
    rows = db.session.execute(stmt, {"start_day": start.date(), "end_day": end.date(), **params})
    for k, y, m, per_hour_ms, storage, per_hour_s in rows:
        out[k] += _exact(date(int(y), int(m), 1), per_hour_ms, storage, per_hour_s)
    return out


def _exact(month: date, per_hour_ms, storage, per_hour_s) -> Fraction:
    """Micro-units of a month's summed cost numerators (see models/usage.py)."""
    return (
        Fraction(int(per_hour_ms or 0), 3_600_000)
        + Fraction(int(storage or 0), 1000 * month_seconds(month))
        + Fraction(int(per_hour_s or 0), 3600)
    )


def _burn_query(key, where) -> Select:
    """What running deployments cost per hour now, grouped by ``key``."""
    i = DeploymentInterval
    return (
        select(
            key,
            func.sum(i.cpu_milli * i.cpu_rate_micros + i.memory_mgb * i.memory_rate_micros),
            func.sum(i.storage_mgb * i.storage_rate_micros),
            func.sum(i.instances * i.instance_rate_micros + i.public_ips * i.ip_rate_micros),
        )
        .where(i.end_epoch.is_(None), *where)
        .group_by(key)
    )


def _burn_sums(stmt: Select, at: datetime, **params) -> dict:
    """What running deployments cost per hour now (exact micro-units), by the key of
    ``stmt`` (a ``_burn_query`` or ``totals.running_by_currency``)."""
    hours_in_month = Fraction(month_seconds((at - _DAY).date()), 3600)
    out: dict = {}
    for k, per_milli, storage, per_hour in db.session.execute(stmt, params):
        out[k] = (
            Fraction(int(per_milli or 0), 1000)
            + Fraction(int(storage or 0), 1000) / hours_in_month
            + int(per_hour or 0)
        )
    return out


@functools.cache
def _user_queries() -> tuple[Select, Select]:
    """The usage and burn queries by user (of ``:ids``); built once (pages read them on
    every request, and building a statement costs more than running it)."""
    ids: BindParameter[list[int]] = bindparam("ids", expanding=True)
    return (
        _usage_query(UsageDaily.user_id, [UsageDaily.user_id.in_(ids)]),
        _burn_query(DeploymentInterval.user_id, [DeploymentInterval.user_id.in_(ids)]),
    )


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
    usage_query, burn_query = _user_queries()
    so_far = _usage_sums(usage_query, start, end, ids=ids)
    burn = _burn_sums(burn_query, end, ids=ids)
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
    so_far: dict = defaultdict(Fraction)
    # From the running totals: a few hundred rows, not one per deployment and day, and a
    # few for what runs now, not one per running deployment.
    for currency, y, m, per_hour_ms, storage, per_hour_s in totals.by_currency_and_month(
        start.date(), end.date()
    ):
        so_far[currency] += _exact(date(y, m, 1), per_hour_ms, storage, per_hour_s)
    burn = _burn_sums(totals.running_by_currency(), end)
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


_MARKS = select(MeterMark.chunk, MeterMark.metered_through).where(
    MeterMark.chunk.in_(bindparam("chunks", expanding=True))
)


def _marks(chunks: set[int]) -> dict[int, datetime]:
    rows = db.session.execute(_MARKS, {"chunks": sorted(chunks)})
    return {c: m for c, m in rows}


_DAY = timedelta(days=1)

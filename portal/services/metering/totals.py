"""Running sums that spare the admin dashboard from reading every account's rows.

- ``usage_totals``: the rollups' costs by day, chunk of users and currency. Every statement
  that changes ``usage_daily`` changes them by the same amounts in the same transaction:
  metering adds a window's usage to both from the intervals (``rollups``), a deployment
  metered again takes its old rows away first (``take_away``), archiving a year deletes
  both (``delete_days``). A period's revenue for every account is then a few hundred rows,
  not one per deployment and day.
- ``running_costs``: what the open deployment intervals cost per hour, by chunk and
  currency. Opening or closing an interval adds or takes away its hourly cost
  (``add_running``), so what runs now is a few rows, not one per running deployment.

The chunk only spreads the rows: concurrent runs and changes of different chunks never
update the same row. `flask billing usage-audit` proves both equal to what they sum
(``audit``); ``recount`` works them out again after rows were written in bulk.
"""

from __future__ import annotations

import functools
from datetime import date

from sqlalchemy import Select, delete, extract, func, select, text

from ...extensions import db
from ...models import DeploymentInterval, RunningCost, UsageDaily, UsageTotal, User

COSTS = ("cpu_cost", "memory_cost", "storage_cost", "instance_cost", "ip_cost")
# An interval's hourly cost, per resource: (RunningCost column, quantity, rate).
RATES = (
    ("cpu", "cpu_milli", "cpu_rate_micros"),
    ("memory", "memory_mgb", "memory_rate_micros"),
    ("storage", "storage_mgb", "storage_rate_micros"),
    ("instance", "instances", "instance_rate_micros"),
    ("ip", "public_ips", "ip_rate_micros"),
)
HOURLY = tuple(c for c, _, _ in RATES)  # RunningCost's columns

_UPSERT = f"""
INSERT INTO usage_totals (day, chunk, currency, {", ".join(COSTS)})
{{select}}
ON CONFLICT (day, chunk, currency) DO UPDATE SET
    {", ".join(f"{c} = usage_totals.{c} + excluded.{c}" for c in COSTS)}
"""

# One day's window of usage from the intervals, as rollups._ROLLUP_SQL adds it to the
# rollups: ``{intervals}`` is its subquery (rows with their seconds in ``secs``). The users
# are limited by ``{users}`` as well as the join, so the join reads the chunk's users by
# their primary key, not the whole table.
FROM_INTERVALS = _UPSERT.format(
    select=f"""SELECT :day, :chunk, u.currency,
       {", ".join(f":sign * SUM(s.secs * s.{q} * s.{r})" for _, q, r in RATES)}
FROM ({{intervals}}) s JOIN users u ON u.id = s.user_id
WHERE {{users}}
GROUP BY u.currency"""
)

_TAKE_AWAY = _UPSERT.format(
    select=f"""SELECT d.day, :chunk, u.currency, {", ".join(f"-SUM(d.{c})" for c in COSTS)}
FROM usage_daily d JOIN users u ON u.id = d.user_id
WHERE d.deployment_id = :deployment_id AND d.day >= :first AND u.id = :user_id
GROUP BY d.day, u.currency"""
)


def take_away(deployment_id: int, user_id: int, chunk: int, first_day: date) -> None:
    """Before a deployment's rollup rows from ``first_day`` on are deleted (to be metered
    again): take them out of the totals."""
    db.session.execute(
        text(_TAKE_AWAY),
        {"deployment_id": deployment_id, "user_id": user_id, "chunk": chunk, "first": first_day},
    )


def delete_days(start: date, end: date) -> None:
    """With the rollups of [start, end) (an archived year)."""
    db.session.execute(delete(UsageTotal).where(UsageTotal.day >= start, UsageTotal.day < end))


def by_currency_and_month(start: date, end: date) -> list[tuple[str, int, int, int, int, int]]:
    """The costs of [start, end) summed by currency and month: (currency, year, month,
    cpu and memory, storage, instances and IPs) as exact numerators (see models/usage.py).
    Storage is priced per month, so the rows are per month."""
    t = UsageTotal
    year, month = extract("year", t.day), extract("month", t.day)
    rows = db.session.execute(
        select(
            t.currency,
            year,
            month,
            func.sum(t.cpu_cost + t.memory_cost),
            func.sum(t.storage_cost),
            func.sum(t.instance_cost + t.ip_cost),
        )
        .where(t.day >= start, t.day < end)
        .group_by(t.currency, year, month)
    )
    return [
        (currency, int(y), int(m), int(a or 0), int(b or 0), int(c or 0))
        for currency, y, m, a, b, c in rows
    ]


def _audit_totals() -> list[str]:
    d = UsageDaily
    kept = select(
        UsageTotal.day, UsageTotal.currency, *(func.sum(getattr(UsageTotal, c)) for c in COSTS)
    ).group_by(UsageTotal.day, UsageTotal.currency)
    summed = (
        select(d.day, User.currency, *(func.sum(getattr(d, c)) for c in COSTS))
        .join(User, User.id == d.user_id)
        .group_by(d.day, User.currency)
    )
    return _differences(
        COSTS,
        _sums(kept),
        _sums(summed),
        lambda key: f"usage totals on {key[0]} ({key[1]})",
        "(rollups)",
    )


_ADD_RUNNING = f"""
INSERT INTO running_costs (chunk, currency, {", ".join(HOURLY)})
SELECT :chunk, u.currency, {", ".join(f":{c}" for c in HOURLY)}
FROM users u WHERE u.id = :user_id
ON CONFLICT (chunk, currency) DO UPDATE SET
    {", ".join(f"{c} = running_costs.{c} + excluded.{c}" for c in HOURLY)}
"""


def hourly(interval: DeploymentInterval) -> dict[str, int]:
    """An interval's cost numerators per hour, by RunningCost column."""
    return {c: getattr(interval, q) * getattr(interval, r) for c, q, r in RATES}


def add_running(user_id: int, chunk: int, change: dict[str, int]) -> None:
    """Add ``change`` (by RunningCost column; negative to take away) to the running costs
    of the user's chunk and currency. The caller holds the chunk's mark lock."""
    if any(change.values()):
        db.session.execute(text(_ADD_RUNNING), {"user_id": user_id, "chunk": chunk, **change})


@functools.cache
def running_by_currency() -> Select:
    """The running costs by currency, in the shape of projection's burn query: (currency,
    cpu and memory, storage, instances and IPs). Built once."""
    r = RunningCost
    return select(
        r.currency, func.sum(r.cpu + r.memory), func.sum(r.storage), func.sum(r.instance + r.ip)
    ).group_by(r.currency)


def _audit_running() -> list[str]:
    i = DeploymentInterval
    kept = select(
        RunningCost.currency, *(func.sum(getattr(RunningCost, c)) for c in HOURLY)
    ).group_by(RunningCost.currency)
    summed = (
        select(User.currency, *(func.sum(getattr(i, q) * getattr(i, r)) for _, q, r in RATES))
        .join(User, User.id == i.user_id)
        .where(i.end_epoch.is_(None))
        .group_by(User.currency)
    )
    return _differences(
        HOURLY,
        _sums(kept, key_columns=1),
        _sums(summed, key_columns=1),
        lambda key: f"running costs ({key[0]})",
        "(open intervals)",
    )


def audit() -> list[str]:
    """Differences between the running costs and the open intervals, and between the
    totals and the rollups by day and currency (summed over the chunks). Empty when they
    agree."""
    return _audit_running() + _audit_totals()


def _sums(statement: Select, key_columns: int = 2) -> dict[tuple, list[int]]:
    return {
        tuple(row[:key_columns]): [int(v or 0) for v in row[key_columns:]]
        for row in db.session.execute(statement)
    }


def _differences(columns, kept: dict, summed: dict, name, source: str) -> list[str]:
    zero = [0] * len(columns)
    problems = []
    for key in sorted(set(kept) | set(summed)):
        have, want = kept.get(key, zero), summed.get(key, zero)
        if have != want:
            diffs = ", ".join(
                f"{c} {a} != {b}" for c, a, b in zip(columns, have, want, strict=True) if a != b
            )
            problems.append(f"{name(key)}: {diffs} {source}")
    return problems


def recount(chunk_size: int) -> None:
    """Both sums worked out again from what they sum: for rollups or intervals written in
    bulk past the statements that keep them (a benchmark's seeding, a data import). Takes
    no locks: run it while nothing meters or changes deployments."""
    chunk = f"/ {int(chunk_size):d}"
    db.session.execute(delete(UsageTotal))
    db.session.execute(
        text(
            _UPSERT.format(
                select=f"""SELECT d.day, d.user_id {chunk}, u.currency,
                {", ".join(f"SUM(d.{c})" for c in COSTS)}
                FROM usage_daily d JOIN users u ON u.id = d.user_id
                GROUP BY d.day, d.user_id {chunk}, u.currency"""
            )
        )
    )
    db.session.execute(delete(RunningCost))
    db.session.execute(
        text(
            f"INSERT INTO running_costs (chunk, currency, {', '.join(HOURLY)}) "
            f"SELECT i.user_id {chunk}, u.currency, "
            f"{', '.join(f'SUM(i.{q} * i.{r})' for _, q, r in RATES)} "
            "FROM deployment_intervals i JOIN users u ON u.id = i.user_id "
            f"WHERE i.end_epoch IS NULL GROUP BY i.user_id {chunk}, u.currency"
        )
    )

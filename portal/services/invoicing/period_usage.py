"""A billing period's usage, per user and deployment, summed from the daily rollups in one
query (what invoice runs bill, and what prepaid accounts are charged for hour by hour)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import text

from ...extensions import db
from ..metering.costs import Usage


def _sums(*terms: str) -> str:
    # As integers: PostgreSQL's SUM(bigint) is a numeric, which would arrive as Decimals.
    return ", ".join(f"CAST(SUM({term}) AS BIGINT)" for term in terms)


_SUMS = _sums(
    "cpu_ms",
    "cpu_cost",
    "memory_ms",
    "memory_cost",
    "CASE WHEN day < :split THEN storage_ms ELSE 0 END",
    "CASE WHEN day < :split THEN storage_cost ELSE 0 END",
    "CASE WHEN day >= :split THEN storage_ms ELSE 0 END",
    "CASE WHEN day >= :split THEN storage_cost ELSE 0 END",
    "instance_s",
    "instance_cost",
    "ip_s",
    "ip_cost",
)
# A period inside one calendar month (invoice day 1) has no second month to split off.
_SUMS_ONE_MONTH = (
    _sums("cpu_ms", "cpu_cost", "memory_ms", "memory_cost", "storage_ms", "storage_cost")
    + ", 0, 0, "
    + _sums("instance_s", "instance_cost", "ip_s", "ip_cost")
)


def _to_usage(
    row: Sequence[int], first_month: tuple[int, int], second_month: tuple[int, int]
) -> Usage:
    (
        cpu_ms,
        cpu_cost,
        memory_ms,
        memory_cost,
        storage1_ms,
        storage1_cost,
        storage2_ms,
        storage2_cost,
        instance_s,
        instance_cost,
        ip_s,
        ip_cost,
    ) = row
    storage: dict[tuple[int, int], list[int]] = {}
    if storage1_ms or storage1_cost:
        storage[first_month] = [storage1_ms, storage1_cost]
    if storage2_ms or storage2_cost:
        storage[second_month] = [storage2_ms, storage2_cost]
    return Usage(
        cpu_ms, cpu_cost, memory_ms, memory_cost, storage, instance_s, instance_cost, ip_s, ip_cost
    )


def period_usage(
    user_lo: int, user_hi: int, start: datetime, end: datetime, user_ids: list[int] | None
) -> dict[int, dict[int, Usage]]:
    """Per user, per deployment: the period's summed rollups, in one query."""
    split = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
    months = ((start.year, start.month), (split.year, split.month))
    where = "user_id >= :lo AND user_id < :hi AND day >= :start AND day < :end"
    params = {
        "lo": user_lo,
        "hi": user_hi,
        "start": start.date(),
        "end": end.date(),
        "split": split,
    }
    if user_ids is not None:
        where += " AND user_id IN (" + ", ".join(str(int(u)) for u in user_ids) + ")"
    sums = _SUMS_ONE_MONTH if end.date() <= split else _SUMS
    if db.engine.dialect.name == "postgresql":
        # For this transaction: room to aggregate a chunk's month (~30 rows per deployment) in
        # memory, not in a sort spilled to disk; and the snapshots, which TOAST compresses,
        # compressed with lz4 where the server has it (a fraction of pglz's CPU).
        db.session.execute(
            text(
                "SELECT set_config('work_mem', '64MB', true), "
                "(SELECT set_config(name, 'lz4', true) FROM pg_settings "
                " WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals))"
            )
        )
    result: dict[int, dict[int, Usage]] = defaultdict(dict)
    for row in db.session.execute(
        text(
            f"SELECT user_id, deployment_id, {sums} FROM usage_daily WHERE {where} "
            "GROUP BY user_id, deployment_id"
        ),
        params,
    ).all():
        result[row[0]][row[1]] = _to_usage(row[2:], *months)
    return result

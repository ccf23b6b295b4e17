"""Monthly partitions of usage_daily (by ``day``) and ledger_entries (by ``created_at``) on
PostgreSQL. Migration 0021 made the tables partitioned, with a partition per month covering
their rows up to three months ahead and a DEFAULT partition; ``ensure_partitions`` (the
daemon's daily ``create-partitions`` job) keeps three months ahead. A row of a month with no
partition yet lands in the DEFAULT partition; creating that month's partition moves it out.
On SQLite the tables are plain and every function here does nothing."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

from sqlalchemy import text

from ...db import PARTITIONED, rowcount
from ...extensions import db
from ...models import utcnow

log = logging.getLogger(__name__)

AHEAD = 3  # months of partitions kept ready past the current one
# The partition key of each partitioned table, and whether it is a timestamptz (else a date).
KEYS = {"usage_daily": ("day", False), "ledger_entries": ("created_at", True)}
assert set(KEYS) == set(PARTITIONED)
LOCK_KEY = 0x70617274  # the advisory lock that serializes making partitions


def enabled() -> bool:
    return db.engine.dialect.name == "postgresql"


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def partition_name(table: str, month: date) -> str:
    return f"{table}_y{month.year}m{month.month:02d}"


def _bound(table: str, month: date) -> str:
    return f"'{month.isoformat()} 00:00:00+00'" if KEYS[table][1] else f"'{month.isoformat()}'"


def partitions(table: str) -> list[str]:
    """The names of ``table``'s partitions (the DEFAULT one included), sorted."""
    return sorted(
        db.session.scalars(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST(:parent AS regclass)"
            ),
            {"parent": table},
        )
    )


def create_partition(table: str, month: date) -> bool:
    """Create ``table``'s partition of ``month`` unless it exists, moving that month's rows
    out of the DEFAULT partition. Flushes only; True when it was created.

    The partition is built as a table of its own and attached: attaching scans the DEFAULT
    partition (under its lock) to prove none of its rows belongs to the new month, which the
    move made true in this transaction."""
    name = partition_name(table, month)
    if name in partitions(table):
        return False
    # The daily job and an archive may both make a month's partition: one at a time.
    db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    if name in partitions(table):
        return False
    key = KEYS[table][0]
    lo, hi = _bound(table, month), _bound(table, next_month(month))
    db.session.execute(
        text(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    moved = rowcount(
        db.session.execute(
            text(
                f"WITH moved AS (DELETE FROM {table}_default WHERE {key} >= {lo} AND {key} < {hi} "
                f"RETURNING *) INSERT INTO {name} SELECT * FROM moved"
            )
        )
    )
    db.session.execute(
        text(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})")
    )
    log.info("partition %s created (%d row(s) moved from %s_default)", name, moved, table)
    return True


def month_of(at: datetime | date) -> date:
    if isinstance(at, datetime):
        at = at.astimezone(UTC).date()
    return date(at.year, at.month, 1)


def ensure_partitions(now: datetime | None = None, ahead: int = AHEAD) -> list[str]:
    """Every partitioned table has its partitions from this month to ``ahead`` months on.
    Flushes only; returns the names of the partitions created."""
    if not enabled():
        return []
    months = [month_of(now or utcnow())]
    for _ in range(ahead):
        months.append(next_month(months[-1]))
    created = []
    for table in KEYS:
        for month in months:
            if create_partition(table, month):
                created.append(partition_name(table, month))
    return created


def drop_partition(table: str, month: date) -> None:
    """Detach and drop ``table``'s partition of ``month`` (the archive has its rows)."""
    name = partition_name(table, month)
    db.session.execute(text(f"ALTER TABLE {table} DETACH PARTITION {name}"))
    db.session.execute(text(f"DROP TABLE {name}"))
    log.info("partition %s detached and dropped", name)

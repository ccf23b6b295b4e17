"""Monthly partitions on PostgreSQL: made ahead by the daemon's job, rows of a month without
its partition wait in DEFAULT and move in when it is made, queries by month prune."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from portal.extensions import db
from portal.services.retention import jobs, partitions
from portal.tasks import scheduler

pytestmark = pytest.mark.postgres


def _where(table: str, key: str, value: str) -> str:
    return db.session.scalar(
        text(
            f"SELECT tableoid::regclass::text FROM {table} WHERE {key} = CAST(:v AS {'date' if key == 'day' else 'timestamptz'})"
        ),
        {"v": value},
    )


def _scanned(plan: str, table: str) -> set[str]:
    """The partitions a plan reads (each appears as "on <partition> <table>")."""
    return set(re.findall(rf"on ({table}_\w+) {table}\b", plan))


def test_the_job_makes_three_months_ahead_and_moves_rows_out_of_default(ctx):
    db.session.execute(
        text(
            "INSERT INTO usage_daily (deployment_id, day, user_id, cpu_ms, cpu_cost, memory_ms, "
            "memory_cost, storage_ms, storage_cost, instance_s, instance_cost, ip_s, ip_cost) "
            "VALUES (1, '2031-02-03', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)"
        )
    )
    db.session.commit()
    assert _where("usage_daily", "day", "2031-02-03") == "usage_daily_default"

    created = partitions.ensure_partitions(now=datetime(2031, 1, 15, tzinfo=UTC))
    db.session.commit()
    assert created == [
        f"{table}_y2031m{m:02d}"
        for table in ("usage_daily", "ledger_entries")
        for m in (1, 2, 3, 4)
    ]
    assert _where("usage_daily", "day", "2031-02-03") == "usage_daily_y2031m02"
    assert partitions.ensure_partitions(now=datetime(2031, 1, 15, tzinfo=UTC)) == []
    # each new partition carries the parent's primary key and indexes
    indexes = db.session.scalars(
        text("SELECT indexname FROM pg_indexes WHERE tablename = 'ledger_entries_y2031m02'")
    ).all()
    assert len(indexes) == 3
    db.session.execute(text("DELETE FROM usage_daily"))
    db.session.commit()


def test_the_job_is_on_the_daemons_schedule(ctx):
    assert scheduler.find_job("create-partitions").cron == "20 0 * * *"
    assert jobs.create_partitions()["created"] >= 0


def test_a_months_query_reads_that_months_partition_only(ctx):
    month = partitions.month_of(datetime.now(UTC))
    plan = "\n".join(
        db.session.scalars(
            text(
                "EXPLAIN SELECT user_id, SUM(cpu_cost) FROM usage_daily "
                "WHERE day >= :lo AND day < :hi GROUP BY user_id"
            ),
            {"lo": month, "hi": partitions.next_month(month)},
        )
    )
    assert _scanned(plan, "usage_daily") == {partitions.partition_name("usage_daily", month)}
    lo = datetime(month.year, month.month, 1, tzinfo=UTC)
    hi_month = partitions.next_month(month)
    plan = "\n".join(
        db.session.scalars(
            text(
                "EXPLAIN SELECT account_id, SUM(amount_minor) FROM ledger_entries "
                "WHERE created_at >= :lo AND created_at < :hi GROUP BY account_id"
            ),
            {"lo": lo, "hi": datetime(hi_month.year, hi_month.month, 1, tzinfo=UTC)},
        )
    )
    assert _scanned(plan, "ledger_entries") == {partitions.partition_name("ledger_entries", month)}

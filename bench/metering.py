"""Metering benchmark: meter one hour of 100,000 active deployments across 10,000 users.

Prints one JSON line:
{"bench": "metering", "db": ..., "deployments": 100000, "rows": ..., "wall_s": ...,
 "floor_s": ..., "ratio": ..., "peak_rss_mb": ..., "table_mb_per_month": ...,
 "rows_per_month": ...}

- wall_s: `runs.meter_all` for one hour (claims every chunk's mark, one set-based
  INSERT ... SELECT ... ON CONFLICT per chunk), committed.
- floor_s: the same rows written by one plain INSERT ... SELECT ... ON CONFLICT into a table
  of the same shape and primary key, with none of our logic (no marks, no chunks).
- peak_rss_mb: the process's peak resident memory (seeding is done in SQL, not Python).
- table_mb_per_month: the usage tables' size (rollups with their indexes, on PostgreSQL the
  sum of the month partitions', plus the marks) and rows_per_month the rollup rows,
  after metering a 30-day month of the same deployments, in day-sized steps (the rows are
  the same as hourly metering writes; hourly upserts also leave dead tuples on PostgreSQL
  until autovacuum reclaims them).

DATABASE_URL selects the database (default: PostgreSQL at 127.0.0.1:5432, database
`portal_bench_metering`, created afresh). Usage: .venv/bin/python bench/metering.py
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

import flask_migrate
import psycopg
from sqlalchemy import bindparam, insert, text

from portal import create_app
from portal.extensions import db
from portal.models import MeterMark
from portal.models.types import UTCDateTime
from portal.services.metering import catalog, rollups, runs
from portal.services.metering.rollups import _SECONDS
from portal.services.retention import partitions
from portal.services.wallet import ledger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

USERS = int(os.environ.get("BENCH_USERS", 10_000))
PER_USER = int(os.environ.get("BENCH_DEPLOYMENTS_PER_USER", 10))
START = datetime(2026, 9, 1, tzinfo=UTC)
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1]
            if os.path.exists(path):
                os.remove(path)
        return url

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS portal_bench_metering WITH (FORCE)")
        conn.execute("CREATE DATABASE portal_bench_metering")
    return PG_ADMIN.rsplit("/", 1)[0] + "/portal_bench_metering"


SEQ = "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < :count) "


def sql(statement: str):
    """A statement whose :now is bound as the models bind times (naive UTC on SQLite)."""
    clause = text(statement)
    return (
        clause.bindparams(bindparam("now", type_=UTCDateTime())) if ":now" in statement else clause
    )


def seed(db, text) -> None:
    """Users, deployments and their open intervals, in set-based SQL."""
    version = catalog.ensure_catalog()
    db.session.commit()
    now = START
    start_epoch = int(START.timestamp())
    db.session.execute(
        sql(
            SEQ
            + """
        INSERT INTO users (id, email, name, is_admin, is_enabled, auth_version, currency,
                           created_at)
        SELECT n, 'user' || n || '@bench.example', '', false, true, 1, 'USD', :now FROM seq"""
        ),
        {"count": USERS, "now": now},
    )
    ledger.pin_currency("USD")  # as open_user_accounts does
    db.session.execute(
        sql(
            SEQ
            + """
        INSERT INTO deployments (id, external_id, user_id, kind, name, labels, state,
                                 price_version_id, cpu_milli, memory_mgb, storage_mgb, public_ip,
                                 started_at, created_at, updated_at)
        SELECT n, 'dep-' || n, (n - 1) / :per_user + 1, 'vm', '', '{}', 'active', :version,
               2000, 4000, 20000, false, :now, :now, :now FROM seq"""
        ),
        {"count": USERS * PER_USER, "per_user": PER_USER, "version": version.id, "now": now},
    )
    db.session.execute(
        text(
            SEQ
            + """
        INSERT INTO deployment_intervals (deployment_id, user_id, start_epoch, end_epoch, state,
            cpu_milli, memory_mgb, storage_mgb, instances, public_ips, cpu_rate_micros,
            memory_rate_micros, storage_rate_micros, instance_rate_micros, ip_rate_micros)
        SELECT n, (n - 1) / :per_user + 1, :start, NULL, 'active', 2000, 4000, 20000, 0, 0,
               :cpu, :mem, :disk, 0, 0 FROM seq"""
        ),
        {
            "count": USERS * PER_USER,
            "per_user": PER_USER,
            "start": start_epoch,
            "cpu": version.cpu_per_core_hour_micros,
            "mem": version.memory_per_gb_hour_micros,
            "disk": version.storage_per_gb_month_micros,
        },
    )

    db.session.execute(
        insert(MeterMark),
        [
            {"chunk": chunk, "metered_through": START}
            for chunk in range(USERS // rollups.chunk_size() + 1)
        ],
    )
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("SELECT setval('users_id_seq', :n)"), {"n": USERS})
        db.session.execute(text("SELECT setval('deployments_id_seq', :n)"), {"n": USERS * PER_USER})
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")


def floor(db, text) -> float:
    """The same rows, one plain upsert into a same-shaped table, no logic of ours."""
    db.session.execute(text("CREATE TABLE usage_floor AS SELECT * FROM usage_daily WHERE 1 = 0"))
    db.session.execute(
        text("ALTER TABLE usage_floor ADD PRIMARY KEY (deployment_id, day)")
        if db.engine.dialect.name == "postgresql"
        else text("CREATE UNIQUE INDEX usage_floor_pk ON usage_floor (deployment_id, day)")
    )
    db.session.commit()
    since = int(START.timestamp())
    started = time.perf_counter()
    db.session.execute(
        text(f"""
        INSERT INTO usage_floor (deployment_id, day, user_id, cpu_ms, cpu_cost, memory_ms,
            memory_cost, storage_ms, storage_cost, instance_s, instance_cost, ip_s, ip_cost)
        SELECT s.deployment_id, :day, s.user_id, SUM(s.secs * s.cpu_milli),
               SUM(s.secs * s.cpu_milli * s.cpu_rate_micros), SUM(s.secs * s.memory_mgb),
               SUM(s.secs * s.memory_mgb * s.memory_rate_micros), SUM(s.secs * s.storage_mgb),
               SUM(s.secs * s.storage_mgb * s.storage_rate_micros), SUM(s.secs * s.instances),
               SUM(s.secs * s.instances * s.instance_rate_micros), SUM(s.secs * s.public_ips),
               SUM(s.secs * s.public_ips * s.ip_rate_micros)
        FROM (SELECT i.*, {_SECONDS} AS secs FROM deployment_intervals i
              WHERE i.start_epoch < :until AND (i.end_epoch IS NULL OR i.end_epoch > :since)) s
        GROUP BY s.deployment_id, s.user_id
        ON CONFLICT (deployment_id, day) DO UPDATE SET cpu_ms = usage_floor.cpu_ms + excluded.cpu_ms
        """),
        {"day": START.date(), "since": since, "until": since + 3600},
    )
    db.session.commit()
    return time.perf_counter() - started


def table_mb(db, text) -> float:
    if db.engine.dialect.name == "postgresql":
        # usage_daily is partitioned by month: its size is its partitions' (with indexes).
        size = db.session.scalar(
            text(
                "SELECT CAST((SELECT SUM(pg_total_relation_size(relid)) "
                "FROM pg_partition_tree('usage_daily')) AS bigint) "
                "+ pg_total_relation_size('meter_marks')"
            )
        )
    else:
        size = db.session.scalar(
            text(
                "SELECT SUM(pgsize) FROM dbstat WHERE name IN ('usage_daily', 'meter_marks') "
                "OR name LIKE 'sqlite_autoindex_usage_daily%' OR name LIKE 'ix_usage_daily%'"
            )
        )
    return round((size or 0) / 1024 / 1024, 1)


def main() -> None:
    url = database_url()
    os.environ.setdefault("SECRET_KEY", "bench-secret-key-0123456789")

    instance = tempfile.mkdtemp(prefix="bench-metering-")
    os.environ["INSTANCE_PATH"] = instance
    app = create_app(
        {
            "DATABASE_URL": url,
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14"),
            "LOG_LEVEL": "warn",
        }
    )
    with app.app_context():
        flask_migrate.upgrade()
        # The months metered have their partitions, as the daemon's job makes them ahead.
        partitions.ensure_partitions(now=START)
        db.session.commit()
        seed(db, text)
        floor_s = floor(db, text)

        started = time.perf_counter()
        result = runs.meter_all(START + timedelta(hours=1))
        wall_s = time.perf_counter() - started
        rows = db.session.scalar(text("SELECT COUNT(*) FROM usage_daily"))
        assert result.chunks >= 1 and rows == USERS * PER_USER, (result, rows)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        # the rest of the month, a day at a time
        upto = START + timedelta(hours=1)
        while upto < START + timedelta(days=30):
            upto = min(upto + timedelta(days=1), START + timedelta(days=30))
            runs.meter_all(upto)
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM usage_daily")
        month_mb = table_mb(db, text)
        month_rows = db.session.scalar(text("SELECT COUNT(*) FROM usage_daily"))
        db.session.remove()
        db.engine.dispose()
    print(
        json.dumps(
            {
                "bench": "metering",
                "db": app.config["SQLALCHEMY_DATABASE_URI"].split(":")[0].split("+")[0],
                "deployments": USERS * PER_USER,
                "rows": rows,
                "wall_s": round(wall_s, 3),
                "floor_s": round(floor_s, 3),
                "ratio": round(wall_s / floor_s, 2),
                "peak_rss_mb": round(peak_rss_mb, 1),
                "table_mb_per_month": month_mb,
                "rows_per_month": month_rows,
            }
        )
    )


if __name__ == "__main__":
    main()

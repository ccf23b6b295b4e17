"""Metering benchmark: meter one hour of 100,000 active deployments across 10,000 users
(BENCH_SCALE=10: 1,000,000 across 100,000).

Prints one JSON line:
{"bench": "metering", "db": ..., "deployments": 100000, "rows": ..., "wall_s": ...,
 "floor_s": ..., "ratio": ..., "peak_rss_mb": ..., "table_mb_per_month": ...,
 "rows_per_month": ...}

- wall_s: `runs.meter_all` for one hour (claims every chunk's mark, one set-based
  INSERT ... SELECT ... ON CONFLICT per chunk), committed; on PostgreSQL the chunks are
  shared among METER_RUN_CONNECTIONS (2) connections. With BENCH_WORKERS=N, the metering
  job's chunk jobs (`metering.meter_chunk`) run in N real RQ worker processes instead
  (`python -m jobs.worker metering`), timed from the first enqueue to the last finished.
- floor_s: the same rows written by one plain INSERT ... SELECT ... ON CONFLICT into a table
  of the same shape and primary key, with none of our logic (no marks, no chunks). Each of
  the two timed parts starts after a CHECKPOINT, so neither writes out the other's pages.
- peak_rss_mb: the process's peak resident memory (seeding is done in SQL, not Python).
- table_mb_per_month: the usage tables' size (rollups with their indexes, on PostgreSQL the
  sum of the month partitions', plus the marks) and rows_per_month the rollup rows,
  after metering a 30-day month of the same deployments, in day-sized steps (the rows are
  the same as hourly metering writes; hourly upserts also leave dead tuples on PostgreSQL
  until autovacuum reclaims them).

Environment:
    DATABASE_URL   default: PostgreSQL at 127.0.0.1:5432, database `portal_bench_metering`;
                   a PostgreSQL URL must name a `portal_bench*` database (dropped and
                   re-created); a sqlite URL: that file, re-created.
    BENCH_SCALE    default 1: 10,000 users x 10 deployments; 10: 1,000,000 deployments.
    BENCH_USERS, BENCH_DEPLOYMENTS_PER_USER  the size, instead of BENCH_SCALE.
    BENCH_MONTH    1: also meter the 30-day month for table_mb_per_month (default: only up
                   to 100,000 deployments; at ten times that it is 30 million rows).
    BENCH_WORKERS  default 0 (in this process); N: N RQ workers (adds "workers").
    BENCH_REDIS_URL  default redis://127.0.0.1:6379/14 (flushed with BENCH_WORKERS).

The rows are seeded with generate_series (PostgreSQL): a million deployments in seconds.
Usage: .venv/bin/python bench/metering.py
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

import flask_migrate
import psycopg
from redis import Redis
from sqlalchemy import bindparam, insert, text
from sqlalchemy.engine import make_url

from portal import create_app
from portal.extensions import db
from portal.models import MeterMark
from portal.models.types import UTCDateTime
from portal.services.metering import catalog, rollups, runs
from portal.services.metering.rollups import _SECONDS
from portal.services.retention import partitions
from portal.services.wallet import ledger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import rq_workers  # noqa: E402

SCALE = int(os.environ.get("BENCH_SCALE", "1"))
USERS = int(os.environ.get("BENCH_USERS", 10_000 * SCALE))
PER_USER = int(os.environ.get("BENCH_DEPLOYMENTS_PER_USER", 10))
# The month's table size: 30 million rollup rows at ten times the data, so off by default there.
WORKERS = int(os.environ.get("BENCH_WORKERS", "0"))
MONTH = os.environ.get("BENCH_MONTH", "1" if USERS * PER_USER <= 100_000 else "0") == "1"
START = datetime(2026, 9, 1, tzinfo=UTC)
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def database_url() -> str:
    url = os.environ.get("DATABASE_URL") or PG_ADMIN.rsplit("/", 1)[0] + "/portal_bench_metering"
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]
        if os.path.exists(path):
            os.remove(path)
        return url
    parsed = make_url(url)
    name = parsed.database or ""
    if not re.fullmatch(r"portal_bench\w*", name):
        raise SystemExit(
            f"refusing to drop database {name!r}: its name must start with portal_bench"
        )
    admin = parsed.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url


def seq() -> str:
    """Rows n = 1..:count: generate_series on PostgreSQL (a million in a blink), a recursive
    CTE on SQLite."""
    if db.engine.dialect.name == "postgresql":
        return "WITH seq(n) AS (SELECT generate_series(1, CAST(:count AS integer))) "
    return "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < :count) "


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
            seq()
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
            seq()
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
            seq()
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
    checkpoint(db)
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


def checkpoint(db) -> None:
    """Each timed part starts with no dirty pages left by the one before (the floor's
    million rows would otherwise be written out during the run timed after it)."""
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("CHECKPOINT")


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
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    app = create_app(
        {
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "RQ_ASYNC": WORKERS > 0,
            "LOG_LEVEL": "warn",
        }
    )
    workers = None
    try:
        with app.app_context():
            flask_migrate.upgrade()
            # The months metered have their partitions, as the daemon's job makes them ahead.
            partitions.ensure_partitions(now=START)
            db.session.commit()
            seed(db, text)
            floor_s = floor(db, text)
            if WORKERS:
                Redis.from_url(redis_url).flushdb()
                workers = rq_workers.Workers(
                    WORKERS, "metering", {"DATABASE_URL": url, "REDIS_URL": redis_url}
                )
                workers.wait_ready(Redis.from_url(redis_url))

            checkpoint(db)
            upto = START + timedelta(hours=1)
            started = time.perf_counter()
            if workers is None:
                chunks = runs.meter_all(upto).chunks
            else:  # what the metering job does: the due chunks, one job each, to the workers
                runs.prepare_run(upto)
                due = rollups.due_chunks(upto)
                db.session.commit()
                stamp = upto.strftime("%Y-%m-%dT%H")
                _, figures = rq_workers.run_jobs(
                    app,
                    workers,
                    [("metering.meter_chunk", (c, stamp), f"meter:{c}:{stamp}") for c in due],
                )
                chunks = sum(f["chunks"] for f in figures)
            wall_s = time.perf_counter() - started
            rows = db.session.scalar(text("SELECT COUNT(*) FROM usage_daily"))
            assert chunks >= 1 and rows == USERS * PER_USER, (chunks, rows)
            peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        if workers is not None:
            workers.stop()
            Redis.from_url(redis_url).flushdb()
    with app.app_context():
        month_mb = month_rows = None
        if MONTH and not WORKERS:  # the rest of the month, a day at a time
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
    figures = {
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
    if WORKERS:
        figures["workers"] = WORKERS  # the metering ran in them: peak_rss_mb is this process's
    else:
        figures["connections"] = app.config["METER_RUN_CONNECTIONS"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

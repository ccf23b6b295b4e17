"""Metering runs: concurrent runs on PostgreSQL, a real RQ worker, identical results on
both databases."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from redis import Redis
from rq import Queue
from sqlalchemy import select

from portal.extensions import db
from portal.models import MeterMark, UsageDaily
from portal.models.usage import USAGE_COLUMNS
from portal.services import accounts
from portal.services.metering import deployments, rollups, runs
from portal.services.metering.jobs import meter_due

T0 = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)


def scenario(app, users: int = 3, per_user: int = 3) -> None:
    """A fixed mix: resizes, suspensions, deletions mid-hour, SKUs, a late report."""
    with app.app_context():
        people = [
            accounts.create_user(email=f"m{n}@example.com", password="x" * 12) for n in range(users)
        ]
        db.session.commit()
        for n, user in enumerate(people):
            for k in range(per_user):
                start = T0 + timedelta(minutes=17 * k + 5 * n)
                spec = (
                    {"sku": "vm-small-ip"}
                    if k == 2
                    else {"cpu_cores": f"{k + 1}.5", "memory_gb": 3, "storage_gb": 40}
                )
                dep, _ = deployments.create_deployment(
                    external_id=f"d-{n}-{k}", user=user, kind="vm", started_at=start, **spec
                )
                if k == 0:
                    deployments.update_deployment(
                        dep, cpu_cores=4, effective_at=start + timedelta(hours=2, minutes=13)
                    )
                    deployments.update_deployment(
                        dep, state="suspended", effective_at=start + timedelta(hours=7, seconds=41)
                    )
                if k == 1:
                    deployments.delete_deployment(
                        dep, ended_at=start + timedelta(hours=30, minutes=7)
                    )
        db.session.commit()


def fingerprint(app) -> str:
    with app.app_context():
        rows = db.session.execute(
            select(
                UsageDaily.deployment_id,
                UsageDaily.day,
                *[getattr(UsageDaily, c) for c in USAGE_COLUMNS],
            ).order_by(UsageDaily.deployment_id, UsageDaily.day)
        ).all()
    text = "\n".join(",".join(str(v) for v in row) for row in rows)
    return hashlib.sha256(text.encode()).hexdigest()


def test_sqlite_and_postgresql_give_identical_rollups(app):
    scenario(app)
    with app.app_context():
        runs.meter_all(T0 + timedelta(days=2))
        assert rollups.audit_usage() == []
        total_cpu = db.session.scalar(select(db.func.sum(UsageDaily.cpu_ms)))
        total_cost = db.session.scalar(select(db.func.sum(UsageDaily.storage_cost)))
    assert (int(total_cpu), int(total_cost)) == (EXPECTED_TOTALS[0], EXPECTED_TOTALS[1])
    assert fingerprint(app) == EXPECTED_FINGERPRINT


# The same scenario gives these exact rollups on SQLite and on PostgreSQL: each pass of
# `make test` checks its database against the same literals.
EXPECTED_TOTALS = (1056192000, 3371040000000000)
EXPECTED_FINGERPRINT = "fc2f1257635495bafe9b9bd224255ece87bef1dbca3a4ac1ba983ed30f20f162"


@pytest.mark.postgres
def test_two_concurrent_runs_count_each_hour_once(app, make_app):
    scenario(app)
    wide = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 12, "max_overflow": 0})
    upto = T0 + timedelta(hours=20)
    barrier = threading.Barrier(8)

    def run(_):
        with wide.app_context():
            barrier.wait()
            result = runs.meter_all(upto)
            db.session.remove()
            return result.hours

    with ThreadPoolExecutor(8) as pool:
        hours = list(pool.map(run, range(8)))
    with wide.app_context():
        db.engine.dispose()
    assert sum(hours) == 20  # one chunk, 20 hours, claimed by exactly one run
    with app.app_context():
        assert rollups.audit_usage() == []


def test_double_run_of_an_hour_changes_nothing(app):
    scenario(app)
    with app.app_context():
        runs.meter_all(T0 + timedelta(hours=5))
        before = fingerprint(app)
        assert runs.meter_all(T0 + timedelta(hours=5)).rows == 0
        assert fingerprint(app) == before


def test_a_real_worker_process_meters_a_chunked_run(make_app, app, redis_url):
    """meter_due fans chunks out to the metering queue; a forking `rq` worker process
    (python -m jobs.worker --burst) meters them."""
    chunked = make_app(RQ_ASYNC=True, METER_CHUNK_USERS=1)  # one chunk per user
    scenario(chunked, users=3, per_user=2)
    upto = T0 + timedelta(hours=6)
    with chunked.app_context():
        assert meter_due(upto.strftime("%Y-%m-%dT%H")) == {
            "chunks": 3,
            "upto": upto.strftime("%Y-%m-%dT%H"),
        }
        queue = Queue("metering", connection=Redis.from_url(redis_url))
        assert queue.count == 3
    env = {
        **os.environ,
        "DATABASE_URL": chunked.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": redis_url,
        "SECRET_KEY": "worker-test-secret-key-123",
        "METER_CHUNK_USERS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "jobs.worker", "--burst", "metering"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with chunked.app_context():
        marks = db.session.scalars(select(MeterMark)).all()
        assert len(marks) == 3 and all(m.metered_through == upto for m in marks)
        assert rollups.audit_usage() == []
    assert queue.count == 0


@pytest.mark.parametrize("connections", [1, 3])
def test_meter_all_on_several_connections_meters_each_chunk_once(app, make_app, connections):
    """On PostgreSQL `meter_all` shares the chunks among METER_RUN_CONNECTIONS connections;
    the rollups are the same as one connection's, each chunk metered once."""
    chunked = make_app(METER_CHUNK_USERS=1, METER_RUN_CONNECTIONS=connections)
    scenario(chunked, users=4, per_user=2)
    upto = T0 + timedelta(hours=9)
    with chunked.app_context():
        result = runs.meter_all(upto)
        marks = db.session.scalars(select(MeterMark.metered_through)).all()
        assert result.chunks == len(marks) == 4 and set(marks) == {upto}
        assert rollups.audit_usage() == []
        assert runs.meter_all(upto).chunks == 0  # nothing left to claim
        db.session.remove()

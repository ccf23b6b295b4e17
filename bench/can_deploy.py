#!/usr/bin/env python
"""Benchmark: server time of ``POST /api/plugins/billing/can-deploy`` for a user with 50
running deployments among 100,000.

Builds a fresh database (PostgreSQL ``portal_bench_candeploy`` by default, or a temporary
SQLite file) and seeds, in bulk, 2,000 users with their ledger accounts and 100,000 running
deployments with their open intervals (one user holds 50 of them, the rest are spread over
the others; each deployment also has a closed interval of history). Creates a platform
token and times ``POST /can-deploy`` for the 50-deployment user (one core, 4 GB, a card-less
postpaid account: the full path, refused for want of a card) with the Flask test client,
which calls the WSGI app in-process: the time around ``client.post`` is server time
(routing, token check, validation, the one read of the account, the answer).

Prints one JSON line on stdout:
    {"bench": "can_deploy", "db": "postgresql", "deployments": 100000, "median_ms": ...,
     "p99_ms": ...}

Environment:
    DATABASE_URL      as for bench/pages.py (a PostgreSQL database whose name starts with
                      portal_bench is dropped and re-created). Default:
                      portal_bench_candeploy on postgresql://postgres@127.0.0.1:5432.
    REDIS_URL         default redis://127.0.0.1:6379/14 (rate-limit storage only).
    BENCH_DEPLOYMENTS deployments to seed (default 100000).
    BENCH_REQUESTS    timed requests (default 500).
    BENCH_BUDGET      1: the user has a budget cap set to stop at the cap (high enough not
                      to refuse), so can-deploy also sums the period's usage; every
                      deployment gets a usage_daily row for each of its days.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from datetime import timedelta

from pages import build_app, fail, percentile, prepare_database
from sqlalchemy import insert, select

from portal.extensions import db
from portal.models import (
    AccountKind,
    Budget,
    Deployment,
    DeploymentInterval,
    LedgerAccount,
    UsageDaily,
    User,
    utcnow,
)
from portal.services import accounts
from portal.services.metering import catalog

DEPLOYMENTS = int(os.environ.get("BENCH_DEPLOYMENTS", "100000"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "500"))
BUDGET = os.environ.get("BENCH_BUDGET") == "1"
USERS = 2000
MINE = 50
WARMUP = 50
BATCH = 10_000
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/portal_bench_candeploy"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
TARGET = "target@example.com"


def _chunks(rows: list[dict]):
    for i in range(0, len(rows), BATCH):
        yield rows[i : i + BATCH]


def seed(app) -> str:
    now = utcnow().replace(microsecond=0)
    with app.app_context():
        admin = accounts.create_user(email="platform@example.com", name="Platform", is_admin=True)
        target = accounts.create_user(email=TARGET, name="Target")
        _, token = accounts.create_api_token(admin, name="bench", scope="platform")
        version = catalog.ensure_catalog()
        db.session.commit()
        currency = target.currency
        first = target.id + 1
        users = [
            {
                "id": first + n,
                "email": f"user{n:05d}@example.com",
                "name": "",
                "password_hash": None,
                "is_admin": False,
                "is_enabled": True,
                "auth_version": 1,
                "currency": currency,
                "created_at": now,
            }
            for n in range(USERS - 1)
        ]
        db.session.execute(insert(User), users)
        db.session.execute(
            insert(LedgerAccount),
            [
                {"user_id": u, "kind": k.value, "currency": currency, "balance_minor": 0}
                for u in [r["id"] for r in users]
                for k in (AccountKind.CASH, AccountKind.VOUCHER, AccountKind.CREDIT)
            ],
        )
        owners = [target.id] * MINE + [first + n % (USERS - 1) for n in range(DEPLOYMENTS - MINE)]
        started = now - timedelta(days=3)
        deps = [
            {
                "external_id": f"vm-{n:06d}",
                "user_id": uid,
                "kind": "vm",
                "name": "",
                "labels": {},
                "state": "active",
                "price_version_id": version.id,
                "sku_code": None,
                "cpu_milli": 1000,
                "memory_mgb": 2000,
                "storage_mgb": 10000,
                "public_ip": False,
                "started_at": started,
                "created_at": started,
                "updated_at": started,
            }
            for n, uid in enumerate(owners)
        ]
        for chunk in _chunks(deps):
            db.session.execute(insert(Deployment), chunk)
        ids = db.session.execute(select(Deployment.id, Deployment.user_id)).all()
        begin = int(started.timestamp())
        rates = dict(
            cpu_rate_micros=version.cpu_per_core_hour_micros,
            memory_rate_micros=version.memory_per_gb_hour_micros,
            storage_rate_micros=version.storage_per_gb_month_micros,
        )
        intervals = []
        for dep_id, uid in ids:
            shape = dict(cpu_milli=1000, memory_mgb=2000, storage_mgb=10000, **rates)
            intervals.append(
                dict(
                    deployment_id=dep_id,
                    user_id=uid,
                    start_epoch=begin,
                    end_epoch=begin + 86400,
                    state="active",
                    cpu_milli=500,
                    memory_mgb=2000,
                    storage_mgb=10000,
                    **rates,
                )
            )
            intervals.append(
                dict(
                    deployment_id=dep_id,
                    user_id=uid,
                    start_epoch=begin + 86400,
                    end_epoch=None,
                    state="active",
                    **shape,
                )
            )
        for chunk in _chunks(intervals):
            db.session.execute(insert(DeploymentInterval), chunk)
        if BUDGET:
            db.session.add(
                Budget(user_id=target.id, cap_minor=10**12, currency=currency, stop_at_cap=True)
            )
            days = [(started + timedelta(days=d)).date() for d in range(4)]
            usage = [
                dict(
                    deployment_id=dep_id,
                    day=day,
                    user_id=uid,
                    cpu_ms=86_400_000,
                    cpu_cost=86_400_000 * version.cpu_per_core_hour_micros,
                    memory_ms=0,
                    memory_cost=0,
                    storage_ms=0,
                    storage_cost=0,
                    instance_s=0,
                    instance_cost=0,
                    ip_s=0,
                    ip_cost=0,
                )
                for dep_id, uid in ids
                for day in days
            ]
            for chunk in _chunks(usage):
                db.session.execute(insert(UsageDaily), chunk)
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        db.session.remove()
        return token


def measure(app, token: str) -> list[float]:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    body = {"user_id": TARGET, "kind": "vm", "cpu_cores": 1, "memory_gb": 4, "storage_gb": 20}
    first = client.post("/api/plugins/billing/can-deploy", json=body, headers=headers)
    if first.status_code != 200 or first.json["reason"] != "card_required":
        fail(f"unexpected answer {first.status_code}: {first.get_data(as_text=True)}")
    for _ in range(WARMUP):
        client.post("/api/plugins/billing/can-deploy", json=body, headers=headers)
    timings = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        response = client.post("/api/plugins/billing/can-deploy", json=body, headers=headers)
        timings.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            fail(f"POST /can-deploy answered {response.status_code}")
    return timings


def main() -> None:
    url = os.environ.get("DATABASE_URL") or DEFAULT_PG
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS
    out = sys.stdout
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        database_url = prepare_database(url, stack)
        app = build_app(database_url, redis_url)
        try:
            token = seed(app)
            timings = measure(app, token)
            with app.app_context():
                dialect = db.engine.dialect.name
        finally:
            with app.app_context():
                db.engine.dispose()
    print(
        json.dumps(
            {
                "bench": "can_deploy",
                "db": dialect,
                "deployments": DEPLOYMENTS,
                "budget": BUDGET,
                "median_ms": round(statistics.median(timings), 2),
                "p99_ms": round(percentile(timings, 99), 2),
            }
        ),
        file=out,
        flush=True,
    )


if __name__ == "__main__":
    main()

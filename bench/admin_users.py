#!/usr/bin/env python
"""Benchmark: server time of Admin › Users (first page, sorted by amount owed) with 100,000
accounts.

Builds a fresh database (PostgreSQL ``portal_bench_admin`` by default, or a temporary SQLite
file) and seeds, in bulk, 100,000 users with their four ledger accounts (cash, voucher,
credit, receivable) and cached balances: 30% owe on an invoice (a ledger posting to their
receivable and revenue, and the invoice; one in six of those is overdue), 20% hold prepaid
cash. Logs an admin in with the Flask test client and times ``GET /admin/users`` (the
default order: largest amount owed first). The test client calls the WSGI app in-process,
so the time around ``client.get`` is server time (routing, session, login, the queries,
the full page template).

Prints one JSON line on stdout:
    {"bench": "admin_users", "db": "postgresql", "accounts": 100000, "median_ms": ...,
     "p99_ms": ...}

Environment:
    DATABASE_URL   as for bench/pages.py (a PostgreSQL database whose name starts with
                   portal_bench is dropped and re-created). Default: portal_bench_admin on
                   postgresql://postgres@127.0.0.1:5432.
    REDIS_URL      default redis://127.0.0.1:6379/14 (rate-limit storage only).
    BENCH_ACCOUNTS accounts to seed (default 100000).
    BENCH_REQUESTS timed requests (default 500).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import pages
from sqlalchemy import insert, select

from portal.extensions import db
from portal.models import (
    AccountKind,
    Invoice,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    User,
    utcnow,
)
from portal.services import accounts
from portal.services.wallet import ledger

ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "100000"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "500"))
WARMUP = 50
BATCH = 10_000
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/portal_bench_admin"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
ADMIN = "admin@example.com"
KINDS = (AccountKind.CASH, AccountKind.VOUCHER, AccountKind.CREDIT, AccountKind.RECEIVABLE)


def _chunks(rows: list[dict]):
    for i in range(0, len(rows), BATCH):
        yield rows[i : i + BATCH]


def seed(app) -> None:
    rng = random.Random(20261206)
    now = utcnow()
    with app.app_context():
        admin = accounts.create_user(
            email=ADMIN, password=pages.PASSWORD, name="Admin", is_admin=True
        )
        currency = admin.currency
        revenue = ledger.system_account(AccountKind.REVENUE, currency)
        db.session.commit()
        first_id = admin.id + 1
        users = [
            {
                "id": first_id + n,
                "email": f"user{n:06d}@example.com",
                "name": f"User {n}",
                "password_hash": None,
                "is_admin": False,
                "is_enabled": True,
                "auth_version": 1,
                "currency": currency,
                "created_at": now - timedelta(minutes=ACCOUNTS - n),
            }
            for n in range(ACCOUNTS)
        ]
        for chunk in _chunks(users):
            db.session.execute(insert(User), chunk)
        owed = {u["id"]: rng.randrange(100, 500_000) for u in users if rng.random() < 0.3}
        cash = {u["id"]: rng.randrange(100, 100_000) for u in users if rng.random() < 0.2}
        balances = {AccountKind.CASH: cash, AccountKind.RECEIVABLE: owed}
        account_rows = [
            {
                "user_id": u["id"],
                "kind": kind.value,
                "currency": currency,
                "balance_minor": balances.get(kind, {}).get(u["id"], 0),
                "created_at": u["created_at"],
            }
            for u in users
            for kind in KINDS
        ]
        for chunk in _chunks(account_rows):
            db.session.execute(insert(LedgerAccount), chunk)
        account_id = {
            (uid, kind): aid
            for aid, uid, kind in db.session.execute(
                select(LedgerAccount.id, LedgerAccount.user_id, LedgerAccount.kind).where(
                    LedgerAccount.user_id >= first_id
                )
            )
        }
        # The money behind the cached balances: one posting per owing user (and per top-up).
        txns = []
        for uid, amount in owed.items():
            txns.append((uid, "invoice", AccountKind.RECEIVABLE, -amount, amount))
        for uid, amount in cash.items():
            txns.append((uid, "topup", AccountKind.CASH, amount, -amount))
        clearing = ledger.system_account(AccountKind.STRIPE_CLEARING, currency)
        counter = {"invoice": revenue.id, "topup": clearing.id}
        db.session.commit()
        txn_ids = []
        for chunk in _chunks(
            [
                {
                    "idempotency_key": f"bench:{kind}:{uid}",
                    "kind": kind,
                    "content_hash": "0" * 64,
                    "user_id": uid,
                    "created_by_id": None,
                    "description": "",
                    "created_at": now - timedelta(days=20),
                }
                for uid, kind, *_ in txns
            ]
        ):
            txn_ids += db.session.scalars(
                insert(LedgerTransaction).returning(
                    LedgerTransaction.id, sort_by_parameter_order=True
                ),
                chunk,
            ).all()
        entries = []
        for txn_id, (uid, kind, acct_kind, user_leg, other_leg) in zip(txn_ids, txns, strict=True):
            entries.append(
                {
                    "transaction_id": txn_id,
                    "account_id": account_id[uid, acct_kind.value],
                    "amount_minor": user_leg,
                    "currency": currency,
                }
            )
            entries.append(
                {
                    "transaction_id": txn_id,
                    "account_id": counter[kind],
                    "amount_minor": other_leg,
                    "currency": currency,
                }
            )
        for chunk in _chunks(entries):
            db.session.execute(insert(LedgerEntry), chunk)
        period_start = datetime(now.year, now.month, 1, tzinfo=UTC) - timedelta(days=1)
        period_start = period_start.replace(day=1)
        invoices = [
            {
                "user_id": uid,
                "kind": "usage",
                "status": "overdue" if n % 6 == 0 else "open",
                "number": f"BENCH-{n:07d}",
                "period_start": period_start,
                "period_end": datetime(now.year, now.month, 1, tzinfo=UTC),
                "currency": currency,
                "subtotal_minor": amount,
                "credits_minor": 0,
                "total_minor": amount,
                "amount_paid_minor": 0,
                "due_at": now - timedelta(days=5),
                "finalized_at": now - timedelta(days=20),
                "created_at": now - timedelta(days=20),
                "pdf_status": "none",
            }
            for n, (uid, amount) in enumerate(owed.items())
        ]
        for chunk in _chunks(invoices):
            db.session.execute(insert(Invoice), chunk)
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        db.session.remove()


def measure(app) -> list[float]:
    client = app.test_client()
    page = client.get("/auth/login")
    match = pages.CSRF_RE.search(page.get_data(as_text=True))
    if page.status_code != 200 or not match:
        pages.fail(f"no CSRF token on the login page (status {page.status_code})")
    login = client.post(
        "/auth/login",
        data={"email": ADMIN, "password": pages.PASSWORD, "csrf_token": match.group(1)},
    )
    if login.status_code != 303:
        pages.fail(f"login failed with status {login.status_code}")
    first = client.get("/admin/users")
    body = first.get_data(as_text=True)
    if first.status_code != 200 or body.count('<tr id="user-') != 25:
        pages.fail(f"unexpected users page (status {first.status_code})")
    for _ in range(WARMUP):
        client.get("/admin/users")
    timings = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        response = client.get("/admin/users")
        timings.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            pages.fail(f"GET /admin/users answered {response.status_code}")
    return timings


def main() -> None:
    url = os.environ.get("DATABASE_URL") or DEFAULT_PG
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS
    out = sys.stdout
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        database_url = pages.prepare_database(url, stack)
        app = pages.build_app(database_url, redis_url)
        try:
            seed(app)
            timings = measure(app)
            with app.app_context():
                dialect = db.engine.dialect.name
        finally:
            with app.app_context():
                db.engine.dispose()
    print(
        json.dumps(
            {
                "bench": "admin_users",
                "db": dialect,
                "accounts": ACCOUNTS,
                "median_ms": round(statistics.median(timings), 2),
                "p99_ms": round(pages.percentile(timings, 99), 2),
            }
        ),
        file=out,
        flush=True,
    )


if __name__ == "__main__":
    main()

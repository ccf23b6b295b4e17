#!/usr/bin/env python
"""Benchmark: server time and SQL statements of every user page and every admin page.

Builds a fresh database (PostgreSQL ``portal_bench`` by default, or a temporary SQLite file)
and seeds: one user whose wallets carry 10,000 entries (credit grants, card top-ups, charges)
and a few other users; ten deployments of that user, metered and invoiced for the last three
full months through the real services; an outbox message and a webhook endpoint; then, as
bench/admin_users.py does, 10,000 more accounts (30% owing on an invoice) and the admin;
each of those accounts gets one running deployment, metered for the last 31 days (the rows
Admin › Usage reports and the admin dashboard read). It checks that the ledger reconciles.

The pages are found from the app's url_map: every GET route without arguments outside
/api/, /auth/ and /static/ (less downloads, CSV exports, the card processor's return URLs
and the "/" redirect), plus the detail pages of the seeded rows (an invoice, a user, an
outbox message, a webhook endpoint). User pages are requested as the wallet user, admin pages
as the admin, through the Flask test client: it calls the WSGI app in-process, so the time
around ``client.get`` is server time (routing, session, login, queries, template).
Each page gets 20 warm-up requests and BENCH_REQUESTS timed ones; one more request counts
its SQL statements (a ``before_cursor_execute`` listener).

Prints one JSON line on stdout:
    {"bench": "pages", "db": "postgresql", "worst_median_ms": ..., "worst_p99_ms": ...,
     "max_queries": ..., "goal_met": ..., "pages": {"/wallet/": {"median_ms": ...,
     "p99_ms": ..., "queries": ...}, ...}}
Goal on PostgreSQL: median < 12 ms and p99 < 30 ms for each page.

Environment:
    DATABASE_URL   postgresql://... (the database named there is dropped and re-created,
                   so its name must start with "portal_bench") or any sqlite URL (a fresh
                   temporary file is used). Default: portal_bench on
                   postgresql://postgres@127.0.0.1:5432.
    REDIS_URL      default redis://127.0.0.1:6379/14 (rate-limit storage only).
    BENCH_REQUESTS timed requests per page (default 300).
    BENCH_GENERIC_PLANS  1 (default): the web server's DATABASE_GENERIC_PLANS, as
                   `flask billing serve` sets it; 0: PostgreSQL's default plan choice.
    BENCH_AUDIT_USAGE  if set, run usage-audit's check on the seeded usage (~14 s).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import admin_users
import flask_migrate
import psycopg
from sqlalchemy import event, func, insert, select, update
from sqlalchemy.engine import make_url

from portal import create_app
from portal.extensions import db
from portal.models import (
    AccountKind,
    CreditLot,
    Deployment,
    DeploymentInterval,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    User,
    utcnow,
)
from portal.money import Money
from portal.services import accounts, mail
from portal.services.invoicing import run as invoice_run
from portal.services.metering import catalog, deployments, rollups, runs, totals
from portal.services.retention import partitions
from portal.services.wallet import credits, ledger
from portal.services.wallet.reconcile import find_discrepancies
from portal.services.webhooks import endpoints

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENTRIES = 10_000  # wallet entries of the measured user
OTHER_USERS = 5
OTHER_TRANSACTIONS = 1_000  # per other user
ADMIN_USERS = 10_000  # accounts behind Admin › Users and the reports
DEPLOYMENTS = 10  # the measured user's, invoiced for the last three months
USAGE_DAYS = 31  # each of the ADMIN_USERS accounts: one deployment metered for these days
BATCH = 10_000
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "300"))  # per page
WARMUP = 20
# GET routes that are not pages (downloads, redirects back from the card processor, polls).
NOT_PAGES = {
    "/healthz",
    "/metrics",
    "/admin/users.csv",
    "/admin/vouchers.csv",
    "/admin/reports.csv",
    "/admin/audit.csv",
    "/wallet/top-up/done",
    "/wallet/top-up/confirmed",
    "/payment-methods/added",
    "/subscription/checkout/done",
    "/standing/restore/done",
    "/standing/restore/confirmed",
    "/",  # a redirect to the Overview
}
PASSWORD = "bench-password-0123"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/portal_bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def fail(message: str) -> None:
    print(f"bench/pages.py: {message}", file=sys.stderr)
    raise SystemExit(1)


def prepare_database(url: str, stack: contextlib.ExitStack) -> str:
    """A fresh, empty database for ``url``; returns the URL to give the app."""
    if url.startswith("sqlite"):
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="portal-bench-"))
        return "sqlite:///" + os.path.join(tmp, "bench.sqlite3")
    if not url.startswith(("postgresql", "postgres:")):
        fail(f"unsupported DATABASE_URL {url!r} (postgresql://... or sqlite://...)")

    parsed = make_url(url)
    name = parsed.database or ""
    if not re.fullmatch(r"portal_bench\w*", name):
        fail(f"refusing to drop database {name!r}: its name must start with portal_bench")
    admin = parsed.set(drivername="postgresql", database="postgres")
    try:
        with psycopg.connect(
            admin.render_as_string(hide_password=False), autocommit=True, connect_timeout=5
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        fail(f"PostgreSQL at {admin.render_as_string(hide_password=True)}: {exc}")
    return url


def build_app(database_url: str, redis_url: str):
    app = create_app(
        {
            "TESTING": False,
            "SECRET_KEY": "bench-secret-key-0123456789abcdef",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "RQ_ASYNC": False,
            "CURRENCY": "USD",
            "LOG_LEVEL": "error",
            "LOGIN_RATE_LIMIT": "100000 per minute",
            # As the web server runs (`flask billing serve` and deploy/systemd set it).
            "DATABASE_GENERIC_PLANS": os.environ.get("BENCH_GENERIC_PLANS", "1") != "0",
        }
    )
    with app.app_context():
        flask_migrate.upgrade()
        # The year of seeded history has its monthly partitions (PostgreSQL), as a database
        # that has been running for a year has them.
        month = partitions.month_of(utcnow() - timedelta(days=366))
        while month <= partitions.month_of(utcnow()) and partitions.enabled():
            for table in partitions.KEYS:
                partitions.create_partition(table, month)
            month = partitions.next_month(month)
        db.session.commit()
    return app


def seed(app) -> str:
    """Seed the users and their ledger; returns the measured user's email."""
    rng = random.Random(20240611)
    with app.app_context():
        main = accounts.create_user(email="bench@example.com", password=PASSWORD, name="Bench User")
        others = [
            accounts.create_user(email=f"other{i}@example.com", name=f"Other {i}")
            for i in range(OTHER_USERS)
        ]
        db.session.flush()
        currency = main.currency
        clearing = ledger.system_account(AccountKind.STRIPE_CLEARING, currency)
        revenue = ledger.system_account(AccountKind.REVENUE, currency)
        grants = ledger.system_account(AccountKind.CREDIT_GRANTS, currency)

        # Most in bulk, over the last year: transactions, then their entries and credit lots,
        # then the cached balances, tracked here exactly as post_transaction would move them.
        wallet = {
            u.id: {k: ledger.user_account(u, k) for k in (AccountKind.CASH, AccountKind.CREDIT)}
            for u in [main, *others]
        }
        balance = {a.id: a.balance_minor for w in wallet.values() for a in w.values()}
        start = utcnow() - timedelta(days=365)
        plan = []  # (user, kind, wallet account, counter account, amount, description)
        for user, count in [(main, ENTRIES - 3), *[(o, OTHER_TRANSACTIONS) for o in others]]:
            cash, credit = wallet[user.id][AccountKind.CASH], wallet[user.id][AccountKind.CREDIT]
            for i in range(count):
                roll = rng.random()
                charge = rng.randrange(100, 5_000)
                if roll < 0.1:
                    plan.append(
                        (
                            user,
                            "credit_grant",
                            credit,
                            grants,
                            rng.randrange(500, 10_000),
                            rng.choice(
                                ["Goodwill credit", "Outage compensation", "Referral bonus"]
                            ),
                        )
                    )
                elif roll < 0.55 or balance[cash.id] < charge:
                    amount = rng.randrange(1_000, 20_000)
                    plan.append((user, "topup", cash, clearing, amount, "Card top-up"))
                    balance[cash.id] += amount
                else:
                    plan.append(
                        (
                            user,
                            "charge",
                            cash,
                            revenue,
                            -charge,
                            rng.choice(["", f"Invoice INV-{i:05d}"]),
                        )
                    )
                    balance[cash.id] -= charge
                if plan[-1][1] == "credit_grant":
                    balance[credit.id] += plan[-1][4]
        # Interleave the users' postings at random, keeping each user's own order (the
        # balances above were tracked in that order, so no wallet ever goes negative).
        queues: dict[int, list[int]] = {}
        for idx, item in enumerate(plan):
            queues.setdefault(item[0].id, []).append(idx)
        owners = [item[0].id for item in plan]
        rng.shuffle(owners)
        cursors = {uid: iter(idxs) for uid, idxs in queues.items()}
        ordered = [next(cursors[uid]) for uid in owners]

        step = timedelta(days=360) / len(ordered)
        txn_rows = []
        for seq, idx in enumerate(ordered):
            user, kind, account, counter, amount, description = plan[idx]
            legs = {account.id: amount, counter.id: -amount}
            fingerprint = (
                {"reason": description, "expires_at": None, "user": user.id}
                if kind == "credit_grant"
                else None
            )
            txn_rows.append(
                {
                    "idempotency_key": f"bench:{user.id}:{idx}",
                    "kind": kind,
                    "content_hash": ledger._content_hash(kind, legs, fingerprint),
                    "user_id": user.id,
                    "created_by_id": None,
                    "description": description,
                    "created_at": start + step * seq,
                }
            )
        ids = db.session.scalars(
            insert(LedgerTransaction).returning(LedgerTransaction.id, sort_by_parameter_order=True),
            txn_rows,
        ).all()
        entry_rows, lot_rows = [], []
        for txn_id, idx, row in zip(ids, ordered, txn_rows, strict=True):
            user, kind, account, counter, amount, description = plan[idx]
            for aid, amt in sorted({account.id: amount, counter.id: -amount}.items()):
                entry_rows.append(
                    {
                        "transaction_id": txn_id,
                        "account_id": aid,
                        "amount_minor": amt,
                        "currency": currency,
                        "created_at": row["created_at"],  # its transaction's, as posted
                    }
                )
            if kind == "credit_grant":
                lot_rows.append(
                    {
                        "user_id": user.id,
                        "account_id": account.id,
                        "currency": currency,
                        "amount_minor": amount,
                        "remaining_minor": amount,
                        "reason": description,
                        "expires_at": None,
                        "expired_at": None,
                        "granted_by_id": None,
                        "transaction_id": txn_id,
                        "created_at": row["created_at"],
                    }
                )
        db.session.execute(insert(LedgerEntry), entry_rows)
        db.session.execute(insert(CreditLot), lot_rows)
        for aid, value in balance.items():
            db.session.execute(
                update(LedgerAccount).where(LedgerAccount.id == aid).values(balance_minor=value)
            )
        db.session.commit()

        # The newest few through the real services, beside the bulk rows.
        credits.grant_credit(
            user=main,
            amount=Money(2500, currency),
            reason="Welcome credit",
            idempotency_key="bench-welcome",
        )
        for legs, kind, key in (
            (
                [(clearing, -10_000), (ledger.user_account(main, AccountKind.CASH), 10_000)],
                "topup",
                "bench-topup-0",
            ),
            (
                [(ledger.user_account(main, AccountKind.CASH), -1_234), (revenue, 1_234)],
                "charge",
                "bench-charge-0",
            ),
        ):
            ledger.post_transaction(
                idempotency_key=key, kind=kind, legs=legs, user_id=main.id, description=""
            )
        db.session.commit()

        problems = find_discrepancies()
        if problems:
            fail("the seeded ledger does not reconcile:\n" + "\n".join(problems[:20]))
        wallet_ids = [a.id for a in wallet[main.id].values()] + [
            ledger.user_account(main, AccountKind.VOUCHER).id
        ]
        count = db.session.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .where(LedgerEntry.account_id.in_(wallet_ids))
        )
        if count != ENTRIES:
            fail(f"seeded {count} wallet entries, expected {ENTRIES}")
        email = db.session.get(User, main.id).email
        db.session.remove()
        if db.engine.dialect.name == "postgresql":
            # What autovacuum would have done by now (it may be off on a bench server):
            # planner statistics and the visibility map for index-only scans.
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
    return email


def seed_usage(app, email: str) -> dict[str, int]:
    """The measured user's deployments, invoiced for the last three full months (through the
    real metering and invoicing), an outbox message and a webhook endpoint; returns the ids
    the detail pages need."""
    with app.app_context():
        user = db.session.scalars(select(User).where(User.email == email)).one()
        now = utcnow()
        month = datetime(now.year, now.month, 1, tzinfo=UTC)
        starts = []
        for _ in range(3):
            month = (month - timedelta(days=1)).replace(day=1)
            starts.insert(0, month)
        ends = [*starts[1:], datetime(now.year, now.month, 1, tzinfo=UTC)]
        for i in range(DEPLOYMENTS):
            dep, _ = deployments.create_deployment(
                external_id=f"bench-dep-{i}",
                user=user,
                kind="vm",
                name=f"web-{i}",
                cpu_cores=1 + i % 4,
                memory_gb=2,
                storage_gb=20,
                labels={"team": f"t{i % 3}"},
                started_at=starts[0],
            )
            if i % 4 == 3:  # some were deleted during the second month
                deployments.delete_deployment(dep, ended_at=starts[1] + timedelta(days=10))
        db.session.commit()
        invoice_ids = []
        for start, end in zip(starts, ends, strict=True):
            invoice, _ = invoice_run.generate_for_user(db.session.get(User, user.id), start, end)
            db.session.commit()
            invoice_ids.append(invoice.id)
        message = mail.queue_email(
            to=user.email, subject="Welcome", template="welcome", user_id=user.id
        )
        endpoint, _ = endpoints.create_endpoint(
            endpoints.EndpointInput(url="https://hooks.example.com/in", event_types=None),
            actor=None,
            now=utcnow(),
        )
        db.session.commit()
        ids = {
            "user": user.id,
            "invoice": invoice_ids[-1],
            "message": message.id,
            "endpoint": endpoint.id,
        }
        db.session.remove()
    return ids


def seed_accounts(app) -> None:
    """The ADMIN_USERS accounts and the admin (bench/admin_users.py's seed), then their
    usage (seed_account_usage)."""
    admin_users.ACCOUNTS = ADMIN_USERS
    admin_users.seed(app)
    seed_account_usage(app)


def seed_account_usage(app) -> int:
    """One running deployment for each of admin_users' accounts, started USAGE_DAYS days ago
    (at midnight UTC) and metered through the last complete hour: what Admin › Usage reports
    and the admin dashboard's month of usage read. As bench/load.py seeds its year: the
    deployments and their intervals are inserted in bulk (the rows create_deployment would
    write), and the rollups are written by the product's metering (runs.meter_all, from each
    chunk's mark), so that usage-audit finds them equal to the intervals. A chunk whose mark
    is already past the start (the measured user's chunk, metered by its invoicing) gets
    the new users' hours before its mark by the metering's own rollup statement, as the
    backfill of a change before the mark does. Returns the rollup rows written."""
    with app.app_context():
        now = utcnow()
        first_day = now.date() - timedelta(days=USAGE_DAYS - 1)
        start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
        version = catalog.ensure_catalog()
        users = db.session.scalars(
            select(User.id)
            .where(User.email.like("user%@example.com"), User.is_admin.is_(False))
            .order_by(User.id)
        ).all()
        rows = [
            {
                "external_id": f"acct-{uid}",
                "user_id": uid,
                "kind": "k8s" if uid % 4 == 0 else "vm",
                "name": f"app-{uid % 100}",
                "labels": {"team": f"t{uid % 3}"},
                "state": "active",
                "price_version_id": version.id,
                "cpu_milli": 1000 * (1 + uid % 2),
                "memory_mgb": 2000,
                "storage_mgb": 20000,
                "public_ip": uid % 5 == 0,
                "started_at": start,
                "created_at": start,
                "updated_at": start,
            }
            for uid in users
        ]
        ids: list[int] = []
        for at in range(0, len(rows), BATCH):
            ids += db.session.scalars(
                insert(Deployment).returning(Deployment.id, sort_by_parameter_order=True),
                rows[at : at + BATCH],
            ).all()
        intervals = [
            {
                "deployment_id": dep_id,
                "user_id": row["user_id"],
                "start_epoch": rollups.epoch(start),
                "end_epoch": None,
                "state": "active",
                "cpu_milli": row["cpu_milli"],
                "memory_mgb": row["memory_mgb"],
                "storage_mgb": row["storage_mgb"],
                "instances": 0,
                "public_ips": 1 if row["public_ip"] else 0,
                "cpu_rate_micros": version.cpu_per_core_hour_micros,
                "memory_rate_micros": version.memory_per_gb_hour_micros,
                "storage_rate_micros": version.storage_per_gb_month_micros,
                "instance_rate_micros": 0,
                "ip_rate_micros": version.public_ip_per_hour_micros,
            }
            for dep_id, row in zip(ids, rows, strict=True)
        ]
        for at in range(0, len(intervals), BATCH):
            db.session.execute(insert(DeploymentInterval), intervals[at : at + BATCH])
        size = rollups.chunk_size()
        for chunk in sorted({uid // size for uid in users}):
            lo = max(chunk * size, users[0])
            hi = min((chunk + 1) * size, users[-1] + 1)
            rollups.ensure_mark(lo, start)
            mark = rollups.lock_mark(chunk)
            if mark is not None and mark.metered_through > start:
                rollups._roll_up(
                    rollups._WHERE_CHUNK,
                    {"chunk": chunk, "user_lo": lo, "user_hi": hi},
                    rollups.epoch(start),
                    rollups.epoch(mark.metered_through),
                    +1,
                )
        db.session.commit()
        result = runs.meter_all(rollups.last_complete_hour(now))
        # The intervals went in by bulk INSERT, past the statement that keeps the running
        # costs (the dashboard's projection): count them.
        totals.recount(rollups.chunk_size())
        db.session.commit()
        # usage-audit's check (the rollups against the intervals): ~14 s on PostgreSQL for
        # these 10,000 deployments, twice the seeding, so on request only.
        problems = rollups.audit_usage() if os.environ.get("BENCH_AUDIT_USAGE") else []
        if problems:
            fail("the seeded usage does not match its intervals:\n" + "\n".join(problems[:20]))
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        db.session.remove()
    return result.rows


def pages(app, ids: dict[str, int]) -> tuple[list[str], list[str]]:
    """(user pages, admin pages): the GET routes without arguments from the url_map, plus
    the detail pages of the rows seeded."""
    details = {
        "/invoices/<int:invoice_id>": f"/invoices/{ids['invoice']}",
        "/admin/users/<int:user_id>": f"/admin/users/{ids['user']}",
        "/admin/invoices/<int:invoice_id>": f"/admin/invoices/{ids['invoice']}",
        "/admin/outbox/<int:message_id>": f"/admin/outbox/{ids['message']}",
        "/admin/webhooks/<int:endpoint_id>": f"/admin/webhooks/{ids['endpoint']}",
    }
    urls = []
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.rule.startswith(("/api/", "/static/", "/auth/")):
            continue
        if rule.rule in NOT_PAGES:
            continue
        if not rule.arguments:
            urls.append(rule.rule)
        elif rule.rule in details:
            urls.append(details[rule.rule])
    urls.sort()
    return [u for u in urls if not u.startswith("/admin")], [
        u for u in urls if u.startswith("/admin")
    ]


def login(app, email: str):
    client = app.test_client()
    page = client.get("/auth/login")
    match = CSRF_RE.search(page.get_data(as_text=True))
    if page.status_code != 200 or not match:
        fail(f"no CSRF token on the login page (status {page.status_code})")
    answer = client.post(
        "/auth/login", data={"email": email, "password": PASSWORD, "csrf_token": match.group(1)}
    )
    if answer.status_code != 303:
        fail(f"login of {email} failed with status {answer.status_code}")
    return client


def measure(app, client, url: str) -> dict:
    """Median and p99 of REQUESTS timed GETs of ``url``, and the SQL statements one makes."""
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    for _ in range(WARMUP):
        response = client.get(url)
        if response.status_code != 200:
            fail(f"GET {url} answered {response.status_code}")
    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        client.get(url)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    timings = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            fail(f"GET {url} answered {response.status_code}")
    return {
        "median_ms": round(statistics.median(timings), 2),
        "p99_ms": round(percentile(timings, 99), 2),
        "queries": len(statements),
    }


def check_wallet(client) -> None:
    body = client.get("/wallet/").get_data(as_text=True)
    # 10,000 seeded entries, plus the invoices' settlements from the cash balance.
    if body.count('<tr id="entry-') != 25 or not re.search(r"Page 1 of 4\d\d\b", body):
        fail("unexpected wallet page: not the 10,000 entries seeded")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def main() -> None:
    url = os.environ.get("DATABASE_URL") or DEFAULT_PG
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS
    out = sys.stdout
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        # Everything but the result line goes to stderr (the app logs to stdout).
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        database_url = prepare_database(url, stack)
        app = build_app(database_url, redis_url)
        try:
            email = seed(app)
            ids = seed_usage(app, email)
            # Then 10,000 accounts and the admin, as bench/admin_users.py seeds them, with
            # a deployment each metered for the last USAGE_DAYS days.
            seed_accounts(app)
            user_pages, admin_pages = pages(app, ids)
            client = login(app, email)
            check_wallet(client)
            for page in user_pages:
                results[page] = measure(app, client, page)
                print(f"{page}: {results[page]}", file=sys.stderr)
            client = login(app, admin_users.ADMIN)
            for page in admin_pages:
                results[page] = measure(app, client, page)
                print(f"{page}: {results[page]}", file=sys.stderr)
            with app.app_context():
                dialect = db.engine.dialect.name
        finally:
            with app.app_context():
                db.engine.dispose()
    medians = [r["median_ms"] for r in results.values()]
    p99s = [r["p99_ms"] for r in results.values()]
    print(
        json.dumps(
            {
                "bench": "pages",
                "db": dialect,
                "timing": "server time, Flask test client in-process",
                "generic_plans": os.environ.get("BENCH_GENERIC_PLANS", "1") != "0",
                "entries": ENTRIES,
                "users": ADMIN_USERS,
                "requests_per_page": REQUESTS,
                "worst_median_ms": max(medians),
                "worst_p99_ms": max(p99s),
                "max_queries": max(r["queries"] for r in results.values()),
                "goal_met": max(medians) < 12 and max(p99s) < 30,
                "pages": results,
            }
        ),
        file=out,
        flush=True,
    )


if __name__ == "__main__":
    main()

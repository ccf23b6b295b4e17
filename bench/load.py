#!/usr/bin/env python
"""Load benchmark: the real server under 20, 50 and 100 concurrent simulated users.

Seeds a fresh PostgreSQL database (``portal_bench_load``, dropped and re-created) with
10,000 users and a year of history, starts ``flask billing serve`` on it (gunicorn with
serve's default two web workers, an RQ worker, the billing daemon and the Stripe stand-in,
on free ports of 127.0.0.1), and runs locust headless against it: bench/load_locust.py's
simulated users, each a different seeded user, log in through the login form (CSRF token)
and follow mixed journeys with think time (Overview; Usage and a period switch; Invoices,
an invoice, its PDF; the Wallet; the JSON API's usage and invoices with a bearer token).
At each concurrency the same number of users, with the same think time, then load a bare
Flask + SQLAlchemy + Jinja app (bench/bare_app.py: one indexed query, a page as large as
the Overview) under gunicorn with the same worker count.

The seed (``seed(app)``, importable):
- 10,000 users (one shared password, its argon2 hash computed once) with their four ledger
  accounts, a user API token each, and two deployments each: one running for the whole
  year (2 cores, 4 GB, 40 GB, a public IP), one from the 4th to the 8th month (1 core, 2 GB,
  20 GB); metered through the last complete hour by ``runs.meter_all`` (a month at a time).
- The twelve billing periods before the current one invoiced by ``invoice_run.generate_period``
  (as the daemon does, each the day after its period ended): 120,000 invoices.
- Card top-ups and invoice payments in bulk (ledger transactions, entries, invoice payments,
  the invoices paid and the cached balances, as settlement writes them; no
  ``billing.invoice.paid`` events): before each invoice two top-ups of 1.05-1.3 times its
  total, the invoice paid from the prepaid balance the day after it was issued. One user in
  five tops up exactly each invoice and nothing before the latest, which stays open (not
  yet due) with their cash at 0. ``find_discrepancies()`` must be empty.
- PDFs: rendered (``documents.render_invoice_pdf``) for the latest invoice of each user the
  load logs in; the journeys download those. Rendering all 120,000 (about 0.2 s each) would
  take hours: the others are left without a PDF (pdf_status "none", so the daemon's sweep
  does not queue them and the worker stays idle, as in a steady state).
- The invoice runs' job requests (PDF renders) are marked done and the Redis database is
  flushed, so the worker and daemon start with nothing waiting. VACUUM ANALYZE, as
  autovacuum would have.
Then (in main) one daemon cycle with its jobs inline (``flask billing daemon --once``,
RQ_ASYNC off): a new installation's first cycle runs every periodic job once (the daily
settlement, the last period's invoice run...), which would otherwise land in the first step.

Rate limits: the server runs with LOGIN_RATE_LIMIT="100000 per minute" in its environment
(the documented setting; every simulated user logs in from 127.0.0.1), nothing else changed.

Per step: the users spawn over about 5 s and log in; 10 s after the last login is answered
(the requests that queued behind the logins are answered meanwhile), BENCH_STEP_SECONDS
(default 60) are counted, per route: requests, failures, requests per second, p50 and p99
(locust's rounding: whole ms under 100 ms, 10 ms steps up to 1 s). Logins (argon2) are timed apart (``login_p50_ms``/``login_p99_ms``; a failed login
counts as an error).

Prints one JSON line on stdout (everything else goes to stderr):
    {"bench": "load", "db": "postgresql", "users": 10000, "web_workers": 2, "cpus": 2,
     "step_seconds": 60, "think_s": [0.5, 1.5], "page_bytes": ..., "steps": {"50": {"portal":
     {"rps": ..., "p50_ms": ..., "p99_ms": ..., "errors": ..., "routes": {...}}, "bare":
     {...}, "ratio": ..., "goal": {"p99_under_100ms": ..., "no_errors": ..., "ratio_at_least_0_6":
     ...}, "goal_met": ...}, ...}, "goal_met": ...}
Goal (at 50 concurrent users): p99 < 100 ms on every route, no errors, and the portal's
throughput at least 60% of the bare app's.

Environment:
    DATABASE_URL        default postgresql://postgres@127.0.0.1:5432/portal_bench_load (a
                        database whose name starts with portal_bench; dropped and re-created)
    REDIS_URL           default redis://127.0.0.1:6379/12 (FLUSHED before the run: the
                        server's queues and rate limits)
    BENCH_USERS         seeded users (default 10000)
    BENCH_STEPS         concurrent users per step (default "20,50,100")
    BENCH_STEP_SECONDS  seconds per step and app (default 60)
    BENCH_THINK         think time between a user's requests, "min,max" s (default "0.5,1.5")
    BENCH_WEB_WORKERS   gunicorn workers for both apps (default 2, serve's default)
    BENCH_KEEP          a directory to keep each locust run's figures and the server logs in
    BENCH_REUSE         1: no seeding; the database and BENCH_KEEP of a previous run, as that
                        run left them (to try other settings, e.g. BENCH_WEB_WORKERS)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import flask_migrate
import psycopg
from argon2 import PasswordHasher
from redis import Redis
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import make_url

from portal import create_app
from portal.extensions import db
from portal.models import (
    AccountKind,
    ApiToken,
    Invoice,
    InvoicePayment,
    JobRequest,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    MeterMark,
    PaymentTender,
    utcnow,
)
from portal.services import calendar
from portal.services.accounts import TOKEN_PREFIX
from portal.services.invoicing import documents
from portal.services.invoicing import run as invoice_run
from portal.services.metering import catalog, rollups, runs, totals
from portal.services.payments import settlement
from portal.services.wallet import ledger
from portal.services.wallet.reconcile import find_discrepancies

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

USERS = int(os.environ.get("BENCH_USERS", "10000"))
STEPS = [int(n) for n in os.environ.get("BENCH_STEPS", "20,50,100").split(",")]
STEP_SECONDS = int(os.environ.get("BENCH_STEP_SECONDS", "60"))
THINK = [float(x) for x in os.environ.get("BENCH_THINK", "0.5,1.5").split(",")]
WEB_WORKERS = int(os.environ.get("BENCH_WEB_WORKERS", "2"))
MONTHS = 12
WARMUP_USERS = 4  # 15 s before the steps, on seeded users of their own
RAMP_CAP_SECONDS = 180
SETTLE_SECONDS = 10  # after the last login, before counting
GOAL_USERS = 50
GOAL_P99_MS = 100
GOAL_RATIO = 0.6
PASSWORD = "bench-password-0123"
SECRET_KEY = "bench-secret-key-0123456789abcdef"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/portal_bench_load"
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
# The server's own settings for the run: logins from one address must not be refused.
SERVER_ENV = {"LOGIN_RATE_LIMIT": "100000 per minute", "LOG_LEVEL": "warn"}
CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
BATCH = 20_000


def log(message: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    print(f"bench/load.py: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def prepare_database(url: str) -> str:
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgres"):
        fail("PostgreSQL only: the server's processes share the database")
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
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def build_app(database_url: str, redis_url: str):
    """The seeding app: jobs go to Redis (RQ_ASYNC), so no PDF renders in this process."""
    app = create_app(
        {
            "TESTING": False,
            "SECRET_KEY": SECRET_KEY,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "RQ_ASYNC": True,
            "CURRENCY": "USD",
            "LOG_LEVEL": "error",
            **SERVER_ENV,
        }
    )
    with app.app_context():
        flask_migrate.upgrade()
    return app


# -- the seed --------------------------------------------------------------------------------


def token_for(user_id: int) -> str:
    """The user's API token (deterministic, so the load knows it; only its hash is stored)."""
    digest = hashlib.sha256(f"bench-load-token:{user_id}".encode()).hexdigest()
    return TOKEN_PREFIX + digest[:43]


@dataclass
class Seeded:
    periods: list[str]  # "YYYY-MM", newest first: the current period, then the invoiced ones
    load_users: list[dict] = field(default_factory=list)
    invoices: int = 0
    wallet_entries: int = 0
    pdfs: int = 0


def _periods(now: datetime) -> list[tuple[datetime, datetime]]:
    """The MONTHS billing periods before the current one, oldest first."""
    day = calendar.invoice_day()
    start, _ = calendar.period_containing(now, day)
    out = []
    for _ in range(MONTHS):
        start, end = calendar.period_containing(start - timedelta(days=1), day)
        out.insert(0, (start, end))
    return out


def seed(app, *, users: int = USERS, load_users: int = 0) -> Seeded:
    """USERS users with a year of history (see the module docstring); the first
    ``load_users`` get their latest invoice's PDF rendered and are described in the result
    (email, token, invoice ids) for the simulated users."""
    rng = random.Random(20261206)
    now = utcnow()
    with app.app_context():
        periods = _periods(now)
        year_start = periods[0][0]
        version = catalog.ensure_catalog()
        ledger.pin_currency("USD")
        db.session.commit()
        password_hash = PasswordHasher(**app.config.get("PASSWORD_HASH_PARAMS", {})).hash(PASSWORD)
        created = year_start - timedelta(days=3)
        params = {"n": users, "created": created, "hash": password_hash}
        db.session.execute(
            text("""
            INSERT INTO users (id, email, name, password_hash, is_admin, is_enabled,
                               auth_version, currency, created_at)
            SELECT n, 'user' || n || '@load.example', 'Customer ' || n, :hash, false, true,
                   1, 'USD', :created FROM generate_series(1, :n) n"""),
            params,
        )
        db.session.execute(
            text("""
            INSERT INTO ledger_accounts (user_id, kind, currency, balance_minor, created_at)
            SELECT u.id, k.kind, u.currency, 0, :created
            FROM users u CROSS JOIN (VALUES (1, 'cash'), (2, 'voucher'), (3, 'credit'),
                                            (4, 'receivable')) AS k(pos, kind)
            ORDER BY u.id, k.pos"""),
            params,
        )
        db.session.execute(
            insert(ApiToken),
            [
                {
                    "user_id": uid,
                    "name": "platform scripts",
                    "scope": "user",
                    "prefix": token_for(uid)[:10],
                    "token_hash": hashlib.sha256(token_for(uid).encode()).hexdigest(),
                    "created_at": created,
                }
                for uid in range(1, users + 1)
            ],
        )
        # Two deployments per user: n = 2 * user - 1 runs all year, n = 2 * user from the
        # 4th month to the 8th.
        y0 = int(year_start.timestamp())
        b_start = periods[3][0]
        b_end = periods[7][1]
        shape = "(CASE WHEN n % 2 = 1 THEN {a} ELSE {b} END)"
        db.session.execute(
            text(f"""
            INSERT INTO deployments (id, external_id, user_id, kind, name, labels, state,
                                     price_version_id, cpu_milli, memory_mgb, storage_mgb,
                                     public_ip, started_at, ended_at, created_at, updated_at)
            SELECT n, 'dep-' || n, (n + 1) / 2, 'vm',
                   {shape.format(a="'web'", b="'batch'")}, '{{}}',
                   {shape.format(a="'active'", b="'terminated'")}, :version,
                   {shape.format(a=2000, b=1000)}, {shape.format(a=4000, b=2000)},
                   {shape.format(a=40000, b=20000)}, n % 2 = 1,
                   {shape.format(a=":y0", b=":b0")}, {shape.format(a="NULL", b=":b1")},
                   {shape.format(a=":y0", b=":b0")}, {shape.format(a=":y0", b=":b1")}
            FROM generate_series(1, :n) n"""),
            {
                "n": 2 * users,
                "version": version.id,
                "y0": year_start,
                "b0": b_start,
                "b1": b_end,
            },
        )
        db.session.execute(
            text(f"""
            INSERT INTO deployment_intervals (deployment_id, user_id, start_epoch, end_epoch,
                state, cpu_milli, memory_mgb, storage_mgb, instances, public_ips,
                cpu_rate_micros, memory_rate_micros, storage_rate_micros, instance_rate_micros,
                ip_rate_micros)
            SELECT n, (n + 1) / 2, {shape.format(a=":y0", b=":b0")},
                   {shape.format(a="NULL", b=":b1")}, 'active',
                   {shape.format(a=2000, b=1000)}, {shape.format(a=4000, b=2000)},
                   {shape.format(a=40000, b=20000)}, 0, {shape.format(a=1, b=0)},
                   :cpu, :mem, :disk, 0, :ip
            FROM generate_series(1, :n) n"""),
            {
                "n": 2 * users,
                "y0": y0,
                "b0": int(b_start.timestamp()),
                "b1": int(b_end.timestamp()),
                "cpu": version.cpu_per_core_hour_micros,
                "mem": version.memory_per_gb_hour_micros,
                "disk": version.storage_per_gb_month_micros,
                "ip": version.public_ip_per_hour_micros,
            },
        )
        db.session.execute(
            insert(MeterMark),
            [
                {"chunk": chunk, "metered_through": year_start}
                for chunk in range(users // rollups.chunk_size() + 1)
            ],
        )
        for table, value in (("users", users), ("deployments", 2 * users)):
            db.session.execute(text(f"SELECT setval('{table}_id_seq', :n)"), {"n": value})
        # Inserted in bulk, past the statement that keeps the running costs: count them.
        totals.recount(rollups.chunk_size())
        db.session.commit()
        log(f"seeded {users} users, {2 * users} deployments, {users} API tokens")

        # Metering, a month at a time, through the last complete hour.
        last_hour = rollups.last_complete_hour(now)
        upto = year_start
        while upto < last_hour:
            upto = min(upto + timedelta(days=31), last_hour)
            runs.meter_all(upto)
        log("metered the year")

        # The invoice runs, each the day after its period ended, as the daemon runs them.
        for start, end in periods:
            result = invoice_run.generate_period(start, end, now=end + timedelta(days=1, hours=3))
            db.session.commit()
            log(f"invoiced {start:%Y-%m}: {result.invoices} invoices")
        db.session.remove()

        _money_moves(rng)
        log("topped up and paid the invoices")

        # Nothing waiting for the worker: the runs' PDF requests (and anything else they
        # asked for) are marked done, and the PDFs nobody downloads are not to be made.
        db.session.execute(
            update(JobRequest)
            .where(JobRequest.status != "done")
            .values(status="done", finished_at=utcnow())
        )
        db.session.execute(
            update(Invoice).where(Invoice.pdf_status != "ready").values(pdf_status="none")
        )
        db.session.commit()
        out = Seeded(periods=[calendar.period_name(p[0]) for p in reversed(_periods_with_now(now))])
        for uid in range(1, load_users + 1):
            ids = list(
                db.session.scalars(
                    select(Invoice.id).where(Invoice.user_id == uid).order_by(Invoice.id)
                )
            )
            if not ids:
                fail(f"user {uid} has no invoice")
            db.session.execute(
                update(Invoice).where(Invoice.id == ids[-1]).values(pdf_status="pending")
            )
            db.session.commit()
            documents.render_invoice_pdf(ids[-1])
            db.session.commit()
            out.load_users.append(
                {
                    "id": uid,
                    "email": f"user{uid}@load.example",
                    "token": token_for(uid),
                    "invoices": ids,
                    "pdf_invoice": ids[-1],
                }
            )
        db.session.execute(
            update(JobRequest)
            .where(JobRequest.status != "done")
            .values(status="done", finished_at=utcnow())
        )
        db.session.commit()
        out.pdfs = load_users
        log(f"rendered {load_users} PDFs")

        problems = find_discrepancies()
        if problems:
            fail("the seeded ledger does not reconcile:\n" + "\n".join(problems[:20]))
        out.invoices = db.session.scalar(select(func.count()).select_from(Invoice))
        out.wallet_entries = db.session.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
            .where(LedgerAccount.user_id.is_not(None), LedgerAccount.kind == "cash")
        )
        if out.invoices != users * MONTHS:
            fail(f"{out.invoices} invoices, expected {users * MONTHS}")
        db.session.remove()
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    return out


def _periods_with_now(now: datetime) -> list[tuple[datetime, datetime]]:
    return [*_periods(now), calendar.period_containing(now, calendar.invoice_day())]


def _insert_transactions(rows: list[dict]) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(rows), BATCH):
        ids += db.session.scalars(
            insert(LedgerTransaction).returning(LedgerTransaction.id, sort_by_parameter_order=True),
            rows[start : start + BATCH],
        ).all()
    return ids


def _money_moves(rng: random.Random, unpaid_share: float = 0.2) -> None:
    """The year's card top-ups and invoice payments from the prepaid balance, in bulk.

    Before each invoice, two card top-ups adding up to 1.05-1.3 times its total; the day
    after it was issued, the prepaid balance pays it in full (a ledger transaction from cash
    to receivable, the invoice payment, the invoice paid), as settlement does. A share of the
    users (``unpaid_share``) top up exactly each invoice's total and nothing before the
    latest one, which stays open (not yet due) with their cash at 0, so the settlement sweep
    has nothing to pay. Cached balances follow the entries exactly; no wallet goes negative.
    (The bulk payments record no ``billing.invoice.paid`` events.)"""
    invoices = db.session.execute(
        select(
            Invoice.id,
            Invoice.user_id,
            Invoice.number,
            Invoice.total_minor,
            Invoice.period_start,
            Invoice.period_end,
            Invoice.finalized_at,
        ).order_by(Invoice.user_id, Invoice.period_start)
    ).all()
    accounts = {
        (uid, kind): aid
        for aid, uid, kind in db.session.execute(
            select(LedgerAccount.id, LedgerAccount.user_id, LedgerAccount.kind).where(
                LedgerAccount.kind.in_(("cash", "receivable"))
            )
        )
    }
    clearing = ledger.system_account(AccountKind.STRIPE_CLEARING, "USD").id
    db.session.commit()
    last = {inv.user_id: inv.id for inv in invoices}
    unpaid = {uid for uid in last if rng.random() < unpaid_share}
    label = settlement.TENDER_LABELS[PaymentTender.CASH]
    topups, payments = [], []  # transaction rows; their legs
    topup_legs, payment_legs, paid = [], [], []
    balance: dict[int, int] = {}
    for inv in invoices:
        cash, receivable = accounts[inv.user_id, "cash"], accounts[inv.user_id, "receivable"]
        owing = inv.user_id in unpaid
        if owing and inv.id == last[inv.user_id]:
            amount = 0  # no money for the latest invoice: it stays open
        elif owing:
            amount = inv.total_minor  # exactly what each invoice takes: their cash ends at 0
        else:
            amount = inv.total_minor * rng.randrange(105, 131) // 100
        first = rng.randrange(0, amount + 1)
        span = (inv.period_end - inv.period_start).total_seconds()
        for n, part in enumerate((first, amount - first)):
            if part <= 0:
                continue
            legs = {cash: part, clearing: -part}
            topups.append(
                {
                    "idempotency_key": f"bench-load:topup:{inv.id}:{n}",
                    "kind": "topup",
                    "content_hash": ledger._content_hash("topup", legs, None),
                    "user_id": inv.user_id,
                    "created_by_id": None,
                    "description": "Card top-up",
                    "created_at": inv.period_start
                    + timedelta(seconds=rng.uniform(0.1, 0.9) * span),
                }
            )
            topup_legs.append(legs)
            balance[cash] = balance.get(cash, 0) + part
        if owing and inv.id == last[inv.user_id] or inv.total_minor <= 0:
            continue
        legs = {cash: -inv.total_minor, receivable: inv.total_minor}
        at = inv.finalized_at + timedelta(hours=1)
        payments.append(
            {
                "idempotency_key": f"invoice:{inv.id}:pay:1:cash",
                "kind": "invoice_payment",
                "content_hash": ledger._content_hash("invoice_payment", legs, None),
                "user_id": inv.user_id,
                "created_by_id": None,
                "description": f"{label} paid {inv.number}",
                "created_at": at,
            }
        )
        payment_legs.append(legs)
        paid.append((inv.id, inv.total_minor, at))
        balance[cash] -= inv.total_minor
        balance[receivable] = balance.get(receivable, 0) - inv.total_minor
    entries = []
    payment_ids = _insert_transactions(payments)
    for txn_id, legs in zip(
        _insert_transactions(topups) + payment_ids, topup_legs + payment_legs, strict=True
    ):
        entries += [
            {"transaction_id": txn_id, "account_id": a, "amount_minor": m, "currency": "USD"}
            for a, m in sorted(legs.items())
        ]
    for start in range(0, len(entries), BATCH):
        db.session.execute(insert(LedgerEntry), entries[start : start + BATCH])
    rows = [
        {
            "invoice_id": iid,
            "tender": "cash",
            "amount_minor": amount,
            "currency": "USD",
            "reference": "",
            "ledger_transaction_id": txn_id,
            "created_by_id": None,
            "created_at": at,
        }
        for txn_id, (iid, amount, at) in zip(payment_ids, paid, strict=True)
    ]
    for start in range(0, len(rows), BATCH):
        db.session.execute(insert(InvoicePayment), rows[start : start + BATCH])
    db.session.execute(
        text("""
        UPDATE invoices i SET status = 'paid', amount_paid_minor = v.amount, paid_at = v.at
        FROM (SELECT unnest(CAST(:ids AS bigint[])) AS id,
                     unnest(CAST(:amounts AS bigint[])) AS amount,
                     unnest(CAST(:ats AS timestamptz[])) AS at) v
        WHERE i.id = v.id"""),
        {"ids": [p[0] for p in paid], "amounts": [p[1] for p in paid], "ats": [p[2] for p in paid]},
    )
    db.session.execute(
        text("""
        UPDATE ledger_accounts a SET balance_minor = a.balance_minor + v.add
        FROM (SELECT unnest(CAST(:ids AS bigint[])) AS id,
                     unnest(CAST(:adds AS bigint[])) AS add) v
        WHERE a.id = v.id"""),
        {"ids": list(balance), "adds": list(balance.values())},
    )
    db.session.commit()


def page_bytes(app, email: str) -> int:
    """The Overview page's size for one seeded user (the bare app serves as many bytes)."""
    client = app.test_client()
    page = client.get("/auth/login")
    match = CSRF_RE.search(page.get_data(as_text=True))
    if not match:
        fail("no CSRF token on the login page")
    answer = client.post(
        "/auth/login", data={"email": email, "password": PASSWORD, "csrf_token": match[1]}
    )
    if answer.status_code != 303:
        fail(f"login of {email} answered {answer.status_code}")
    overview = client.get("/overview/")
    if overview.status_code != 200:
        fail(f"/overview/ answered {overview.status_code}")
    return len(overview.get_data())


# -- the servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Server:
    """A process group started here, stopped with SIGTERM (then SIGKILL, every descendant)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path, cwd=None):
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd or ROOT,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        fail(f"{self.name} did not answer {url} in {timeout:.0f} s:\n{self.tail()}")

    def tail(self) -> str:
        self.log_file.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            family = _children(self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pid in family:  # serve's children run in their own sessions
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.log_file.close()


def server_env(database_url: str, redis_url: str, instance: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": SECRET_KEY,
        "INSTANCE_PATH": str(instance),
        **SERVER_ENV,
    }
    env.pop("STRIPE_SECRET_KEY", None)  # the local stand-in plays the card processor
    return env


def catch_up_schedule(database_url: str, redis_url: str, work: Path) -> None:
    """One daemon cycle before the load, its jobs run in that process (RQ_ASYNC off): a new
    installation's first cycle runs every periodic job once (metering, the last period's
    invoice run, the sweeps); done here, the server's daemon starts with nothing due."""
    env = {**server_env(database_url, redis_url, work / "instance"), "RQ_ASYNC": "false"}
    with open(work / "daemon-once.log", "wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", "billing", "daemon", "--once"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
    if done.returncode != 0:
        fail(f"daemon --once exited with {done.returncode}: see {work / 'daemon-once.log'}")


def start_portal(database_url: str, redis_url: str, logs: Path, instance: Path) -> tuple:
    port = free_port()
    env = {**server_env(database_url, redis_url, instance), "STANDIN_PORT": str(free_port())}
    server = Server(
        "portal",
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "wsgi",
            "billing",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--web-workers",
            str(WEB_WORKERS),
        ],
        env,
        logs,
    )
    url = f"http://127.0.0.1:{port}"
    server.wait_ready(url + "/healthz")
    return server, url


def start_bare(database_url: str, size: int, logs: Path) -> tuple:
    port = free_port()
    env = {**os.environ, "BARE_DATABASE_URL": database_url, "BARE_PAGE_BYTES": str(size)}
    server = Server(
        "bare",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--chdir",
            str(BENCH),
            "--workers",
            str(WEB_WORKERS),
            "--bind",
            f"127.0.0.1:{port}",
            "--access-logfile",
            "-",  # as serve runs gunicorn
            "bare_app:app",
        ],
        env,
        logs,
    )
    url = f"http://127.0.0.1:{port}"
    server.wait_ready(f"{url}/page?id=1")
    return server, url


# -- the load --------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)] if ordered else 0.0


def run_locust(
    user_class: str,
    url: str,
    users: int,
    offset: int,
    users_file: Path,
    work: Path,
    seconds: int = STEP_SECONDS,
    tag: str = "",
) -> dict:
    """One headless locust run: users spawn (and log in) over about 5 s, then ``seconds``
    are counted; its figures from bench/load_locust.py's result file."""
    name = f"{user_class}-{users}{tag}"
    result_file = work / f"{name}.json"
    env = {
        **os.environ,
        "LOAD_USERS_FILE": str(users_file),
        "LOAD_USER_OFFSET": str(offset),
        "LOAD_USERS_COUNT": str(users),
        "LOAD_MEASURE_SECONDS": str(seconds),
        "LOAD_SETTLE_SECONDS": str(SETTLE_SECONDS),
        "LOAD_RESULT_FILE": str(result_file),
        "LOAD_THINK": ",".join(str(t) for t in THINK),
    }
    cap = seconds + SETTLE_SECONDS + RAMP_CAP_SECONDS  # the logins must be done by then
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(BENCH / "load_locust.py"),
        "--headless",
        "--host",
        url,
        "--users",
        str(users),
        "--spawn-rate",
        str(max(1, users / 5)),
        "--run-time",
        f"{cap}s",
        "--stop-timeout",
        "10",
        "--only-summary",
        "--loglevel",
        "WARNING",
        user_class,
    ]
    locust_log = work / f"{name}-locust.log"
    with open(locust_log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=cap + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not result_file.exists():
        fail(f"locust wrote no result:\n{locust_log.read_text()[-3000:]}")
    result = json.loads(result_file.read_text())
    if not result.pop("complete"):
        fail(f"{name}: not every user had logged in after {RAMP_CAP_SECONDS} s")
    logins = result.pop("logins")
    if logins:
        result["logins"] = len(logins)
        result["login_p50_ms"] = round(percentile(logins, 50), 1)
        result["login_p99_ms"] = round(percentile(logins, 99), 1)
    return result


def step_result(users: int, portal: dict, bare: dict) -> dict:
    ratio = round(portal["rps"] / bare["rps"], 3) if bare["rps"] else 0.0
    journey = {k: v for k, v in portal["routes"].items() if "/auth/login" not in k}
    goal = {
        "p99_under_100ms": bool(journey)
        and all(r["p99_ms"] < GOAL_P99_MS for r in journey.values()),
        "no_errors": portal["errors"] == 0 and bare["errors"] == 0,
        "ratio_at_least_0_6": ratio >= GOAL_RATIO,
    }
    return {
        "portal": portal,
        "bare": bare,
        "ratio": ratio,
        "goal": goal,
        "goal_met": all(goal.values()),
    }


def main() -> None:
    url = os.environ.get("DATABASE_URL") or DEFAULT_PG
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS
    out = sys.stdout
    servers: list[Server] = []

    def stop(signum, _frame):
        raise SystemExit(128 + signum)  # unwinds through the finally below

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)
    keep = os.environ.get("BENCH_KEEP")
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        work = (
            Path(keep)
            if keep
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="portal-load-")))
        )
        work.mkdir(parents=True, exist_ok=True)
        (work / "instance").mkdir(exist_ok=True)
        Redis.from_url(redis_url).flushdb()
        users_file = work / "users.json"
        if os.environ.get("BENCH_REUSE"):
            # The database a previous run seeded (its users.json in BENCH_KEEP), as that run
            # left it: for trying settings (BENCH_WEB_WORKERS...) without seeding again.
            if not keep or not users_file.exists():
                fail("BENCH_REUSE needs BENCH_KEEP naming a previous run's directory")
            database_url = make_url(url).set(drivername="postgresql").render_as_string(False)
            info = json.loads(users_file.read_text())
        else:
            database_url = prepare_database(url)
            app = build_app(database_url, redis_url)
            started = time.monotonic()
            seeded = seed(app, users=USERS, load_users=WARMUP_USERS + sum(STEPS))
            info = {
                "password": PASSWORD,
                "periods": seeded.periods,
                "users": seeded.load_users,
                "invoices": seeded.invoices,
                "cash_entries": seeded.wallet_entries,
                "seed_s": round(time.monotonic() - started, 1),
                "page_bytes": page_bytes(app, seeded.load_users[0]["email"]),
            }
            with app.app_context():
                db.engine.dispose()
            Redis.from_url(redis_url).flushdb()  # what the seeding enqueued is done already
            started = time.monotonic()
            catch_up_schedule(database_url, redis_url, work)
            log(f"one daemon cycle run in {time.monotonic() - started:.1f} s")
            users_file.write_text(json.dumps(info))
            log(
                f"seeded in {info['seed_s']} s: {info['invoices']} invoices, "
                f"{info['cash_entries']} cash entries, {len(info['users'])} PDFs; "
                f"Overview {info['page_bytes']} bytes"
            )
        size = info["page_bytes"]
        steps: dict[str, dict] = {}
        try:
            portal, portal_url = start_portal(database_url, redis_url, work, work / "instance")
            servers.append(portal)
            bare, bare_url = start_bare(database_url, size, work)
            servers.append(bare)
            log(f"portal at {portal_url}, bare app at {bare_url}; warming up")
            # Every worker's first requests (imports, templates, connections) are not counted.
            run_locust("PortalUser", portal_url, WARMUP_USERS, 0, users_file, work, 15, "-warmup")
            run_locust("BareUser", bare_url, WARMUP_USERS, 0, users_file, work, 15, "-warmup")
            offset = WARMUP_USERS
            for users in STEPS:
                log(f"{users} users: portal")
                p = run_locust("PortalUser", portal_url, users, offset, users_file, work)
                log(f"{users} users: bare app")
                b = run_locust("BareUser", bare_url, users, offset, users_file, work)
                offset += users
                steps[str(users)] = step_result(users, p, b)
                log(
                    f"{users} users: portal {p['rps']} req/s p50 {p['p50_ms']} p99 "
                    f"{p['p99_ms']} ms, {p['errors']} errors; bare {b['rps']} req/s p99 "
                    f"{b['p99_ms']} ms; ratio {steps[str(users)]['ratio']}"
                )
        finally:
            for server in reversed(servers):
                server.stop()
    goal_step = steps.get(str(GOAL_USERS))
    print(
        json.dumps(
            {
                "bench": "load",
                "db": "postgresql",
                "users": USERS,
                "invoices": info["invoices"],
                "cash_entries": info["cash_entries"],
                "seed_s": info["seed_s"],
                "reused": bool(os.environ.get("BENCH_REUSE")),
                "web_workers": WEB_WORKERS,
                "cpus": os.cpu_count(),
                "loadavg_1m": round(os.getloadavg()[0], 2),
                "step_seconds": STEP_SECONDS,
                "think_s": THINK,
                "page_bytes": size,
                "steps": steps,
                "goal_users": GOAL_USERS,
                "goal_met": bool(goal_step) and goal_step["goal_met"],
            }
        ),
        file=out,
        flush=True,
    )


if __name__ == "__main__":
    main()

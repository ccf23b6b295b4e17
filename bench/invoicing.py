#!/usr/bin/env python
"""Invoicing benchmark: a billing period's invoices for 10,000 users, and one invoice's PDF.

Prints one JSON line on stdout (everything else goes to stderr):
{"bench": "invoicing", "db": ..., "users": 10000, "invoices": ..., "wall_s": ...,
 "invoices_per_s": ..., "pdf_median_ms": ..., "bare_pdf_median_ms": ..., "pdf_ratio": ...,
 "peak_rss_mb": ...}

- Seeds, in set-based SQL: 10,000 users with their four ledger accounts (cash, voucher,
  credit, receivable), 5 deployments each (mixed shapes; one with a public IP, one started
  mid-month, one deleted mid-month) with their intervals, and the metering marks. 300 users get
  credits through the credits service (some covering the whole invoice, some part of it, some
  in two lots with an expiry). Then `runs.meter_all` meters October 2026 in day steps,
  as the metering job leaves a month, and (PostgreSQL) VACUUM ANALYZE runs, as autovacuum
  would have.
- wall_s: `invoice_run.generate_period` for October 2026, the real code path, one committed
  transaction per chunk of 1,000 users (on PostgreSQL the next chunk is read and built on a
  second connection while the one before is written; they commit in order): rollups
  aggregated into lines, invoices and lines
  written, numbers reserved, ledger postings, credits applied, snapshots, events, PDF
  requests. PDFs are excluded: the app runs with RQ_ASYNC on a Redis database reserved for
  the bench, so the invoices are written with their PDF pending and the render jobs are
  only enqueued after each commit (one batch job per commit; timed), and no PDF renders;
  the Redis database is flushed afterwards. Afterwards it checks invoices == users and
  `find_discrepancies() == []`.
- pdf_median_ms: median of 20 renders of one generated invoice's snapshot (one with a credit
  payment) through `portal.documents.invoice_pdf.render_pdf_bytes`; bare_pdf_median_ms:
  WeasyPrint's `HTML(string=...).write_pdf()` of the same HTML in the same run, as
  bench/invoice_pdf.py measures them (the two PDFs must be identical; three warm-ups each,
  then alternating which goes first, garbage collected before each). If bench/invoice_pdf.py
  offers `measure(snapshot)`, that is used instead.

Environment:
    DATABASE_URL   default: portal_bench_invoicing on postgresql://postgres@127.0.0.1:5432,
                   dropped and re-created (an explicit PostgreSQL URL must name a database
                   whose name starts with portal_bench); any sqlite URL: a temporary file.
    BENCH_REDIS_URL  default redis://127.0.0.1:6379/13 (flushed before and after).
    BENCH_USERS    default 10000 (BENCH_SCALE=10: 100000).
    BENCH_WORKERS  default 0: `invoice_run.generate_period` in this process. N >= 1: the
                   period's chunk jobs (`invoicing.generate_chunk`, one per chunk, as the
                   invoice run fans them out) run in N real RQ worker processes
                   (`python -m jobs.worker invoicing`), timed from the first enqueue to the
                   last chunk finished; adds "workers" to the line. The PDF jobs the chunks
                   ask for queue behind the chunks, so the workers reach them only after.
    BENCH_PROFILE  a file for a pyinstrument report of the timed run (pip install pyinstrument).
    BENCH_SUBSCRIBED  default 0: the share of users (0 to 1, every n-th user) subscribed to the
                   seed's Pro plan ($29.99 a month, 8 cores, 16 GB, 100 GB) in hybrid billing
                   mode since before the period: their invoices add the next month's fee in
                   advance and October's overage above the plan's limits; adds "subscribed"
                   to the line.

Usage: .venv/bin/python bench/invoicing.py
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flask_migrate
import psycopg
from redis import Redis
from sqlalchemy import bindparam, func, insert, select, text
from sqlalchemy.engine import make_url
from weasyprint import HTML

from portal import create_app
from portal.documents import invoice_pdf
from portal.extensions import db
from portal.models import Invoice, InvoicePayment, MeterMark, User
from portal.models.types import UTCDateTime
from portal.money import Money
from portal.services.invoicing import run as invoice_run
from portal.services.invoicing.snapshot import with_number
from portal.services.metering import catalog, rollups, runs
from portal.services.subscriptions import plans
from portal.services.wallet import credits, ledger
from portal.services.wallet.reconcile import find_discrepancies

try:
    from bench import invoice_pdf as pdf_bench  # another bench's measurement, if present
except ImportError:
    pdf_bench = None

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import rq_workers  # noqa: E402

USERS = int(os.environ.get("BENCH_USERS", 10_000 * int(os.environ.get("BENCH_SCALE", "1"))))
WORKERS = int(os.environ.get("BENCH_WORKERS", "0"))
SUBSCRIBED = float(os.environ.get("BENCH_SUBSCRIBED", "0"))
PER_USER = 5
CREDIT_USERS = min(300, USERS)
START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)
NOW = END + timedelta(days=1, hours=3)  # the run happens the day after the period ends
PDF_RENDERS = 20
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/portal_bench_invoicing"
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"


def fail(message: str) -> None:
    print(f"bench/invoicing.py: {message}", file=sys.stderr)
    raise SystemExit(1)


def prepare_database(url: str, stack: contextlib.ExitStack) -> str:
    if url.startswith("sqlite"):
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="portal-bench-"))
        return "sqlite:///" + os.path.join(tmp, "bench.sqlite3")

    parsed = make_url(url)
    name = parsed.database or ""
    if not re.fullmatch(r"portal_bench\w*", name):
        fail(f"refusing to drop database {name!r}: its name must start with portal_bench")
    admin = parsed.set(drivername="postgresql", database="postgres")
    with psycopg.connect(
        admin.render_as_string(hide_password=False), autocommit=True, connect_timeout=5
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url


def seq() -> str:
    """Rows n = 1..:count: generate_series on PostgreSQL, a recursive CTE on SQLite."""
    if db.engine.dialect.name == "postgresql":
        return "WITH seq(n) AS (SELECT generate_series(1, CAST(:count AS integer))) "
    return "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < :count) "


# Per deployment k of a user (0..4): cpu_milli, memory_mgb, storage_mgb, public IPs,
# start offset in hours, end offset in hours (NULL: still running).
SHAPES = [
    (2000, 4000, 20000, 1, 0, None),
    (1000, 2000, 50000, 0, 0, None),
    (4000, 16000, 100000, 0, 9 * 24 + 7, None),  # started on Oct 10
    (500, 1000, 10000, 0, 0, 19 * 24 + 13),  # deleted on Oct 20
    (8000, 32000, 200000, 0, 0, None),
]


def _shape_case(column: int) -> str:
    cases = " ".join(
        f"WHEN {k} THEN {'NULL' if s[column] is None else s[column]}" for k, s in enumerate(SHAPES)
    )
    return f"(CASE (n - 1) % {PER_USER} {cases} END)"


def sql(statement: str):
    """A statement whose times (:now, :ended) are bound as the models bind them (naive UTC
    on SQLite, where times compare as text)."""
    clause = text(statement)
    return clause.bindparams(
        *(
            bindparam(name, type_=UTCDateTime())
            for name in ("now", "ended")
            if f":{name}" in statement
        )
    )


def seed(app) -> None:
    with app.app_context():
        version = catalog.ensure_catalog()
        db.session.commit()
        start_epoch = int(START.timestamp())
        params = {"now": START - timedelta(days=30)}
        db.session.execute(
            sql(
                seq()
                + """
            INSERT INTO users (id, email, name, is_admin, is_enabled, auth_version, currency,
                               created_at)
            SELECT n, 'user' || n || '@bench.example', 'Customer ' || n, false, true, 1, 'USD',
                   :now FROM seq"""
            ),
            {"count": USERS, **params},
        )
        ledger.pin_currency("USD")  # as open_user_accounts does
        # The four accounts open_user_accounts gives every user, in the same order.
        db.session.execute(
            sql("""
            INSERT INTO ledger_accounts (user_id, kind, currency, balance_minor, created_at)
            SELECT u.id, k.kind, u.currency, 0, :now
            FROM users u CROSS JOIN (SELECT 1 AS pos, 'cash' AS kind UNION ALL
                                     SELECT 2, 'voucher' UNION ALL SELECT 3, 'credit' UNION ALL
                                     SELECT 4, 'receivable') k
            ORDER BY u.id, k.pos"""),
            params,
        )
        dep_user = f"(n - 1) / {PER_USER} + 1"
        start = f"{start_epoch} + 3600 * {_shape_case(4)}"
        end = f"{start_epoch} + 3600 * {_shape_case(5)}"
        db.session.execute(
            sql(
                seq()
                + f"""
            INSERT INTO deployments (id, external_id, user_id, kind, name, labels, state,
                                     price_version_id, cpu_milli, memory_mgb, storage_mgb,
                                     public_ip, started_at, ended_at, created_at, updated_at)
            SELECT n, 'dep-' || n, {dep_user}, 'vm', 'app-' || ((n - 1) % {PER_USER} + 1), '{{}}',
                   CASE WHEN {_shape_case(5)} IS NULL THEN 'active' ELSE 'terminated' END,
                   :version, {_shape_case(0)}, {_shape_case(1)}, {_shape_case(2)},
                   {_shape_case(3)} = 1, :now,
                   CASE WHEN {_shape_case(5)} IS NULL THEN NULL ELSE :ended END, :now, :now
            FROM seq"""
            ),
            {
                "count": USERS * PER_USER,
                "version": version.id,
                "ended": START + timedelta(hours=SHAPES[3][5]),
                **params,
            },
        )
        db.session.execute(
            text(
                seq()
                + f"""
            INSERT INTO deployment_intervals (deployment_id, user_id, start_epoch, end_epoch,
                state, cpu_milli, memory_mgb, storage_mgb, instances, public_ips,
                cpu_rate_micros, memory_rate_micros, storage_rate_micros, instance_rate_micros,
                ip_rate_micros)
            SELECT n, {dep_user}, {start}, {end}, 'active', {_shape_case(0)}, {_shape_case(1)},
                   {_shape_case(2)}, 0, {_shape_case(3)}, :cpu, :mem, :disk, 0, :ip FROM seq"""
            ),
            {
                "count": USERS * PER_USER,
                "cpu": version.cpu_per_core_hour_micros,
                "mem": version.memory_per_gb_hour_micros,
                "disk": version.storage_per_gb_month_micros,
                "ip": version.public_ip_per_hour_micros,
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
            for table, value in (("users", USERS), ("deployments", USERS * PER_USER)):
                db.session.execute(text(f"SELECT setval('{table}_id_seq', :n)"), {"n": value})
        db.session.commit()

        # Credits through the service: a third cover the whole invoice, a third part of it,
        # a third come in two lots, the sooner-expiring one spent first.
        step = max(1, USERS // CREDIT_USERS)
        # Unexpired when the run's chunks use the real time (in RQ workers) as well.
        expiring = max(NOW, datetime.now(UTC))
        for i, uid in enumerate(range(1, USERS + 1, step)):
            if i >= CREDIT_USERS:
                break
            user = db.session.get(User, uid)
            kind = i % 3
            grants = (
                [(500_000, None)]
                if kind == 0
                else [(2_500, None)]
                if kind == 1
                else [
                    (4_000, expiring + timedelta(days=20)),
                    (3_000, expiring + timedelta(days=90)),
                ]
            )
            for n, (amount, expires) in enumerate(grants):
                credits.grant_credit(
                    user=user,
                    amount=Money(amount, "USD"),
                    reason="Goodwill credit",
                    idempotency_key=f"bench:{uid}:{n}",
                    expires_at=expires,
                    now=START,
                )
        db.session.commit()

        if SUBSCRIBED > 0:
            subscribe(app)

        upto = START
        while upto < END:
            upto = min(upto + timedelta(days=1), END)
            runs.meter_all(upto)
        db.session.remove()
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")


def subscribe(app) -> None:
    """Every n-th user on Pro since before October, in set-based SQL: the subscription and
    the applied change the overage's limits are read from."""
    plan = plans.create_plan(
        "pro", plans.PlanInput("Professional", "29.99", "month", "8", "16", "100")
    )
    db.session.commit()
    every = max(1, round(1 / SUBSCRIBED))
    params = {
        "version": plan.versions[-1].id,
        "start": START,
        "end": END,
        "since": START - timedelta(days=1),
        "every": every,
    }
    db.session.execute(
        text("""
        INSERT INTO subscriptions (user_id, plan_version_id, status, period_start, period_end,
                                   cancel_at_period_end, revision, created_at)
        SELECT id, :version, 'active', :start, :end, false, 1, :since FROM users
        WHERE id % :every = 0"""),
        params,
    )
    db.session.execute(
        text("""
        INSERT INTO subscription_changes (subscription_id, user_id, revision, kind, status,
                                          to_version_id, effective_at, created_at)
        SELECT id, user_id, 1, 'subscribe', 'applied', :version, :since, :since
        FROM subscriptions"""),
        params,
    )
    db.session.commit()


def server_state(app) -> tuple:
    """PostgreSQL: WAL position and checkpoints so far (to report what the run cost)."""
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            return None
        state = db.session.execute(
            text(
                "SELECT pg_current_wal_lsn(), checkpoints_timed + checkpoints_req "
                "FROM pg_stat_bgwriter"
            )
        ).one()
        db.session.remove()
        return tuple(state)


def run_invoices(app) -> tuple[float, int]:
    before = server_state(app)
    if WORKERS:
        wall, made = run_in_workers(app)
    else:
        with app.app_context():
            profiler = None
            if os.environ.get("BENCH_PROFILE"):  # a pyinstrument report of the timed run
                from pyinstrument import Profiler  # noqa: PLC0415  (optional, not in the lock)

                profiler = Profiler(interval=0.0005)
                profiler.start()
            started = time.perf_counter()
            result = invoice_run.generate_period(START, END, now=NOW)
            db.session.commit()
            wall = time.perf_counter() - started
            if profiler is not None:
                profiler.stop()
                Path(os.environ["BENCH_PROFILE"]).write_text(profiler.output_text(show_all=False))
            db.session.remove()
            made = result.invoices
    with app.app_context():
        invoices = db.session.scalar(select(func.count()).select_from(Invoice))
        if before is not None:
            lsn, checkpoints = server_state(app)
            wal_mb = db.session.scalar(
                text("SELECT (CAST(:a AS pg_lsn) - CAST(:b AS pg_lsn)) / 1e6"),
                {"a": lsn, "b": before[0]},
            )
            print(
                f"timed run: {wal_mb:.0f} MB of WAL, {checkpoints - before[1]} checkpoint(s)",
                file=sys.stderr,
            )
        db.session.remove()
    if made != invoices:
        fail(f"the run made {made} invoices but {invoices} exist")
    return wall, invoices


def run_in_workers(app) -> tuple[float, int]:
    """The period's chunks as the invoice run fans them out (one `invoicing.generate_chunk`
    job each) to WORKERS real RQ worker processes on the invoicing queue; timed from the
    first enqueue until the last chunk has committed."""
    with app.app_context():
        invoice_run.check_period(START, END, NOW)
        chunks = invoice_run.chunks_with_users()
        db.session.remove()
    stamp = START.strftime("%Y-%m-%d")
    workers = rq_workers.Workers(
        WORKERS,
        "invoicing",
        {
            "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
            "REDIS_URL": app.config["REDIS_URL"],
            "SECRET_KEY": app.config["SECRET_KEY"],
            "CURRENCY": "USD",
            "INVOICE_DAY": "1",
            "BILLING_MODE": "hybrid" if SUBSCRIBED > 0 else "usage",
            "METER_CHUNK_USERS": str(app.config["METER_CHUNK_USERS"]),
        },
    )
    try:
        workers.wait_ready(Redis.from_url(app.config["REDIS_URL"]))
        wall, figures = rq_workers.run_jobs(
            app,
            workers,
            [
                ("invoicing.generate_chunk", (chunk, stamp), f"invoice:{chunk}:{stamp}")
                for chunk in chunks
            ],
        )
    finally:
        workers.stop()
    return wall, sum(f["invoices"] for f in figures)


def build_app(database_url: str, redis_url: str):
    app = create_app(
        {
            "SECRET_KEY": "bench-secret-key-0123456789abcdef",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "RQ_ASYNC": True,
            "CURRENCY": "USD",
            "LOG_LEVEL": "error",
            "METER_CHUNK_USERS": 1000,
        }
    )
    app.config["BILLING"] = dataclasses.replace(
        app.config["BILLING"],
        invoice_day=1,
        billing_mode="hybrid" if SUBSCRIBED > 0 else "usage",
    )
    return app


def check(app, invoices: int) -> None:
    with app.app_context():
        if invoices != USERS:
            fail(f"{invoices} invoices for {USERS} users")
        numbered = db.session.scalar(select(func.count(func.distinct(Invoice.number))))
        paid_by_credit = db.session.scalar(select(func.count()).select_from(InvoicePayment))
        problems = find_discrepancies()
        if problems:
            fail("the ledger does not reconcile:\n" + "\n".join(problems[:20]))
        if numbered != USERS or paid_by_credit != CREDIT_USERS:
            fail(f"{numbered} numbers, {paid_by_credit} credit payments")
        queued = Redis.from_url(app.config["REDIS_URL"]).llen("rq:queue:invoicing")
        print(
            f"invoices {invoices}, credit payments {paid_by_credit}, PDF jobs queued {queued}",
            file=sys.stderr,
        )
        db.session.remove()


def pdf_timings(app) -> tuple[float, float]:
    with app.app_context():
        invoice = db.session.scalars(
            select(Invoice)
            .join(InvoicePayment, InvoicePayment.invoice_id == Invoice.id)
            .order_by(Invoice.id)
            .limit(1)
        ).first()
        snapshot = with_number(invoice)  # the PDF's data: the snapshot with the number
        db.session.remove()
    measure = getattr(pdf_bench, "measure", None) if pdf_bench else None
    if measure is not None:
        figures = measure(snapshot)
        if isinstance(figures, dict):
            return figures["pdf_median_ms"], figures["bare_pdf_median_ms"]
        return figures[0], figures[1]

    html = invoice_pdf.render_html(snapshot)

    def ours():
        return invoice_pdf.render_pdf_bytes(snapshot)

    def bare():
        return HTML(string=html, base_url=invoice_pdf.BASE_URL).write_pdf()

    if ours() != bare():
        fail("our render and the bare render differ: they are not the same work")
    for _ in range(3):  # warm-up: fonts, template, stylesheet
        ours(), bare()
    times: dict = {ours: [], bare: []}
    for i in range(PDF_RENDERS):
        for fn in (ours, bare) if i % 2 == 0 else (bare, ours):  # neither always goes first
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[fn].append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[ours]), statistics.median(times[bare])


def main() -> None:
    url = os.environ.get("DATABASE_URL") or DEFAULT_PG
    redis_url = os.environ.get("BENCH_REDIS_URL") or DEFAULT_REDIS
    out = sys.stdout
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        os.environ.setdefault(
            "INSTANCE_PATH",
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-invoicing-")),
        )
        database_url = prepare_database(url, stack)

        app = build_app(database_url, redis_url)
        redis = Redis.from_url(redis_url)
        redis.flushdb()
        try:
            with app.app_context():
                flask_migrate.upgrade()
                dialect = db.engine.dialect.name
            t0 = time.perf_counter()
            seed(app)
            print(f"seeded and metered in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            wall, invoices = run_invoices(app)
            # Seeding is set-based SQL: the peak is the run's (in this process, unless in workers).
            peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            check(app, invoices)
            redis.flushdb()
            pdf_ms, bare_ms = pdf_timings(app)
        finally:
            redis.flushdb()
            with app.app_context():
                db.engine.dispose()
    figures = {
        "bench": "invoicing",
        "db": dialect,
        "users": USERS,
        "invoices": invoices,
        "wall_s": round(wall, 3),
        "invoices_per_s": round(invoices / wall, 1),
        "pdf_median_ms": round(pdf_ms, 1),
        "bare_pdf_median_ms": round(bare_ms, 1),
        "pdf_ratio": round(pdf_ms / bare_ms, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    if WORKERS:
        figures["workers"] = WORKERS
    if SUBSCRIBED > 0:
        figures["subscribed"] = SUBSCRIBED
    print(json.dumps(figures), file=out, flush=True)


if __name__ == "__main__":
    main()

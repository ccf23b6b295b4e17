"""Invoice runs under concurrency (PostgreSQL): runs of one period at once, manual invoices
beside a run, a run that died halfway.

What keeps them right, and what each test would catch without it:
- One run per chunk at a time: generate_chunk holds the chunk's meter mark row lock
  (SELECT ... FOR UPDATE) from the look-up of existing invoices to its commit. Without it two
  runs both find a user uninvoiced and both insert: the second fails on the unique index
  (user, period, kind), so a run raises instead of skipping. When the run itself meters the
  chunk, meter_chunk's lock also serializes them; so the first test also runs on a period
  metered beforehand, where the invoice run's own lock is the only one.
- Gap-free numbers: reserve_numbers moves the year's counter with an UPDATE in the
  finalizing transaction, so the row stays locked until commit and a rollback gives the
  numbers back. Numbers read and then written would collide (a duplicate number, refused by
  its unique constraint); numbers from a sequence would leave gaps where a transaction that
  had reserved numbers rolled back, which the second and third tests include on purpose.
- A run that died: chunks are committed one by one, and a re-run skips the users of the
  committed chunks and invoices the rest, with no duplicate invoice, posting or number.
The app fixture checks after every test that the ledger reconciles (receivables equal what
unpaid invoices owe, credit lots equal credit balances, invoices add up).
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import Event, Invoice, InvoicePayment, LedgerTransaction, User
from portal.money import Money
from portal.services import accounts
from portal.services.invoicing import run as invoice_run
from portal.services.metering import deployments, rollups, runs
from portal.services.wallet import credits

pytestmark = pytest.mark.postgres

OCT = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
NOW = datetime(2026, 11, 2, tzinfo=UTC)
CHUNK = 2  # users per metering chunk: a handful of users make several chunks


@pytest.fixture
def wide(app, make_app):
    """The test database with a pool wide enough for every thread, small chunks, and PDF
    jobs left waiting in Redis (none renders during the test)."""
    wide = make_app(
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 16, "max_overflow": 0},
        METER_CHUNK_USERS=CHUNK,
        RQ_ASYNC=True,
    )
    yield wide
    with wide.app_context():
        db.engine.dispose()


def scenario(app, users: int) -> list[int]:
    """Users with one or two deployments running through October; some with credits (some
    covering the whole invoice, some part of it)."""
    with app.app_context():
        ids = []
        for n in range(users):
            user = accounts.create_user(email=f"c{n}@example.com", name=f"Customer {n}")
            deployments.create_deployment(
                external_id=f"web-{n}",
                user=user,
                kind="vm",
                started_at=OCT[0] + timedelta(hours=n),
                cpu_cores=1 + n % 3,
                memory_gb=2,
                storage_gb=10,
            )
            if n % 3 == 0:
                deployments.create_deployment(
                    external_id=f"db-{n}",
                    user=user,
                    kind="vm",
                    started_at=OCT[0] + timedelta(days=5),
                    cpu_cores=2,
                    memory_gb=8,
                    storage_gb=50,
                )
            if n % 4 == 1:
                credits.grant_credit(
                    user=user,
                    amount=Money(1500 if n % 8 == 1 else 900_000, "USD"),
                    reason="Goodwill",
                    idempotency_key=f"goodwill-{n}",
                )
            ids.append(user.id)
        db.session.commit()
        assert len({rollups.chunk_of(uid) for uid in ids}) >= users // CHUNK
    return ids


def in_threads(count: int, fn):
    """``fn(i)`` for i in range(count), each in its own thread, released together."""
    barrier = threading.Barrier(count)

    def run(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))  # re-raises what a thread raised


def check_invoices(app, user_ids: list[int]) -> list[str]:
    """One live invoice per user for October, numbered 1..N in one year without a gap, each
    with one issue posting and one "created" event. Returns the numbers."""
    with app.app_context():
        invoices = db.session.scalars(select(Invoice).where(Invoice.period_start == OCT[0])).all()
        assert Counter(i.user_id for i in invoices) == Counter(user_ids)
        assert all(i.status in ("open", "paid") for i in invoices)
        numbers = sorted(i.number for i in invoices)
        year = numbers[0][4:8]
        assert numbers == [f"INV-{year}-{n:06d}" for n in range(1, len(user_ids) + 1)]
        issue_keys = db.session.scalars(
            select(LedgerTransaction.idempotency_key).where(LedgerTransaction.kind == "invoice")
        ).all()
        assert sorted(issue_keys) == sorted(f"invoice:{i.id}:issue" for i in invoices)
        created = db.session.scalars(
            select(Event.subject).where(Event.name == "billing.invoice.created")
        ).all()
        assert sorted(created) == sorted(f"invoice:{i.id}" for i in invoices)
        credited = db.session.scalar(select(func.count()).select_from(InvoicePayment))
        assert credited == sum(1 for i in invoices if i.credits_minor)
        assert rollups.audit_usage() == []
        db.session.remove()
    return numbers


@pytest.mark.parametrize("metered_first", [True, False], ids=["metered-first", "run-meters"])
def test_concurrent_runs_of_a_period_make_one_invoice_per_user(app, wide, metered_first):
    users = scenario(wide, users=12)
    if metered_first:  # then the invoice run's own chunk lock is all that orders the runs
        with wide.app_context():
            runs.meter_all(OCT[1])
            db.session.remove()

    def run(_):
        with wide.app_context():
            try:
                return invoice_run.generate_period(*OCT, now=NOW)
            finally:
                db.session.remove()

    results = in_threads(4, run)
    # Every run either invoiced or skipped each user, and each user was invoiced once.
    assert [r.invoices + r.skipped for r in results] == [len(users)] * 4
    assert sum(r.invoices for r in results) == len(users)
    check_invoices(wide, users)


def test_numbers_stay_gap_free_with_manual_invoices_beside_a_run(app, wide):
    users = scenario(wide, users=16)
    manual = users[::2]  # one user in every chunk, made by hand during the run
    abandoned = users[1::2][:3]  # made by hand, then rolled back: their numbers come back

    def work(i):
        with wide.app_context():
            try:
                if i == 0:
                    return invoice_run.generate_period(*OCT)
                uid = (manual + abandoned)[i - 1]
                invoice, created = invoice_run.generate_for_user(db.session.get(User, uid), *OCT)
                if uid in abandoned:
                    db.session.rollback()
                else:
                    db.session.commit()
                return created
            finally:
                db.session.remove()

    results = in_threads(1 + len(manual) + len(abandoned), work)
    run, manual_created = results[0], results[1 : 1 + len(manual)]
    # A manual invoice was made by hand, unless the run got to its user first.
    assert run.invoices + sum(manual_created) <= len(users)
    with wide.app_context():  # the users whose invoices were rolled back, if the run missed them
        invoice_run.generate_period(*OCT)
        db.session.remove()
    check_invoices(wide, users)


def test_a_run_that_died_halfway_is_completed_by_the_next(app, wide, monkeypatch):
    users = scenario(wide, users=10)  # 5 chunks, metered by the run itself
    finalized = []
    real_finalize = invoice_run._finalize

    def dies_in_the_third_chunk(*args, **kwargs):
        real_finalize(*args, **kwargs)  # numbers taken, postings, credits, events: then death
        finalized.append(True)
        if len(finalized) == 3:
            raise RuntimeError("the worker died")

    monkeypatch.setattr(invoice_run, "_finalize", dies_in_the_third_chunk)
    with wide.app_context():
        first_two = sorted({rollups.chunk_of(uid) for uid in users})[:2]
        committed = sorted(uid for uid in users if rollups.chunk_of(uid) in first_two)
        with pytest.raises(RuntimeError, match="worker died"):
            invoice_run.generate_period(*OCT, now=NOW)
        db.session.rollback()
        db.session.remove()
        done = db.session.execute(
            select(Invoice.user_id, Invoice.number).order_by(Invoice.number)
        ).all()
        assert sorted(uid for uid, _ in done) == committed
        assert [number for _, number in done] == [
            f"INV-2026-{n:06d}" for n in range(1, len(committed) + 1)
        ]
        db.session.remove()

    monkeypatch.undo()
    with wide.app_context():
        again = invoice_run.generate_period(*OCT, now=NOW)
        db.session.remove()
    assert (again.invoices, again.skipped) == (len(users) - len(committed), len(committed))
    assert check_invoices(wide, users)[-1] == f"INV-2026-{len(users):06d}"
    with wide.app_context():
        assert invoice_run.generate_period(*OCT, now=NOW).invoices == 0
        db.session.remove()


def test_one_run_numbers_and_commits_its_chunks_in_order(app, wide):
    """A run builds its next chunk while the one before is written, yet numbers follow the
    chunks: in user order (the chunks' order) they ascend without a gap."""
    users = scenario(wide, users=10)
    with wide.app_context():
        result = invoice_run.generate_period(*OCT, now=NOW)
        db.session.remove()
    assert (result.invoices, result.skipped) == (len(users), 0)
    numbers = check_invoices(wide, users)
    with wide.app_context():
        by_user = dict(db.session.execute(select(Invoice.user_id, Invoice.number)).all())
        db.session.remove()
    assert [by_user[uid] for uid in sorted(users)] == numbers


def test_a_chunk_that_fails_while_being_built_stops_the_run_there(app, wide, monkeypatch):
    """The third chunk fails before it takes numbers (the second is being written then): the
    first two chunks are committed, nothing after them, and the next run does the rest."""
    users = scenario(wide, users=10)
    with wide.app_context():
        chunk_of = {uid: rollups.chunk_of(uid) for uid in users}
    third = sorted(set(chunk_of.values()))[2]
    real_usage = invoice_run._period_usage

    def fails_in_the_third_chunk(user_lo, *args):
        if user_lo == third * CHUNK:  # the chunk's first user id
            raise RuntimeError("unreadable rollups")
        return real_usage(user_lo, *args)

    monkeypatch.setattr(invoice_run, "_period_usage", fails_in_the_third_chunk)
    with wide.app_context():
        with pytest.raises(RuntimeError, match="unreadable rollups"):
            invoice_run.generate_period(*OCT, now=NOW)
        db.session.remove()
        done = sorted(db.session.scalars(select(Invoice.user_id)))
        db.session.remove()
    assert done == sorted(uid for uid in users if chunk_of[uid] < third)

    monkeypatch.undo()
    with wide.app_context():
        again = invoice_run.generate_period(*OCT, now=NOW)
        db.session.remove()
    assert (again.invoices, again.skipped) == (len(users) - len(done), len(done))
    check_invoices(wide, users)

"""Job requests, the database side: a job a transaction asks for is a ``job_requests`` row
written in that transaction, so it is committed or rolled back with the work it is for, and
nothing depends on Redis being up at commit time. The relay (portal.tasks.relay) moves rows
to RQ and watches them there.

A row's life: requested -> sent -> done; a job that failed (or that Redis lost) goes back
to requested, after a backoff for a failure, until JOB_MAX_ATTEMPTS failed attempts make it
failed. Asking again for a job under the same dedupe key (its job id) while the row exists
makes it requested again, so work committed while that job ran is never missed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    String,
    cast,
    delete,
    exists,
    func,
    literal,
    select,
    union_all,
    update,
)

from ..db import allocate_ids, bulk_insert, dialect_insert
from ..extensions import db
from ..models import (
    EmailStatus,
    Invoice,
    JobRequest,
    JobRequestStatus,
    JobRun,
    OutboundEmail,
    RunStatus,
)

REQUESTED, SENT, DONE, FAILED = (
    JobRequestStatus.REQUESTED,
    JobRequestStatus.SENT,
    JobRequestStatus.DONE,
    JobRequestStatus.FAILED,
)
MAX_BACKOFF = timedelta(hours=1)
_TABLE = JobRequest.__table__
COMMITTED = "job_requests_committed"  # session.info: ids for the fast path
_RESET = (
    "queue",
    "task",
    "args",
    "status",
    "attempts",
    "next_attempt_at",
    "last_error",
    "run_id",
)
# The run whose job is executing in this context: what it asks for are its chunks.
_CURRENT_RUN: ContextVar[int | None] = ContextVar("current_run", default=None)


@contextmanager
def for_run(run_id: int) -> Iterator[None]:
    """Requests written inside belong to run ``run_id`` (which then waits for them)."""
    token = _CURRENT_RUN.set(run_id)
    try:
        yield
    finally:
        _CURRENT_RUN.reset(token)


def rq_id(row: Any) -> str:
    """The id the job has in RQ (before rq_job_id's spelling): its dedupe key, else one of
    its own, so that the relay can find it there."""
    return row.dedupe_key or f"request:{row.id}"


def add(
    queue: str, task: str, args: Sequence[Any], *, dedupe_key: str | None, now: datetime
) -> int:
    """Write a request in the session's transaction; returns its id."""
    insert = dialect_insert(_TABLE).values(
        queue=queue,
        task=task,
        args=list(args),
        dedupe_key=dedupe_key,
        status=REQUESTED,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        run_id=_CURRENT_RUN.get(),
    )
    if dedupe_key is not None:
        insert = insert.on_conflict_do_update(
            index_elements=["dedupe_key"],
            set_={**{c: insert.excluded[c] for c in _RESET}, "created_at": now},
        )
    # No autoflush: the caller may be half way through building the rows this job is for.
    with db.session.no_autoflush:
        request_id = db.session.execute(insert.returning(_TABLE.c.id)).scalar_one()
    db.session().info.setdefault(COMMITTED, []).append(request_id)
    return request_id


def add_many(
    queue: str, task: str, items: Sequence[tuple[Sequence[Any], str]], *, now: datetime
) -> list[int]:
    """``add`` for many requests of one task at once, each with its dedupe key: one INSERT
    (an invoice run asks for thousands of PDFs)."""
    if not items:
        return []
    run_id = _CURRENT_RUN.get()
    insert = dialect_insert(_TABLE).values(
        [
            {
                "queue": queue,
                "task": task,
                "args": list(args),
                "dedupe_key": key,
                "status": REQUESTED,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "run_id": run_id,
            }
            for args, key in items
        ]
    )
    insert = insert.on_conflict_do_update(
        index_elements=["dedupe_key"],
        set_={**{c: insert.excluded[c] for c in _RESET}, "created_at": now},
    )
    with db.session.no_autoflush:
        ids = list(db.session.execute(insert.returning(_TABLE.c.id)).scalars())
    db.session().info.setdefault(COMMITTED, []).extend(ids)
    return ids


def add_new_many(
    queue: str, task: str, items: Sequence[tuple[Sequence[Any], str]], *, now: datetime
) -> None:
    """``add_many`` for keys of rows this transaction created (a new invoice's id): no
    earlier request can carry them, so they are written in bulk (COPY on PostgreSQL)
    without the conflict check; a duplicate would still fail on the unique index."""
    if not items:
        return
    ids = allocate_ids(_TABLE, len(items))
    run_id = _CURRENT_RUN.get()
    bulk_insert(
        _TABLE,
        (
            "id",
            "queue",
            "task",
            "args",
            "dedupe_key",
            "status",
            "attempts",
            "next_attempt_at",
            "created_at",
            "run_id",
        ),
        [
            (request_id, queue, task, list(args), key, REQUESTED, 0, now, now, run_id)
            for request_id, (args, key) in zip(ids, items, strict=True)
        ],
    )
    db.session().info.setdefault(COMMITTED, []).extend(ids)


def no_open_request(prefix: str, id_column: Any) -> ColumnElement[bool]:
    """SQL: no job request under the key ``prefix`` + the row's id is waiting, running or
    failed for good (that one waits for a person: Admin › Jobs › Retry all failed). What
    the sweeps ask for again (a request done, pruned or never written)."""
    key = literal(prefix) + cast(id_column, String)
    return ~exists().where(
        _TABLE.c.dedupe_key == key, _TABLE.c.status.in_((REQUESTED, SENT, FAILED))
    )


def backoff(attempts: int, first: Decimal | float | int) -> timedelta:
    """The wait after the ``attempts``-th failure: ``first``, doubling, at most an hour."""
    seconds = Decimal(str(first)) * (2 ** max(attempts - 1, 0))
    return min(timedelta(microseconds=int(seconds * 1_000_000)), MAX_BACKOFF)


def due(
    connection: Connection, *, now: datetime, ids: Sequence[int] | None = None, limit: int = 500
):
    """Requested rows whose time has come (of ``ids`` only, if given), oldest first."""
    query = select(_TABLE).where(_TABLE.c.status == REQUESTED)
    if ids is not None:
        query = query.where(_TABLE.c.id.in_(list(ids)))
    else:
        query = query.where(_TABLE.c.next_attempt_at <= now)
    return connection.execute(query.order_by(_TABLE.c.id).limit(limit)).all()


def in_flight(connection: Connection, *, before: datetime, limit: int = 2000):
    """Sent rows handed to RQ before ``before``: the relay checks on them."""
    return connection.execute(
        select(_TABLE)
        .where(_TABLE.c.status == SENT, _TABLE.c.sent_at < before)
        .order_by(_TABLE.c.id)
        .limit(limit)
    ).all()


def mark_sent(connection: Connection, ids: Sequence[int], *, now: datetime) -> None:
    if ids:
        connection.execute(
            update(_TABLE)
            .where(_TABLE.c.id.in_(list(ids)), _TABLE.c.status == REQUESTED)
            .values(status=SENT, sent_at=now)
        )


def mark_done(connection: Connection, ids: Sequence[int], *, now: datetime) -> None:
    if ids:
        connection.execute(
            update(_TABLE)
            .where(_TABLE.c.id.in_(list(ids)), _TABLE.c.status.in_((REQUESTED, SENT)))
            .values(status=DONE, finished_at=now, last_error=None)
        )


def mark_lost(connection: Connection, ids: Sequence[int]) -> None:
    """Sent, but RQ no longer has the job (Redis restarted empty): send it again."""
    if ids:
        connection.execute(
            update(_TABLE)
            .where(_TABLE.c.id.in_(list(ids)), _TABLE.c.status == SENT)
            .values(status=REQUESTED)
        )


def mark_failed(
    connection: Connection,
    row: Any,
    error: str,
    *,
    now: datetime,
    max_attempts: int,
    first_retry: Decimal | float | int,
) -> bool:
    """Count a failed attempt: requested again after a backoff, or failed for good once
    every attempt is used. Returns whether it will be retried."""
    attempts = row.attempts + 1
    retry = attempts < max_attempts
    connection.execute(
        update(_TABLE)
        .where(_TABLE.c.id == row.id, _TABLE.c.status.in_((REQUESTED, SENT)))
        .values(
            status=REQUESTED if retry else FAILED,
            attempts=attempts,
            next_attempt_at=now + backoff(attempts, first_retry),
            last_error=error[:1000],
            finished_at=None if retry else now,
        )
    )
    return retry


def retry_failed(*, task: str | None, now: datetime) -> int:
    """Make failed requests (of one task, or all) requested again with fresh attempts; they
    are sent when the caller commits."""
    query = select(_TABLE.c.id).where(_TABLE.c.status == FAILED)
    if task is not None:
        query = query.where(_TABLE.c.task == task)
    ids = list(db.session.scalars(query))
    if ids:
        db.session.execute(
            update(_TABLE)
            .where(_TABLE.c.id.in_(ids), _TABLE.c.status == FAILED)
            .values(status=REQUESTED, attempts=0, next_attempt_at=now, finished_at=None)
        )
        # A run that failed because these did is running again until they end.
        runs = select(_TABLE.c.run_id).where(_TABLE.c.id.in_(ids)).scalar_subquery()
        db.session.execute(
            update(JobRun)
            .where(JobRun.id.in_(runs), JobRun.status == RunStatus.FAILED)
            .values(status=RunStatus.RUNNING, finished_at=None, error=None)
        )
        db.session().info.setdefault(COMMITTED, []).extend(ids)
    return len(ids)


@dataclass(frozen=True)
class Chunks:
    """Where a run's chunks are: how many, done, failed for good, and the newest error."""

    total: int
    done: int
    failed: int
    error: str | None

    @property
    def open(self) -> int:
        return self.total - self.done - self.failed


def chunks_of(run_id: int) -> Chunks:
    rows = db.session.execute(
        select(_TABLE.c.status, func.count())
        .where(_TABLE.c.run_id == run_id)
        .group_by(_TABLE.c.status)
    ).all()
    counts = {status: count for status, count in rows}
    error = None
    if counts.get(FAILED):
        error = db.session.scalar(
            select(_TABLE.c.last_error)
            .where(_TABLE.c.run_id == run_id, _TABLE.c.status == FAILED)
            .order_by(_TABLE.c.id.desc())
            .limit(1)
        )
    return Chunks(sum(counts.values()), counts.get(DONE, 0), counts.get(FAILED, 0), error)


def prune(connection: Connection, *, before: datetime, limit: int = 1000) -> int:
    """Forget done requests finished before ``before`` (those of a run that has ended)."""
    ended = select(JobRun.id).where(JobRun.status.in_((RunStatus.SUCCEEDED, RunStatus.FAILED)))
    old = (
        select(_TABLE.c.id)
        .where(
            _TABLE.c.status == DONE,
            _TABLE.c.finished_at < before,
            _TABLE.c.run_id.is_(None) | _TABLE.c.run_id.in_(ended),
        )
        .limit(limit)
        .scalar_subquery()
    )
    return connection.execute(delete(_TABLE).where(_TABLE.c.id.in_(old))).rowcount


@dataclass(frozen=True)
class Waiting:
    """Work not done yet: how much, and since when."""

    what: str
    count: int
    oldest: datetime | None


@dataclass(frozen=True)
class FailedTask:
    task: str
    count: int
    last_error: str | None


_WAITING_WHAT = ("job requests", "invoice PDFs", "mail")


@functools.cache
def _waiting_query():
    """Each count as a row of its own, in the order of _WAITING_WHAT, in one round trip;
    built once (the Jobs page reads it on every view)."""
    queries = [
        select(func.count(), func.min(_TABLE.c.created_at)).where(
            _TABLE.c.status.in_((REQUESTED, SENT))
        ),
        select(func.count(), func.min(Invoice.finalized_at)).where(
            Invoice.pdf_status.in_(("pending", "failed"))
        ),
        select(func.count(), func.min(OutboundEmail.created_at)).where(
            OutboundEmail.status.in_((EmailStatus.PENDING, EmailStatus.SENDING, EmailStatus.FAILED))
        ),
    ]
    return union_all(*(q.add_columns(literal(n).label("n")) for n, q in enumerate(queries)))


def waiting_work() -> list[Waiting]:
    """Job requests not done, invoice PDFs pending and mail pending, each with its oldest."""
    found = db.session.execute(_waiting_query()).all()
    by_n = {n: (count, oldest) for count, oldest, n in found}
    return [Waiting(what, *by_n[n]) for n, what in enumerate(_WAITING_WHAT)]


_FAILED_BY_TASK = (
    select(_TABLE.c.task, func.count(), func.max(_TABLE.c.id))
    .where(_TABLE.c.status == FAILED)
    .group_by(_TABLE.c.task)
    .order_by(_TABLE.c.task)
)


def failed_by_task() -> list[FailedTask]:
    """Requests that used every attempt, by task, with the newest error."""
    counts = db.session.execute(_FAILED_BY_TASK).all()
    errors = (
        dict(
            db.session.execute(
                select(_TABLE.c.id, _TABLE.c.last_error).where(
                    _TABLE.c.id.in_([newest for _, _, newest in counts])
                )
            ).all()
        )
        if counts
        else {}
    )
    return [FailedTask(task, count, errors.get(newest)) for task, count, newest in counts]

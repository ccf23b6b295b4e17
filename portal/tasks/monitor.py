"""What RQ knows about jobs: status, progress, queue depths, failed jobs and their retry.
Job ids here are ours ("meter:2026-11-21T18"); RQ stores them as rq_job_id() spells them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from rq import Worker, worker_registration
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.utils import current_timestamp

from .queues import QUEUES, get_queue, redis_connection, rq_job_id, task_args, task_name
from .registry import RUNNER

FAILED_SHOWN = 50


def _fetch(job_id: str) -> Job | None:
    try:
        return Job.fetch(rq_job_id(job_id), connection=redis_connection())
    except NoSuchJobError:
        return None


def job_status(queue: str, job_id: str) -> str | None:
    """ "queued", "started", "finished", "failed"... or None when Redis has no such job."""
    job = _fetch(job_id)
    if job is None:
        return None
    status = job.get_status()
    return getattr(status, "value", status)


def job_meta(queue: str, job_id: str) -> dict:
    job = _fetch(job_id)
    return {} if job is None else dict(job.get_meta(refresh=True))


@dataclass
class Depth:
    name: str
    queued: int
    started: int
    failed: int


def depths() -> list[Depth]:
    rows = []
    for name in QUEUES:
        queue = get_queue(name)
        rows.append(
            Depth(
                name,
                queue.count,
                StartedJobRegistry(queue=queue).count,
                FailedJobRegistry(queue=queue).count,
            )
        )
    return rows


def worker_count() -> int:
    return Worker.count(connection=redis_connection())


@dataclass
class Failed:
    job_id: str
    queue: str
    func: str
    error: str
    ended_at: datetime | None
    run_id: int | None  # the job run, for jobs that go through the run task


def _run_id(job: Job) -> int | None:
    args = task_args(job)
    if task_name(job) == RUNNER and args and isinstance(args[0], int):
        return args[0]
    return None


def error_text(job: Job) -> str:
    """The exception a failed job ended with: the traceback's last line, without the
    "(Background on this error at: https://sqlalche.me/...)" line SQLAlchemy adds."""
    result = job.latest_result()
    text = result.exc_string if result is not None and result.type == Result.Type.FAILED else ""
    lines = [
        line.strip()
        for line in (text or "").strip().splitlines()
        if line.strip() and not line.strip().startswith("(Background on this error at:")
    ]
    return lines[-1] if lines else "failed (no error recorded)"


def failed_jobs(limit: int = FAILED_SHOWN) -> list[Failed]:
    """The newest failed jobs of every queue, newest first."""
    newest = {}
    for name in QUEUES:
        registry = FailedJobRegistry(queue=get_queue(name))
        newest[name] = registry.get_job_ids(0, limit - 1, desc=True)
    return _failed(newest, limit)


def _failed(newest: dict[str, list[str]], limit: int) -> list[Failed]:
    """The failed jobs of these ids (by queue), newest first."""
    found: list[Failed] = []
    for name, ids in newest.items():
        if not ids:
            continue
        for job in Job.fetch_many(ids, connection=redis_connection()):
            if job is None:
                continue
            found.append(
                Failed(job.id, name, task_name(job), error_text(job), job.ended_at, _run_id(job))
            )
    found.sort(key=lambda f: f.ended_at or datetime.min.replace(tzinfo=UTC), reverse=True)
    return found[:limit]


@dataclass
class Snapshot:
    depths: list[Depth]
    failed: list[Failed]
    workers: int


def snapshot(limit: int = FAILED_SHOWN) -> Snapshot:
    """``depths()``, ``failed_jobs(limit)`` and ``worker_count()`` together, read in one
    round trip to Redis instead of about forty (the Jobs page). The same figures: a failed
    job registry drops its expired entries first, as RQ's cleanup does; and should a started
    job registry hold an abandoned job (one whose worker died), which RQ's cleanup moves to
    the failed jobs, the figures are read again the long way, through that cleanup."""
    connection = redis_connection()
    now = current_timestamp()
    with connection.pipeline(transaction=False) as pipe:
        for name in QUEUES:
            queue = get_queue(name)
            failed = FailedJobRegistry(queue=queue).key
            pipe.zcount(StartedJobRegistry(queue=queue).key, 0, now)  # abandoned
            pipe.llen(queue.key)
            pipe.zcard(StartedJobRegistry(queue=queue).key)
            pipe.zremrangebyscore(failed, 0, now)
            pipe.zcard(failed)
            pipe.zrevrange(failed, 0, limit - 1)
        pipe.scard(worker_registration.REDIS_WORKER_KEYS)
        replies = pipe.execute()
    per_queue = [replies[n * 6 : n * 6 + 6] for n in range(len(QUEUES))]
    if any(abandoned for abandoned, *_ in per_queue):
        return Snapshot(depths(), failed_jobs(limit), worker_count())
    rows, newest = [], {}
    for name, (_abandoned, queued, started, _dropped, failed_count, ids) in zip(
        QUEUES, per_queue, strict=True
    ):
        rows.append(Depth(name, queued, started, failed_count))
        newest[name] = [FailedJobRegistry.parse_job_id(i) for i in ids]
    return Snapshot(rows, _failed(newest, limit), replies[-1])


def requeue_failed(job_id: str) -> tuple[str, int | None] | None:
    """Move a failed job back to its queue: (queue name, run id), or None if not failed."""
    for name in QUEUES:
        registry = FailedJobRegistry(queue=get_queue(name))
        try:
            job = registry.requeue(job_id)
        except (InvalidJobOperation, NoSuchJobError):
            continue
        return name, _run_id(job)
    return None

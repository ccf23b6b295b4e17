"""What RQ knows about jobs: status, progress, queue depths, failed jobs and their retry.
Job ids here are ours ("meter:2026-11-21T18"); RQ stores them as rq_job_id() spells them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from rq import Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.results import Result

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
    found: list[Failed] = []
    for name in QUEUES:
        registry = FailedJobRegistry(queue=get_queue(name))
        ids = registry.get_job_ids(0, limit - 1, desc=True)
        for job in Job.fetch_many(ids, connection=registry.connection):
            if job is None:
                continue
            found.append(
                Failed(job.id, name, task_name(job), error_text(job), job.ended_at, _run_id(job))
            )
    found.sort(key=lambda f: f.ended_at or datetime.min.replace(tzinfo=UTC), reverse=True)
    return found[:limit]


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

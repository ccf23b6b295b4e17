"""The billing schedule: the leader lease, due slots, job runs and scheduler status.

What keeps a slot from running twice or being missed is the database, not timing:
- a slot (job, due time) has at most one run: ``job_runs`` is UNIQUE on (job_name, slot),
  and the RQ job id is derived from the slot, so a second enqueue collapses too;
- only the lease holder schedules: taking the lease over increments its epoch, and every
  scheduling transaction first renews the lease WHERE holder and epoch are still the
  caller's (on PostgreSQL that UPDATE also locks the lease row until commit, so a takeover
  waits for the transaction; SQLite serializes writers anyway);
- a job's scheduled-through mark moves forward only, by compare-and-set, under an epoch no
  older than the one that wrote it, in the transaction that creates the runs it covers;
- every due time after the mark gets its run, so a restarted or new leader catches up;
- runs are enqueued after commit; a run whose enqueue was lost stays ``pending`` and the
  leader enqueues it again (same job id).
The job functions themselves are idempotent in the database (metering claims hours under
its own marks), so even a duplicate delivery changes nothing.

Services flush; the caller commits.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from croniter import croniter
from flask import current_app
from sqlalchemy import bindparam, func, or_, select, update

from ..db import dialect_insert, rowcount
from ..errors import Conflict, NotFound
from ..extensions import db
from ..models import (
    DaemonState,
    DaemonStatus,
    JobRun,
    RunOrigin,
    RunStatus,
    ScheduledJob,
    SchedulerKind,
    SchedulerLease,
    SchedulerRole,
    User,
)
from ..money import Money
from . import monitor, registry, requests
from .queues import enqueue_after_commit
from .registry import RUNNER

LEASE_NAME = "billing-schedule"
MAX_SLOTS_PER_CYCLE = 500  # catch-up after a long outage continues in the next cycle
RECENT_INSTANCES = 20
WAITING = ("queued", "started", "deferred", "scheduled")  # RQ statuses of a job not done


def _no_args(_due: datetime) -> tuple:
    return ()


@dataclass(frozen=True)
class PeriodicJob:
    """A job the schedule runs at every due time of ``cron`` (UTC)."""

    name: str  # "calculate-usage"
    cron: str  # "0 * * * *"
    func: str  # the task, "metering.meter_due"
    queue: str  # RQ queue
    id_prefix: str  # job ids are "<prefix>:<slot>", e.g. "meter:2026-11-21T18"
    args: Callable[[datetime], tuple] = _no_args  # due time -> the function's arguments
    manual_args: Callable[[datetime], tuple] | None = None  # Run now's, when not ``args``

    def run_now_args(self, now: datetime) -> tuple:
        return (self.manual_args or self.args)(now)

    def job_id(self, slot: str) -> str:
        return f"{self.id_prefix}:{slot}"

    def due_after(
        self, after: datetime, upto: datetime, limit: int = MAX_SLOTS_PER_CYCLE
    ) -> list[datetime]:
        """Due times in (after, upto], oldest first, at most ``limit``."""
        it = croniter(self.cron, after.astimezone(UTC))
        slots: list[datetime] = []
        while len(slots) < limit:
            due = it.get_next(datetime)
            if due > upto:
                break
            slots.append(due)
        return slots

    def latest_due(self, now: datetime) -> datetime:
        """The last due time at or before ``now``."""
        second = now.astimezone(UTC).replace(microsecond=0)
        return croniter(self.cron, second + timedelta(seconds=1)).get_prev(datetime)

    def next_due(self, after: datetime) -> datetime:
        after = after.astimezone(UTC)
        if len(self.cron.split()) == 5:
            # Minutes are a five-field cron's finest unit: the next due time after any
            # instant of a minute is the one after its start (the Jobs page asks on every
            # view, and parsing the expression costs more than the rest of a row).
            return _next_due_after_minute(self.cron, after.replace(second=0, microsecond=0))
        return croniter(self.cron, after).get_next(datetime)


@functools.lru_cache(maxsize=512)
def _next_due_after_minute(cron: str, minute: datetime) -> datetime:
    return croniter(cron, minute).get_next(datetime)


def slot_name(due: datetime) -> str:
    due = due.astimezone(UTC)
    return due.strftime("%Y-%m-%dT%H" if due.minute == 0 else "%Y-%m-%dT%H:%M")


class LeaseLost(Conflict):
    code = "lease_lost"


def periodic_jobs(config: registry.Config | None = None) -> list[PeriodicJob]:
    """The registered periodic jobs (portal.tasks.registry) that ``config`` (the app's)
    enables."""
    config = current_app.config if config is None else config
    return [
        PeriodicJob(
            r.name,
            r.cron(config) if callable(r.cron) else r.cron,
            r.func,
            r.queue,
            r.id_prefix,
            r.args,
            r.manual_args,
        )
        for r in registry.registrations(config)
    ]


def find_job(name: str) -> PeriodicJob:
    for job in periodic_jobs():
        if job.name == name:
            return job
    raise NotFound(f"no job named {name!r}")


def duration(value: Any, unit: str = "seconds") -> timedelta:
    """A configured Decimal (``DAEMON_HEARTBEAT_SECONDS``...) as a timedelta, exactly."""
    micros = Decimal(str(value)) * (60_000_000 if unit == "minutes" else 1_000_000)
    return timedelta(microseconds=int(micros))


def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _insert(model):
    return dialect_insert(model.__table__)


# -- the lease -------------------------------------------------------------------------------


def _renew(holder: str, epoch: int, now: datetime, ttl: timedelta) -> bool:
    return (
        rowcount(
            db.session.execute(
                update(SchedulerLease)
                .where(
                    SchedulerLease.name == LEASE_NAME,
                    SchedulerLease.holder == holder,
                    SchedulerLease.epoch == epoch,
                )
                .values(expires_at=now + ttl)
            )
        )
        == 1
    )


def hold_lease(*, holder: str, epoch: int | None, now: datetime, ttl: timedelta) -> int | None:
    """Renew the caller's lease, or take it over when it is free, expired or the caller's
    own under an epoch it lost track of (epoch + 1 in every case). Returns the epoch the
    caller now holds, or None (another scheduler leads)."""
    if epoch is not None and _renew(holder, epoch, now, ttl):
        return epoch
    db.session.execute(
        _insert(SchedulerLease)
        .values(name=LEASE_NAME, holder=None, epoch=0, expires_at=now)
        .on_conflict_do_nothing()
    )
    taken = rowcount(
        db.session.execute(
            update(SchedulerLease)
            .where(
                SchedulerLease.name == LEASE_NAME,
                or_(
                    SchedulerLease.holder.is_(None),
                    SchedulerLease.expires_at <= now,
                    SchedulerLease.holder == holder,
                ),
            )
            .values(
                holder=holder, epoch=SchedulerLease.epoch + 1, acquired_at=now, expires_at=now + ttl
            )
        )
    )
    if not taken:
        return None
    return db.session.scalar(
        select(SchedulerLease.epoch).where(
            SchedulerLease.name == LEASE_NAME, SchedulerLease.holder == holder
        )
    )


def release_lease(*, holder: str, epoch: int, now: datetime) -> bool:
    """Give the lease up (a graceful stop) so a standby need not wait for it to expire."""
    return (
        rowcount(
            db.session.execute(
                update(SchedulerLease)
                .where(
                    SchedulerLease.name == LEASE_NAME,
                    SchedulerLease.holder == holder,
                    SchedulerLease.epoch == epoch,
                )
                .values(holder=None, expires_at=now)
            )
        )
        == 1
    )


def current_lease() -> SchedulerLease | None:
    return db.session.get(SchedulerLease, LEASE_NAME)


# -- scheduling ------------------------------------------------------------------------------


def _lock_mark(job: PeriodicJob, epoch: int, now: datetime) -> ScheduledJob:
    # A job seen for the first time starts with its latest due time, so it runs once now
    # rather than for every due time since the epoch.
    first = job.latest_due(now)
    start = croniter(job.cron, first).get_prev(datetime)
    db.session.execute(
        _insert(ScheduledJob)
        .values(name=job.name, scheduled_through=start, epoch=epoch, updated_at=now)
        .on_conflict_do_nothing()
    )
    return db.session.scalars(
        select(ScheduledJob)
        .where(ScheduledJob.name == job.name)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def advance_mark(name: str, *, from_: datetime, to: datetime, epoch: int, now: datetime) -> bool:
    """Move a job's mark from ``from_`` to ``to``: refused if it moved meanwhile or if a
    newer epoch wrote it (a stale leader's late write)."""
    return (
        rowcount(
            db.session.execute(
                update(ScheduledJob)
                .where(
                    ScheduledJob.name == name,
                    ScheduledJob.scheduled_through == from_,
                    ScheduledJob.epoch <= epoch,
                )
                .values(scheduled_through=to, epoch=epoch, updated_at=now)
            )
        )
        == 1
    )


def _enqueue(run: JobRun) -> None:
    enqueue_after_commit(run.queue, RUNNER, run.id, job_id=run.job_id)


def _create_runs(rows: list[dict[str, Any]]) -> list[JobRun]:
    """Insert runs; a slot that already has one is skipped (the UNIQUE constraint)."""
    if not rows:
        return []
    ids = db.session.scalars(
        _insert(JobRun).values(rows).on_conflict_do_nothing().returning(JobRun.__table__.c.id)
    ).all()
    runs = list(db.session.scalars(select(JobRun).where(JobRun.id.in_(ids)).order_by(JobRun.id)))
    for run in runs:
        _enqueue(run)
    return runs


def claim_due_runs(
    jobs: list[PeriodicJob],
    *,
    holder: str,
    epoch: int,
    now: datetime,
    ttl: timedelta,
    until: datetime | None = None,
) -> list[JobRun]:
    """The leader's cycle: renew the lease, then create a run for every due time up to
    ``until`` (default ``now``) after each job's mark and move the marks. The runs are
    enqueued when the caller commits. Raises LeaseLost when the caller no longer leads."""
    if not _renew(holder, epoch, now, ttl):
        raise LeaseLost("this scheduler no longer holds the lease")
    until = until or now
    created: list[JobRun] = []
    for job in jobs:
        mark = _lock_mark(job, epoch, until)
        slots = job.due_after(mark.scheduled_through, until)
        if not slots:
            continue
        created += _create_runs(
            [
                {
                    "job_name": job.name,
                    "slot": slot_name(due),
                    "due_at": due,
                    "origin": RunOrigin.SCHEDULE,
                    "job_id": job.job_id(slot_name(due)),
                    "func": job.func,
                    "args": list(job.args(due)),
                    "queue": job.queue,
                    "status": RunStatus.PENDING,
                    "scheduled_by": holder,
                    "epoch": epoch,
                    "attempts": 0,
                    "created_at": now,
                }
                for due in slots
            ]
        )
        if not advance_mark(
            job.name, from_=mark.scheduled_through, to=slots[-1], epoch=epoch, now=now
        ):
            raise LeaseLost(f"the mark of {job.name} was moved by another scheduler")
    db.session.flush()
    return created


def mark_enqueued(run_ids: list[int], *, now: datetime) -> None:
    if run_ids:
        db.session.execute(
            update(JobRun)
            .where(JobRun.id.in_(run_ids), JobRun.status == RunStatus.PENDING)
            .values(status=RunStatus.QUEUED, enqueued_at=now)
        )


def sweep_runs(*, now: datetime, grace: timedelta, limit: int = 100) -> list[JobRun]:
    """The leader's repair pass over runs older than ``grace`` that have not finished:
    enqueue again a run whose enqueue was lost (still pending, or gone from Redis), and
    fail a run whose worker died (RQ gave up on it). Returns the runs enqueued again."""
    stale = db.session.scalars(
        select(JobRun)
        .where(
            JobRun.status.in_((RunStatus.PENDING, RunStatus.QUEUED, RunStatus.RUNNING)),
            JobRun.created_at < now - grace,
        )
        .order_by(JobRun.id)
        .limit(limit)
    ).all()
    again: list[JobRun] = []
    for run in stale:
        if run.status == RunStatus.RUNNING and _settle_fan_out(run, now=now):
            continue
        rq_status = monitor.job_status(run.queue, run.job_id)
        if rq_status in ("failed", "stopped", "canceled") or (
            run.status == RunStatus.RUNNING and rq_status is None
        ):
            run.status, run.finished_at = RunStatus.FAILED, now
            run.error = run.error or f"the worker running it was lost (RQ status {rq_status})"
        elif rq_status is None:
            _enqueue(run)
            again.append(run)
        elif run.status == RunStatus.PENDING and rq_status in WAITING:
            run.status, run.enqueued_at = RunStatus.QUEUED, run.enqueued_at or now
    db.session.flush()
    return again


def _settle_fan_out(run: JobRun, *, now: datetime) -> bool:
    """A run waiting for its chunks ends with them: succeeded when every chunk is done,
    failed when one failed on every attempt (the others done). False: not a fan-out run."""
    chunks = requests.chunks_of(run.id)
    if not chunks.total:
        return False
    if chunks.open:
        return True  # still running (a failed attempt waits for its retry)
    duration = int((now - (run.started_at or run.created_at)).total_seconds() * 1000)
    figures = {**(run.figures or {}), "chunks_done": chunks.done, "chunks_failed": chunks.failed}
    error = None
    if chunks.failed:
        error = (
            f"{chunks.failed} of {chunks.total} chunks failed on every attempt "
            f"(Admin › Jobs › Retry all failed resumes the run): {chunks.error}"
        )
    finish_run(run.id, now=now, duration_ms=max(duration, 0), result=figures, error=error)
    return True


def await_chunks(run_id: int, *, result: Any) -> None:
    """The run asked for its chunks: it keeps running, with what it reported so far."""
    run = get_run(run_id)
    run.figures = _clean_figures(result)
    db.session.flush()


# -- runs ------------------------------------------------------------------------------------


def request_run(
    name: str, *, requested_by: User | None, request_key: str | None, now: datetime
) -> tuple[JobRun, bool]:
    """ "Run now": a manual run of a job, enqueued after commit. The same request key (a
    form's request id, an API Idempotency-Key) gives the same run. Returns (run, created)."""
    job = find_job(name)
    who = requested_by.email if requested_by is not None else "manual"
    digest = hashlib.sha256(f"{who}:{request_key or uuid.uuid4().hex}".encode()).hexdigest()
    slot = f"manual-{digest[:20]}"
    created = _create_runs(
        [
            {
                "job_name": job.name,
                "slot": slot,
                "due_at": None,
                "origin": RunOrigin.MANUAL,
                "job_id": job.job_id(slot),
                "func": job.func,
                "args": list(job.run_now_args(now)),
                "queue": job.queue,
                "status": RunStatus.PENDING,
                "scheduled_by": who[:255],
                "epoch": None,
                "requested_by_id": requested_by.id if requested_by else None,
                "attempts": 0,
                "created_at": now,
            }
        ]
    )
    run = db.session.scalars(
        select(JobRun).where(JobRun.job_name == job.name, JobRun.slot == slot)
    ).one()
    return run, bool(created)


def get_run(run_id: int) -> JobRun:
    run = db.session.get(JobRun, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"no job run {run_id}")
    return run


def start_run(run_id: int, *, now: datetime) -> JobRun | None:
    """Mark a run as running; None when it already succeeded or another worker has it."""
    started = rowcount(
        db.session.execute(
            update(JobRun)
            .where(
                JobRun.id == run_id,
                JobRun.status.in_((RunStatus.PENDING, RunStatus.QUEUED, RunStatus.FAILED)),
            )
            .values(
                status=RunStatus.RUNNING,
                started_at=now,
                finished_at=None,
                error=None,
                attempts=JobRun.attempts + 1,
                enqueued_at=func.coalesce(JobRun.enqueued_at, now),
            )
        )
    )
    return get_run(run_id) if started else None


def _clean_figures(result: Any) -> dict[str, Any] | None:
    if not isinstance(result, dict):
        return None
    return {
        str(k): v if v is None or isinstance(v, (bool, int, str)) else str(v)
        for k, v in result.items()
    }


def finish_run(
    run_id: int, *, now: datetime, duration_ms: int, result: Any = None, error: str | None = None
) -> JobRun:
    """Record a run's outcome, and report it on the status row of the scheduler that
    scheduled it (the seed's last_run_at, last_run_success, instances_billed, total_amount)."""
    run = get_run(run_id)
    run.status = RunStatus.FAILED if error else RunStatus.SUCCEEDED
    run.finished_at, run.duration_ms = now, duration_ms
    run.figures, run.error = _clean_figures(result), error
    values: dict[str, Any] = {"last_run_at": now, "last_run_success": error is None}
    figures = run.figures or {}
    if isinstance(figures.get("deployments"), int):
        values["instances_billed"] = figures["deployments"]
    if isinstance(figures.get("amount_minor"), int) and isinstance(figures.get("currency"), str):
        values["total_amount_minor"] = figures["amount_minor"]
        values["currency"] = figures["currency"]
    db.session.execute(
        update(DaemonStatus)
        .where(DaemonStatus.daemon_instance_id == run.scheduled_by)
        .values(**values)
    )
    db.session.flush()
    return run


# -- scheduler status ------------------------------------------------------------------------


def heartbeat(
    instance: str,
    *,
    kind: SchedulerKind,
    role: SchedulerRole,
    epoch: int | None,
    state: DaemonState,
    now: datetime,
    error: str | None = None,
) -> None:
    """Record that a scheduler process is alive (its row is created on the first beat)."""
    values = {
        "status": state,
        "role": role,
        "lease_epoch": epoch,
        "heartbeat_at": now,
        "stopped_at": now if state == DaemonState.STOPPED else None,
        "last_error": error[:1000] if error else None,
    }
    updated = rowcount(
        db.session.execute(
            update(DaemonStatus).where(DaemonStatus.daemon_instance_id == instance).values(**values)
        )
    )
    if not updated:
        hostname, _, pid = instance.rpartition("-")
        db.session.add(
            DaemonStatus(
                daemon_instance_id=instance,
                kind=kind,
                hostname=hostname,
                pid=int(pid) if pid.isdigit() else 0,
                started_at=now,
                **values,
            )
        )
    db.session.flush()


_DAEMONS_SINCE = (
    select(func.count())
    .select_from(DaemonStatus)
    .where(
        DaemonStatus.kind == SchedulerKind.DAEMON,
        DaemonStatus.heartbeat_at > bindparam("since"),
    )
)


def daemon_alive(*, now: datetime, within: timedelta) -> bool:
    """Whether any daemon (not a built-in scheduler) beat within ``within``."""
    return db.session.execute(_DAEMONS_SINCE, {"since": now - within}).scalar_one() > 0


# -- what the admin page and the API show ----------------------------------------------------


@dataclass
class InstanceView:
    row: DaemonStatus
    heartbeat_age: timedelta
    alive: bool

    @property
    def total_amount(self) -> Money | None:
        if self.row.total_amount_minor is None or not self.row.currency:
            return None
        return Money(self.row.total_amount_minor, self.row.currency)


@dataclass
class RunView:
    run: JobRun
    progress: tuple[int, int] | None = None  # (done, total) while it runs, if it reports

    @property
    def percent(self) -> int | None:
        if self.progress is None or self.progress[1] <= 0:
            return None
        return min(100, self.progress[0] * 100 // self.progress[1])


@dataclass
class JobView:
    job: PeriodicJob
    scheduled_through: datetime | None
    next_due: datetime
    last_run: RunView | None


@dataclass
class QueueView:
    name: str
    queued: int
    started: int
    failed: int


@dataclass
class FailedJob:
    job_id: str
    queue: str
    func: str
    error: str
    ended_at: datetime | None
    run_id: int | None


@dataclass
class Overview:
    now: datetime
    instances: list[InstanceView]
    lease: SchedulerLease | None
    builtin_active: bool
    builtin_after: timedelta
    jobs: list[JobView]
    queues: list[QueueView]
    failed: list[FailedJob]
    workers: int
    recent_runs: list[JobRun] = field(default_factory=list)
    waiting: list[requests.Waiting] = field(default_factory=list)
    failed_requests: list[requests.FailedTask] = field(default_factory=list)


def run_view(run: JobRun) -> RunView:
    progress = None
    if run.status == RunStatus.RUNNING:
        chunks = requests.chunks_of(run.id)
        if chunks.total:  # a run waiting for its chunks: how many have ended
            return RunView(run, (chunks.done + chunks.failed, chunks.total))
        meta = monitor.job_meta(run.queue, run.job_id)
        value = meta.get("progress")
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
            progress = (value[0], value[1])
    return RunView(run, progress)


def show_run(run_id: int) -> RunView:
    return run_view(get_run(run_id))


# The Jobs page's statements, built once (it is read on every view and its htmx refresh).
_INSTANCES = select(DaemonStatus).order_by(DaemonStatus.heartbeat_at.desc()).limit(RECENT_INSTANCES)
_MARKS = select(ScheduledJob)
_LAST_RUNS = select(JobRun).where(
    JobRun.id.in_(
        select(func.max(JobRun.id))
        .where(JobRun.job_name.in_(bindparam("names", expanding=True)))
        .group_by(JobRun.job_name)
    )
)
_RECENT_RUNS = select(JobRun).order_by(JobRun.id.desc()).limit(20)


def _instances(now: datetime, alive_within: timedelta) -> list[InstanceView]:
    rows = db.session.scalars(_INSTANCES).all()
    return [
        InstanceView(
            row,
            max(now - row.heartbeat_at, timedelta(0)),
            row.status != DaemonState.STOPPED and now - row.heartbeat_at <= alive_within,
        )
        for row in rows
    ]


def _last_runs(names: list[str]) -> dict[str, JobRun]:
    if not names:
        return {}
    return {run.job_name: run for run in db.session.scalars(_LAST_RUNS, {"names": names})}


def overview(*, now: datetime) -> Overview:
    config = current_app.config
    lease_ttl = duration(config["DAEMON_LEASE_SECONDS"])
    builtin_after = duration(config["BUILTIN_BILLING_AFTER_MINUTES"], "minutes")
    jobs = periodic_jobs()
    marks = {m.name: m for m in db.session.scalars(_MARKS)}
    last = _last_runs([job.name for job in jobs])
    views = []
    for job in jobs:
        mark = marks.get(job.name)
        through = mark.scheduled_through if mark else None
        run = last.get(job.name)
        views.append(
            JobView(
                job, through, job.next_due(max(through or now, now)), run_view(run) if run else None
            )
        )
    rq_state = monitor.snapshot()
    failed = []
    for entry in rq_state.failed:
        failed.append(
            FailedJob(
                entry.job_id, entry.queue, entry.func, entry.error, entry.ended_at, entry.run_id
            )
        )
    return Overview(
        now=now,
        instances=_instances(now, lease_ttl),
        lease=current_lease(),
        builtin_active=not daemon_alive(now=now, within=builtin_after),
        builtin_after=builtin_after,
        jobs=views,
        queues=[QueueView(q.name, q.queued, q.started, q.failed) for q in rq_state.depths],
        failed=failed,
        workers=rq_state.workers,
        recent_runs=list(db.session.scalars(_RECENT_RUNS)),
        waiting=requests.waiting_work(),
        failed_requests=requests.failed_by_task(),
    )


def retry_failed(job_id: str, *, now: datetime) -> str:
    """Put a failed RQ job back on its queue; its run (if it has one) is queued again.
    Returns the queue name."""
    found = monitor.requeue_failed(job_id)
    if found is None:
        raise NotFound(f"no failed job {job_id!r}")
    queue_name, run_id = found
    if run_id is not None:
        db.session.execute(
            update(JobRun)
            .where(JobRun.id == run_id, JobRun.status == RunStatus.FAILED)
            .values(status=RunStatus.QUEUED, enqueued_at=now)
        )
    return queue_name

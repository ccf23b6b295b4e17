"""The schedule's state: daemon instances, the leader lease, per-job progress and job runs.

Nothing here is timing-based: a slot is scheduled at most once because ``job_runs`` is
UNIQUE on (job_name, slot), and the leader's writes are fenced by the lease epoch.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow


class SchedulerKind(enum.StrEnum):
    DAEMON = "daemon"  # `flask billing daemon`
    BUILTIN = "builtin"  # the failover scheduler inside a worker process


class DaemonState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    ERROR = "error"  # the last cycle failed; the process keeps going


class SchedulerRole(enum.StrEnum):
    LEADER = "leader"  # holds the lease: schedules
    STANDBY = "standby"  # waits for the lease
    PAUSED = "paused"  # built-in scheduler while a daemon is alive


class RunStatus(enum.StrEnum):
    PENDING = "pending"  # claimed, not yet confirmed in the queue
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED)


class RunOrigin(enum.StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"


class DaemonStatus(Model):
    """One row per scheduler process (daemon or built-in), keyed by hostname-PID."""

    __tablename__ = "billing_daemon_status"
    __table_args__ = (
        CheckConstraint("status IN ('running', 'stopped', 'error')", name="status"),
        CheckConstraint("kind IN ('daemon', 'builtin')", name="kind"),
        CheckConstraint("role IN ('leader', 'standby', 'paused')", name="role"),
        Index("ix_billing_daemon_status_kind_heartbeat_at", "kind", "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    daemon_instance_id: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    lease_epoch: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The last run this instance scheduled, as its worker reported it.
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_run_success: Mapped[bool | None] = mapped_column(Boolean)
    instances_billed: Mapped[int | None] = mapped_column(Integer)
    total_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    last_error: Mapped[str | None] = mapped_column(String(1000))


class SchedulerLease(Model):
    """The leader lease (one row). Taking it over increments ``epoch``; every write a leader
    makes is conditioned on its epoch, so a leader that lost the lease cannot write."""

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(255))
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ScheduledJob(Model):
    """How far each periodic job has been scheduled: every due time up to and including
    ``scheduled_through`` has its run row."""

    __tablename__ = "scheduled_jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    scheduled_through: Mapped[datetime] = mapped_column(UTCDateTime)
    epoch: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobRun(Model):
    """One execution of a job: a scheduled slot, or a manual "Run now"."""

    __tablename__ = "job_runs"
    __table_args__ = (
        UniqueConstraint("job_name", "slot"),
        CheckConstraint(
            "status IN ('pending', 'queued', 'running', 'succeeded', 'failed')", name="status"
        ),
        CheckConstraint("origin IN ('schedule', 'manual')", name="origin"),
        Index("ix_job_runs_job_name_id", "job_name", "id"),
        Index("ix_job_runs_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_name: Mapped[str] = mapped_column(String(64))
    # The due time as text ("2026-11-21T18"), or "manual-<request id>".
    slot: Mapped[str] = mapped_column(String(80))
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    origin: Mapped[str] = mapped_column(String(16))  # RunOrigin
    job_id: Mapped[str] = mapped_column(String(160), unique=True)  # "meter:2026-11-21T18"
    func: Mapped[str] = mapped_column(String(200))
    args: Mapped[list[Any]] = mapped_column(JSON)
    queue: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    scheduled_by: Mapped[str] = mapped_column(String(255))
    epoch: Mapped[int | None] = mapped_column(BigInteger)
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    figures: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)

    @property
    def run_status(self) -> RunStatus:
        return RunStatus(self.status)

    @property
    def is_active(self) -> bool:
        return not self.run_status.is_final

"""Jobs API: the daemon's health and "Run now" (admin tokens only)."""

from __future__ import annotations

from flask import g

from ...models import TokenScope, utcnow
from ...services.admin import jobs as admin_jobs
from ...tasks import scheduler
from . import bp
from .fields import idempotency_key, iso
from .models import (
    BuiltinBilling,
    DaemonOut,
    FailedJobOut,
    JobOut,
    JobsStatus,
    Leader,
    QueueOut,
    RunOut,
    RunStarted,
)
from .spec import operation

ADMIN = TokenScope.ADMIN


def _run_json(view: scheduler.RunView) -> RunOut:
    run = view.run
    return RunOut(
        id=run.id,
        job=run.job_name,
        job_id=run.job_id,
        origin=run.origin,
        status=run.status,
        due_at=iso(run.due_at),
        created_at=iso(run.created_at),
        started_at=iso(run.started_at),
        finished_at=iso(run.finished_at),
        duration_ms=run.duration_ms,
        figures=run.figures,
        error=run.error,
        scheduled_by=run.scheduled_by,
        progress=view.percent,
    )


def _instance_json(i: scheduler.InstanceView) -> DaemonOut:
    row, amount = i.row, i.total_amount
    return DaemonOut(
        instance_id=row.daemon_instance_id,
        kind=row.kind,
        hostname=row.hostname,
        pid=row.pid,
        status=row.status,
        role=row.role,
        lease_epoch=row.lease_epoch,
        alive=i.alive,
        started_at=iso(row.started_at),
        heartbeat_at=iso(row.heartbeat_at),
        heartbeat_age_seconds=int(i.heartbeat_age.total_seconds()),
        last_run_at=iso(row.last_run_at),
        last_run_success=row.last_run_success,
        instances_billed=row.instances_billed,
        **(
            amount.to_json("total_amount")
            if amount
            else {"total_amount": None, "total_amount_minor": None}
        ),
        currency=row.currency,
        last_error=row.last_error,
    )


@bp.get("/jobs/status")
@operation(
    summary="The billing daemon, the schedule, queues and failed jobs",
    tag="Jobs",
    scopes=(ADMIN,),
    responses={200: JobsStatus},
)
def jobs_status():
    """The Jobs page as JSON."""
    o = scheduler.overview(now=utcnow())
    lease = o.lease
    return JobsStatus(
        leader=(
            Leader(instance_id=lease.holder, epoch=lease.epoch, expires_at=iso(lease.expires_at))
            if lease and lease.holder and lease.expires_at > o.now
            else None
        ),
        builtin_billing=BuiltinBilling(
            active=o.builtin_active, after_minutes=int(o.builtin_after.total_seconds() // 60)
        ),
        daemons=[_instance_json(i) for i in o.instances],
        jobs=[
            JobOut(
                name=j.job.name,
                cron=j.job.cron,
                queue=j.job.queue,
                scheduled_through=iso(j.scheduled_through),
                next_due_at=iso(j.next_due),
                last_run=_run_json(j.last_run) if j.last_run else None,
            )
            for j in o.jobs
        ],
        queues=[
            QueueOut(name=q.name, queued=q.queued, started=q.started, failed=q.failed)
            for q in o.queues
        ],
        workers=o.workers,
        failed_jobs=[
            FailedJobOut(
                job_id=f.job_id,
                queue=f.queue,
                func=f.func,
                error=f.error,
                ended_at=iso(f.ended_at),
                run_id=f.run_id,
            )
            for f in o.failed
        ],
    )


@bp.post("/jobs/<name>")
@operation(
    summary="Run a job now",
    tag="Jobs",
    scopes=(ADMIN,),
    responses={202: RunStarted},
    idempotency_key="the same key starts the job once",
    path={
        "name": {"type": "string", "pattern": "^[a-z0-9-]{1,64}$", "examples": ["calculate-usage"]}
    },
)
def run_job(name: str):
    """Unknown job names are 404."""
    run, _ = admin_jobs.run_now(
        name, requested_by=g.api_user, request_key=idempotency_key(), now=utcnow()
    )
    return RunStarted(job_id=run.job_id, status=run.status, run_id=run.id, job=run.job_name), 202


@bp.get("/jobs/runs/<int:run_id>")
@operation(summary="One run of a job", tag="Jobs", scopes=(ADMIN,), responses={200: RunOut})
def job_run(run_id: int):
    return _run_json(scheduler.show_run(run_id))

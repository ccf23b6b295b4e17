"""Jobs run by hand, recorded in the audit log with the run."""

from __future__ import annotations

from datetime import datetime

from ...models import JobRun, User
from ...tasks import scheduler
from .. import audit


def run_now(
    name: str, *, requested_by: User | None, request_key: str | None, now: datetime
) -> tuple[JobRun, bool]:
    """``scheduler.request_run`` plus its audit entry (once per run, not per repeat)."""
    run, created = scheduler.request_run(
        name, requested_by=requested_by, request_key=request_key, now=now
    )
    if created:
        audit.record(
            "job.run_requested",
            "job_run",
            run.id,
            actor=requested_by,
            after={"job": run.job_name, "job_id": run.job_id, "queue": run.queue},
        )
    return run, created

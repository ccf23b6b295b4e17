"""Metering jobs: `meter_due` fans the due chunks out to the metering queue; each
`meter_chunk` meters one chunk of users and commits, asking in the same transaction for a
check of the chunk's budget caps when one of its users has a budget; `backfill_deployment` meters one
deployment's past days again after a change dated before its chunk's mark."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import exists, select

from ...extensions import db
from ...models import Budget
from ...tasks.clock import database_now
from ...tasks.queues import enqueue_after_commit, get_queue
from ...tasks.registry import schedule, task
from . import rollups, runs


def _hour(upto_iso: str | None) -> datetime:
    """The hour to meter up to, never after the last complete hour in the database's time
    (a scheduler with a fast clock cannot make a run meter the future)."""
    latest = rollups.last_complete_hour(database_now())
    return min(rollups.parse_hour(upto_iso), latest) if upto_iso else latest


@task("metering.meter_due")
def meter_due(upto_iso: str | None = None) -> dict[str, int | str]:
    """The "calculate-usage" job: every complete hour not yet metered, for every chunk."""
    upto = _hour(upto_iso)
    runs.prepare_run(upto)
    db.session.commit()
    chunks = rollups.due_chunks(upto)
    stamp = upto.strftime("%Y-%m-%dT%H")
    if not get_queue("metering").is_async:
        totals = rollups.MeterResult()
        for chunk in chunks:
            totals.add(rollups.meter_chunk(chunk, upto))
            _check_budgets(chunk, upto)
            db.session.commit()
        runs.log_run(upto, totals)
        return dict(totals.figures())
    for chunk in chunks:
        enqueue_after_commit(
            "metering", "metering.meter_chunk", chunk, stamp, job_id=f"meter:{chunk}:{stamp}"
        )
    db.session.commit()
    return {"chunks": len(chunks), "upto": stamp}


@task("metering.meter_chunk")
def meter_chunk(chunk: int, upto_iso: str) -> dict[str, int]:
    upto = _hour(upto_iso)
    result = rollups.meter_chunk(chunk, upto)
    _check_budgets(chunk, upto)
    db.session.commit()
    return result.figures()


def _check_budgets(chunk: int, upto: datetime) -> None:
    """The chunk's spending just grew: its budget caps are checked right after this commit
    (as of the hour metered; the "budgets.check" task), not at the next check-budgets run."""
    size = rollups.chunk_size()
    first, stop = chunk * size, (chunk + 1) * size
    if db.session.scalar(select(exists().where(Budget.user_id >= first, Budget.user_id < stop))):
        enqueue_after_commit(
            "default",
            "budgets.check",
            upto.isoformat(),
            first,
            stop,
            job_id=f"budgets:{chunk}:{upto:%Y-%m-%dT%H}",
        )


@task("metering.backfill_deployment")
def backfill_deployment(deployment_id: int, since_iso: str) -> dict[str, int]:
    result = rollups.rebuild_deployment(deployment_id, datetime.fromisoformat(since_iso))
    db.session.commit()
    return result.figures()


def _meter_upto(due: datetime) -> tuple[str]:
    # meter_due meters every complete hour before this boundary: at 18:00 the hour 17-18.
    return (due.astimezone(UTC).strftime("%Y-%m-%dT%H"),)


schedule(
    "calculate-usage",
    cron=lambda config: config["BILLING"].usage_calculation_interval,
    func="metering.meter_due",
    queue="metering",
    id_prefix="meter",
    args=_meter_upto,
    enabled=lambda config: config["BILLING"].enabled,
)

"""Metering jobs: `meter_due` fans the due chunks out to the metering queue; each
`meter_chunk` meters one chunk of users and commits; `backfill_deployment` meters one
deployment's past days again after a change dated before its chunk's mark."""

from __future__ import annotations

from datetime import datetime

from portal.extensions import db
from portal.services import metering

from .queues import enqueue, get_queue


def _hour(upto_iso: str | None) -> datetime:
    return metering.parse_hour(upto_iso) if upto_iso else metering.last_complete_hour()


def meter_due(upto_iso: str | None = None) -> dict:
    """The "calculate-usage" job: every complete hour not yet metered, for every chunk."""
    upto = _hour(upto_iso)
    metering.prepare_run(upto)
    db.session.commit()
    chunks = metering.due_chunks(upto)
    stamp = upto.strftime("%Y-%m-%dT%H")
    if not get_queue("metering").is_async:
        totals = metering.MeterResult()
        for chunk in chunks:
            totals.add(metering.meter_chunk(chunk, upto))
            db.session.commit()
        return totals.figures()
    for chunk in chunks:
        enqueue(
            "metering", "jobs.metering.meter_chunk", chunk, stamp, job_id=f"meter:{chunk}:{stamp}"
        )
    return {"chunks": len(chunks), "upto": stamp}


def meter_chunk(chunk: int, upto_iso: str) -> dict:
    result = metering.meter_chunk(chunk, metering.parse_hour(upto_iso))
    db.session.commit()
    return result.figures()


def backfill_deployment(deployment_id: int, since_iso: str) -> dict:
    result = metering.rebuild_deployment(deployment_id, datetime.fromisoformat(since_iso))
    db.session.commit()
    return result.figures()

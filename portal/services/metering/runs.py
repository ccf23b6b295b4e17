"""Metering runs: what happens before the chunks are metered, and the whole run in one
process (the CLI)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import current_app

from ...extensions import db
from .deployments import end_silent_sessions
from .rollups import MeterResult, due_chunks, meter_chunk

log = logging.getLogger(__name__)


def meter_all(upto: datetime) -> MeterResult:
    """Meter every due chunk in this process, one transaction per chunk (the CLI)."""
    totals = MeterResult()
    prepare_run(upto)
    db.session.commit()
    for chunk in due_chunks(upto):
        totals.add(meter_chunk(chunk, upto))
        db.session.commit()
    db.session.commit()  # end the look-up's transaction too (SQLite holds its lock until then)
    log_run(upto, totals)
    return totals


def log_run(upto: datetime, totals: MeterResult) -> None:
    log.info(
        "metering up to %s: %d chunks, %d chunk-hours, %d deployments, %d rollup rows written",
        upto.isoformat(),
        totals.chunks,
        totals.hours,
        totals.deployments,
        totals.rows,
    )


def prepare_run(upto: datetime) -> None:
    """Before metering: sessions whose heartbeats stopped are ended where they stopped."""
    timeout = timedelta(
        minutes=int(current_app.config.get("SESSION_HEARTBEAT_TIMEOUT_MINUTES", 15))
    )
    end_silent_sessions(timeout, now=upto)

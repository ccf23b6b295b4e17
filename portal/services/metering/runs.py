"""Metering runs: what happens before the chunks are metered, and the whole run in one
process (the CLI)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timedelta

from flask import current_app

from ...extensions import db
from .deployments import end_silent_sessions
from .rollups import MeterResult, due_chunks, meter_chunk

log = logging.getLogger(__name__)


def meter_all(upto: datetime) -> MeterResult:
    """Meter every due chunk in this process, one transaction per chunk (the CLI). On
    PostgreSQL the chunks are shared among METER_RUN_CONNECTIONS threads, each with its own
    connection: chunks are independent (each under its own mark), so the database works on
    as many at once, as it would for as many workers."""
    totals = MeterResult()
    prepare_run(upto)
    db.session.commit()
    chunks = due_chunks(upto)
    db.session.commit()  # end the look-up's transaction too (SQLite holds its lock until then)
    threads = int(current_app.config.get("METER_RUN_CONNECTIONS", 2))
    if db.engine.dialect.name == "postgresql" and threads > 1 and len(chunks) > 1:
        totals = _meter_shared(chunks, upto, threads)
    else:
        for chunk in chunks:
            totals.add(meter_chunk(chunk, upto))
            db.session.commit()
    log_run(upto, totals)
    return totals


def _meter_shared(chunks: list[int], upto: datetime, threads: int) -> MeterResult:
    """Every chunk metered and committed on one of ``threads`` connections. A chunk that
    fails leaves its mark where it was (the next run meters it); the others still commit,
    and the first failure is raised once all are done."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def run(chunk: int) -> MeterResult:
        with app.app_context():
            try:
                result = meter_chunk(chunk, upto)
                db.session.commit()
                return result
            finally:
                db.session.remove()

    totals = MeterResult()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="meter-run") as pool:
        futures = [pool.submit(run, chunk) for chunk in chunks]
        wait(futures)
    for future in futures:
        totals.add(future.result())  # the first failure, in chunk order, is raised
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

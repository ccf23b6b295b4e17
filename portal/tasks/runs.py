"""The RQ job every scheduled or manual run goes through: it marks the run started, calls
the job function (which commits its own work) and records outcome, duration and figures.

A run that fans out (an invoice or metering run asks for one job per chunk) is not over when
it has asked: the chunks' job requests carry its id, and it stays "running" until they end.
The leader's sweep (scheduler.sweep_runs) then makes it "succeeded", or "failed" when a chunk
failed on every attempt; the relay retries a failed chunk with backoff meanwhile, so a run
whose chunk was killed resumes on its own."""

from __future__ import annotations

import logging
import time
import traceback

from ..extensions import db
from ..models import utcnow
from . import requests, scheduler
from .registry import RUNNER, resolve, task

log = logging.getLogger("jobs.runs")  # as operators know it: runs execute in jobs.worker


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


@task(RUNNER)
def execute(run_id: int):
    run = scheduler.start_run(run_id, now=utcnow())
    db.session.commit()
    if run is None:  # finished already, or running elsewhere: a duplicate delivery
        return None
    job_id, func, args = run.job_id, run.func, list(run.args)
    started = time.monotonic()
    try:
        with requests.for_run(run_id):
            result = resolve(func)(*args)
    except Exception as exc:
        db.session.rollback()
        error = "".join(traceback.format_exception_only(exc)).strip()
        scheduler.finish_run(run_id, now=utcnow(), duration_ms=_elapsed_ms(started), error=error)
        db.session.commit()
        log.error("%s failed: %s", job_id, error)
        raise  # RQ keeps it in the failed registry, where the admin page offers a retry
    if requests.chunks_of(run_id).total:
        scheduler.await_chunks(run_id, result=result)
        db.session.commit()
        log.info("%s asked for its chunks: %s", job_id, result)
        return result
    finished = scheduler.finish_run(
        run_id, now=utcnow(), duration_ms=_elapsed_ms(started), result=result
    )
    db.session.commit()
    log.info("%s succeeded in %s ms: %s", job_id, finished.duration_ms, finished.figures)
    return result

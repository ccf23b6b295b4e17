"""The RQ worker class: every job runs in its own app context (and so its own database
session), and jobs enqueued under a legacy dotted path still find their task.

While it runs a job, a worker keeps a short-lived "alive" key in Redis (renewed every
``job_monitoring_interval``, JOB_MONITORING_SECONDS). A job RQ still calls started whose
worker's key has expired was lost with its worker (kill -9, a crash of the machine): the
relay counts that as a failed attempt and retries it, instead of waiting for RQ's own
clean-up, which takes minutes."""

from __future__ import annotations

import os
from typing import ClassVar

from flask import Flask
from redis import Redis
from redis.client import Pipeline
from rq import Worker

from ..extensions import db
from .queues import TaskJob

ALIVE_KEY = "portal:worker-alive:{}"
ALIVE_BEATS = 3  # heartbeats missed before a worker counts as gone


def alive_key(worker_name: str) -> str:
    return ALIVE_KEY.format(worker_name)


def gone(connection: Redis, worker_names: list[str]) -> set[str]:
    """The workers of ``worker_names`` whose alive key has expired."""
    with connection.pipeline() as pipe:
        for name in worker_names:
            pipe.exists(alive_key(name))
        alive = pipe.execute()
    return {name for name, exists in zip(worker_names, alive, strict=True) if not exists}


class AppWorker(Worker):
    app: ClassVar[Flask | None] = None  # set by the entry point before the worker starts
    parent_pid = os.getpid()
    job_class = TaskJob

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None):
        super().heartbeat(timeout, pipeline)
        # Also in the horse's pipeline that marks the job started: never started without it.
        ttl = max(int(self.job_monitoring_interval) * ALIVE_BEATS, 3)
        (pipeline if pipeline is not None else self.connection).set(alive_key(self.name), 1, ex=ttl)

    def perform_job(self, job, queue):
        with self.app.app_context():  # db.engine is the app's: look it up inside the context
            if os.getpid() != self.parent_pid:
                # A forked work horse must not reuse the parent's pooled connections.
                db.engine.dispose(close=False)
            try:
                return super().perform_job(job, queue)
            finally:
                db.session.remove()

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


ALIVE_FIELD = "portal_alive_key"  # on RQ's record of the worker: it keeps an alive key


def gone(connection: Redis, worker_names: list[str]) -> set[str]:
    """The workers of ``worker_names`` that are gone: their alive key has expired, and RQ's
    record of them says they kept one (or has expired too). A worker of another kind (RQ's
    own, a test's) is never judged."""
    with connection.pipeline() as pipe:
        for name in worker_names:
            pipe.exists(alive_key(name))
            pipe.exists(Worker.redis_worker_namespace_prefix + name)
            pipe.hget(Worker.redis_worker_namespace_prefix + name, ALIVE_FIELD)
        answers = pipe.execute()
    dead = set()
    for i, name in enumerate(worker_names):
        alive, recorded, keeps_one = answers[3 * i : 3 * i + 3]
        if not alive and (not recorded or keeps_one):
            dead.add(name)
    return dead


class AppWorker(Worker):
    app: ClassVar[Flask | None] = None  # set by the entry point before the worker starts
    parent_pid = os.getpid()
    job_class = TaskJob

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None):
        super().heartbeat(timeout, pipeline)
        # Also in the horse's pipeline that marks the job started: never started without it.
        ttl = max(int(self.job_monitoring_interval) * ALIVE_BEATS, 3)
        connection = pipeline if pipeline is not None else self.connection
        connection.set(alive_key(self.name), 1, ex=ttl)
        connection.hset(self.key, ALIVE_FIELD, "1")

    def perform_job(self, job, queue):
        with self.app.app_context():  # db.engine is the app's: look it up inside the context
            if os.getpid() != self.parent_pid:
                # A forked work horse must not reuse the parent's pooled connections.
                db.engine.dispose(close=False)
            try:
                return super().perform_job(job, queue)
            finally:
                db.session.remove()

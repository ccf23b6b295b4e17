"""The RQ worker class: every job runs in its own app context (and so its own database
session), and jobs enqueued under a legacy dotted path still find their task."""

from __future__ import annotations

import os
from typing import ClassVar

from flask import Flask
from rq import Worker

from ..extensions import db
from .queues import TaskJob


class AppWorker(Worker):
    app: ClassVar[Flask | None] = None  # set by the entry point before the worker starts
    parent_pid = os.getpid()
    job_class = TaskJob

    def perform_job(self, job, queue):
        with self.app.app_context():  # db.engine is the app's: look it up inside the context
            if os.getpid() != self.parent_pid:
                # A forked work horse must not reuse the parent's pooled connections.
                db.engine.dispose(close=False)
            try:
                return super().perform_job(job, queue)
            finally:
                db.session.remove()

"""RQ worker entry point: builds the app once; every job runs in its own app context
(and so its own database session)."""
from __future__ import annotations

import os
import sys

from rq import Worker

from portal import create_app
from portal.extensions import db

from .daemon import start_builtin, stop_builtin
from .queues import QUEUES, redis_connection


class AppWorker(Worker):
    app = None
    parent_pid = os.getpid()

    def perform_job(self, job, queue):
        if os.getpid() != self.parent_pid:
            # A forked work horse must not reuse the parent's pooled connections.
            db.engine.dispose(close=False)
        with self.app.app_context():
            try:
                return super().perform_job(job, queue)
            finally:
                db.session.remove()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    queues = argv or list(QUEUES)
    app = create_app()
    AppWorker.app = app
    AppWorker.parent_pid = os.getpid()
    with app.app_context():
        worker = AppWorker(queues, connection=redis_connection(app))
    # Beside the worker, the built-in failover scheduler (jobs/daemon.py).
    builtin = start_builtin(app)
    try:
        worker.work(with_scheduler=False)
    finally:
        stop_builtin(builtin)


if __name__ == "__main__":
    main()

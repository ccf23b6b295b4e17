"""RQ worker entry point: builds the app once; every job runs in its own app context
(and so its own database session)."""

from __future__ import annotations

import argparse
import os

from rq import Worker

from portal import create_app
from portal.extensions import db
from portal.services.reconcile import refuse_changed_currency_digits

from .daemon import start_builtin, stop_builtin
from .queues import QUEUES, redis_connection


class AppWorker(Worker):
    app = None
    parent_pid = os.getpid()

    def perform_job(self, job, queue):
        with self.app.app_context():  # db.engine is the app's: look it up inside the context
            if os.getpid() != self.parent_pid:
                # A forked work horse must not reuse the parent's pooled connections.
                db.engine.dispose(close=False)
            try:
                return super().perform_job(job, queue)
            finally:
                db.session.remove()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.worker")
    parser.add_argument("--burst", action="store_true", help="run the jobs waiting now, then exit")
    parser.add_argument(
        "queues",
        nargs="*",
        metavar="QUEUE",
        help=f"queues to work on (default: all of {', '.join(QUEUES)})",
    )
    args = parser.parse_args(argv)
    queues = args.queues or list(QUEUES)
    app = create_app()
    AppWorker.app = app
    AppWorker.parent_pid = os.getpid()
    with app.app_context():
        refuse_changed_currency_digits()
        worker = AppWorker(queues, connection=redis_connection(app))
    # Beside a long-running worker, the built-in failover scheduler (jobs/daemon.py).
    builtin = None if args.burst else start_builtin(app)
    try:
        worker.work(burst=args.burst, with_scheduler=False)
    finally:
        stop_builtin(builtin)


if __name__ == "__main__":
    main()

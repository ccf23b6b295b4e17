"""RQ worker entry point: ``python -m jobs.worker [--burst] [QUEUE...]``. Builds the app
once; beside a long-running worker, the built-in failover scheduler (jobs.daemon)."""

from __future__ import annotations

import argparse
import os

from portal import create_app
from portal.services.wallet.reconcile import refuse_changed_currency_digits
from portal.tasks.daemon import start_builtin, stop_builtin
from portal.tasks.queues import QUEUES, redis_connection
from portal.tasks.worker import AppWorker


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
    builtin = None if args.burst else start_builtin(app)
    try:
        worker.work(burst=args.burst, with_scheduler=False)
    finally:
        stop_builtin(builtin)


if __name__ == "__main__":
    main()

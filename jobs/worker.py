"""RQ worker entry point: ``python -m jobs.worker [--burst] [QUEUE...]``. Builds the app
once; beside a long-running worker, the built-in failover scheduler (jobs.daemon).

Redis going away does not end the worker: it waits for Redis at start, and when Redis is
lost while it works (a job finishing during the outage included) it waits for Redis again
and goes on with a new RQ worker. What it was doing is in the database's job requests, which
the relay sends again."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from redis import Redis
from redis.exceptions import RedisError

from portal import create_app
from portal.services.wallet.reconcile import refuse_changed_currency_digits
from portal.tasks.daemon import start_builtin, stop_builtin
from portal.tasks.queues import QUEUES, redis_connection
from portal.tasks.worker import AppWorker

log = logging.getLogger("jobs.worker")
MAX_WAIT = 30.0


def wait_for_redis(connection: Redis, stopping: threading.Event) -> bool:
    """Block until Redis answers (True) or a stop is asked for (False), logging while it
    does not answer (waits double up to 30 s)."""
    wait = 0.5
    while not stopping.is_set():
        try:
            connection.ping()
            return True
        except (RedisError, OSError) as exc:
            log.warning("Redis is unavailable (%s): waiting %.1f s", exc, wait)
            stopping.wait(wait)
            wait = min(wait * 2, MAX_WAIT)
    return False


def stop_listening(worker: AppWorker) -> None:
    """Stop the command listener of an RQ worker that quit. RQ's teardown records the
    worker's death in Redis before it unsubscribes; with Redis gone that fails first, and the
    listener thread would go on retrying beside every later worker."""
    thread = worker.pubsub_thread
    if thread is not None and thread.is_alive():
        thread.stop()
        thread.join(timeout=5)
    if worker.pubsub is not None:
        try:
            worker.pubsub.close()
        except (RedisError, OSError):
            pass


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
    connection = redis_connection(app)
    builtin = None if args.burst else start_builtin(app)
    stopping = threading.Event()
    try:
        while True:
            # Between RQ workers, SIGTERM and SIGINT stop the wait (RQ installs its own).
            signal.signal(signal.SIGTERM, lambda *_: stopping.set())
            signal.signal(signal.SIGINT, lambda *_: stopping.set())
            if not wait_for_redis(connection, stopping):
                return
            worker = None
            try:
                worker = AppWorker(
                    queues,
                    connection=connection,
                    job_monitoring_interval=app.config["JOB_MONITORING_SECONDS"],
                )
                worker.work(burst=args.burst, with_scheduler=False)
            except (RedisError, OSError) as exc:  # its start or its teardown met no Redis
                log.warning("lost Redis: %s", exc)
            finally:
                if worker is not None:
                    stop_listening(worker)
            # RQ's loop also quits, logging why, on an error it does not handle itself.
            if args.burst or (worker is not None and worker._shutdown_requested_date):
                return
            log.warning("the RQ worker quit without a stop request: starting it again")
            stopping.wait(1)
    finally:
        stop_builtin(builtin)


if __name__ == "__main__":
    main()

"""The billing daemon's process: ``python -m jobs.daemon`` (``--builtin``: the failover
scheduler a worker starts). The loop is portal.tasks.daemon."""

from __future__ import annotations

import argparse
import sys

from portal import create_app
from portal.models import SchedulerKind
from portal.tasks.daemon import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.daemon")
    parser.add_argument(
        "--builtin",
        action="store_true",
        help="run as the built-in failover scheduler (what workers start)",
    )
    parser.add_argument("--parent-pid", type=int, help="stop when this process is gone")
    parser.add_argument("--now", help="shift the schedule's clock to this ISO time (tests)")
    parser.add_argument("--once", action="store_true", help="run one cycle, then stop")
    args = parser.parse_args(argv)

    app = create_app()
    return run(
        app,
        kind=SchedulerKind.BUILTIN if args.builtin else SchedulerKind.DAEMON,
        now=args.now,
        once=args.once,
        parent_pid=args.parent_pid,
    )


if __name__ == "__main__":
    sys.exit(main())

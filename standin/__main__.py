"""python -m standin --port 8420 --webhook-url URL --webhook-secret whsec_...

Listens on 127.0.0.1 only; there is deliberately no option for another address. The webhook
secret can come from the environment instead (STANDIN_WEBHOOK_SECRET), which keeps it off the
command line that `ps` shows to every user of the machine; `flask billing serve` passes it so.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .server import DEFAULT_EVENTS, Settings, run

SECRET_ENV = "STANDIN_WEBHOOK_SECRET"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m standin", description="Local Stripe-compatible stand-in (127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8420,
        help="port on 127.0.0.1 (0 picks a free one; the first line printed names it)",
    )
    parser.add_argument("--webhook-url", help="where to deliver events (http://127.0.0.1:...)")
    parser.add_argument(
        "--webhook-secret",
        default=os.environ.get(SECRET_ENV) or None,
        help=f"signing secret (whsec_...); default: ${SECRET_ENV}, which "
        "keeps it out of the process list",
    )
    parser.add_argument(
        "--events",
        default=",".join(DEFAULT_EVENTS),
        help="comma-separated event types to deliver, or 'all'",
    )
    parser.add_argument("--state-file", help="keep the objects in this file across restarts")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stdout,
        format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s",
    )
    events = (
        None
        if args.events.strip() == "all"
        else tuple(e.strip() for e in args.events.split(",") if e.strip())
    )
    run(
        Settings(
            port=args.port,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            events=events,
            state_file=args.state_file,
        )
    )


if __name__ == "__main__":
    main()

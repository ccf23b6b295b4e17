"""The crash test's child: a settlement run that is killed (SIGKILL, no clean-up of any
kind) around its card charge.

    python -m tests.support.crash_settle {before|after} USER_ID

The app's config comes as JSON in PORTAL_CRASH_CONFIG (the test's database, Redis and
stand-in). ``before``: the process dies as the charge is about to be sent, so the card
processor never hears of it. ``after``: it dies as the processor's answer arrives, so the
card is charged but nothing of the answer is recorded. Exits 3 if it was not killed.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from portal import create_app
from portal.gateways import get_gateway
from portal.services.payments import settlement


def main() -> None:
    when, user_id = sys.argv[1], int(sys.argv[2])
    if when not in ("before", "after"):
        raise SystemExit(f"usage: {sys.argv[0]} before|after USER_ID")

    app = create_app(json.loads(os.environ["PORTAL_CRASH_CONFIG"]))
    with app.app_context():
        gateway = get_gateway()
        charge = gateway.create_payment_intent

        def charge_and_die(*args, **kwargs):
            if when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            answer = charge(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
            return answer

        gateway.create_payment_intent = charge_and_die
        settlement.settle(user_id)
    sys.exit(3)


if __name__ == "__main__":
    main()

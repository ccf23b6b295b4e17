"""Wallet jobs: expired credit goes back to the grant source, daily."""

from __future__ import annotations

import logging

from ...extensions import db
from ...tasks.registry import schedule, task
from . import credits

log = logging.getLogger(__name__)


@task("wallet.expire_credits")
def expire_credits() -> dict[str, int]:
    count = credits.expire_credits()
    db.session.commit()
    log.info("%d credit lots expired", count)
    return {"expired": count}


# Balances never count expired lots (credits.spendable_balances); this books the expiry
# in the ledger so that the cached balance and the history agree with them.
schedule(
    "expire-credits",
    cron="10 0 * * *",
    func="wallet.expire_credits",
    queue="settlement",
    id_prefix="expire-credits",
)

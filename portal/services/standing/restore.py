"""Restoration at payment time: what stopped for want of money runs again as soon as money
lands, not at the next hourly run.

``restore_now`` is called by the "standing.restore" job, which every payment asks for once it
commits (a top-up, a voucher redemption, a credit grant, an invoice paid by settlement, a
card, a checkout or offline: ``wallet.settlement_requests.request_restore``), and by the
"Pay to restore" action. It runs again a prepaid account's deployments put up for removal
when the funds cover them again (prepaid.py), and what the dunning of now settled invoices
suspended or put up for removal (``dunning.restore_user``)."""

from __future__ import annotations

from datetime import datetime

from ...extensions import db
from ...models import User, utcnow
from . import dunning, prepaid


def restore_now(user_id: int, now: datetime | None = None) -> list[str]:
    """Restore what the user's payments cover now, under the metering chunk's and the user's
    settlement locks. Returns the external ids restored. Flushes; the caller commits."""
    now = now or utcnow()
    user = db.session.get(User, user_id)
    if user is None:
        return []
    prepaid.lock(user)
    restored = prepaid.restore_user(user, now)
    restored += dunning.restore_user(user_id, now)
    db.session.flush()
    return restored

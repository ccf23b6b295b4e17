"""Settlement jobs: one user's unpaid invoices, and the daily sweep over everyone's."""
from __future__ import annotations

from portal.extensions import db
from portal.models import User
from portal.services import settlement

from .queues import enqueue, get_queue


def settle_user(user_id: int) -> dict:
    result = settlement.settle_user(db.session.get(User, user_id))
    db.session.commit()
    return {"paid": len(result.paid), "payments": result.payments}


def settle_due() -> dict:
    """The daily run: every user with an unpaid invoice gets a settlement job."""
    user_ids = settlement.users_with_unpaid()
    db.session.commit()
    if not get_queue("settlement").is_async:
        for user_id in user_ids:
            settle_user(user_id)
        return {"users": len(user_ids)}
    for user_id in user_ids:
        enqueue("settlement", "jobs.settlement.settle_user", user_id, job_id=f"settle:{user_id}")
    return {"users": len(user_ids)}

"""Settlement on request: new money arrived (a voucher, a top-up, a saved card), or invoices
were issued to a user who has some; the settlement job pays what it can after commit."""

from __future__ import annotations

from ...tasks.queues import enqueue_after_commit


def request_settlement(user_id: int) -> None:
    """Settle the user's invoices after this transaction commits."""
    enqueue_after_commit("settlement", "payments.settle_user", user_id, job_id=f"settle:{user_id}")

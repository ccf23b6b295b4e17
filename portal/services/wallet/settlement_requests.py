"""Settlement on request: new money arrived (a voucher, a top-up, a saved card), or invoices
were issued to a user who has some; the settlement job pays what it can after commit. And
restoration on request: what money arriving may run again."""

from __future__ import annotations

from ...tasks.queues import enqueue_after_commit


def request_settlement(user_id: int) -> None:
    """Settle the user's invoices after this transaction commits."""
    enqueue_after_commit("settlement", "payments.settle_user", user_id, job_id=f"settle:{user_id}")


def request_restore(user_id: int) -> None:
    """Money landed (a top-up, a voucher, a credit, an invoice paid): once this transaction
    commits, what the user's empty funds or unpaid invoices stopped runs again (the
    "standing.restore" job: ``portal.services.standing.restore.restore_now``). One job per
    payment, never merged with one already running (which may have read the balances
    before this money)."""
    enqueue_after_commit("settlement", "standing.restore", user_id)

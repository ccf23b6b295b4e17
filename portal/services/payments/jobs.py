"""Settlement jobs: one user's unpaid invoices, the daily sweep over everyone's, and the
gateway's webhook events (stored by the web request, processed here)."""

from __future__ import annotations

from ...extensions import db
from ...tasks.queues import enqueue_after_commit, get_queue
from ...tasks.registry import schedule, task
from . import card_charges, cards, inbox, settlement


@task("payments.settle_user")
def settle_user(user_id: int) -> dict[str, int]:
    """Wallets, then cards (settlement.settle commits as it goes)."""
    result = settlement.settle(user_id)
    return {
        "paid": len(result.paid),
        "payments": result.payments,
        "card_attempts": result.card_attempts,
        "failed": len(result.failed),
    }


@task("payments.recover_payments")
def recover_payments() -> dict[str, int]:
    """Card charges whose answer was never recorded, looked up at the gateway."""
    if not cards.cards_enabled():
        return {"resolved": 0}
    return {"resolved": card_charges.recover()}


@task("payments.settle_due")
def settle_due() -> dict[str, int]:
    """The daily run: every user with an unpaid invoice gets a settlement job."""
    recover_payments()
    user_ids = settlement.users_with_unpaid()
    db.session.commit()
    if not get_queue("settlement").is_async:
        for user_id in user_ids:
            settle_user(user_id)
        return {"users": len(user_ids)}
    for user_id in user_ids:
        enqueue_after_commit(
            "settlement", "payments.settle_user", user_id, job_id=f"settle:{user_id}"
        )
    db.session.commit()
    return {"users": len(user_ids)}


class WebhookFailed(Exception):
    """A webhook handler failed: the job fails (RQ keeps it, with Retry on the Jobs page);
    the inbox row stays unprocessed with the error."""


@task("payments.process_webhook")
def process_webhook(inbox_id: int) -> dict[str, int | str]:
    result = inbox.process_event(inbox_id)
    db.session.commit()
    if result.failed:
        raise WebhookFailed(f"webhook event {inbox_id}: {result.error}")
    return {"inbox_id": inbox_id, "outcome": result.outcome}


@task("payments.requeue_webhooks")
def requeue_webhooks() -> dict[str, int]:
    """Events still unprocessed after a few minutes (a failed handler, a lost enqueue)."""
    count = inbox.requeue_unprocessed()
    db.session.commit()
    return {"requeued": count}


@task("payments.detach_card")
def detach_card(gateway_id: str) -> dict[str, str]:
    """A removed card taken off the gateway's customer (after the removal committed)."""
    cards.detach(gateway_id)
    return {"detached": gateway_id}


schedule(
    "settle-invoices",
    cron="30 1 * * *",
    func="payments.settle_due",
    queue="settlement",
    id_prefix="settle",
    enabled=lambda config: config["BILLING"].enabled,
)
# Webhooks whose processing job was lost (a crash between commit and enqueue) go again.
schedule(
    "requeue-webhooks",
    cron="*/10 * * * *",
    func="payments.requeue_webhooks",
    queue="settlement",
    id_prefix="webhooks",
    enabled=lambda config: config["BILLING"].enabled,
)
# Card charges whose answer was lost (a timeout, a crash) are looked up at the gateway.
schedule(
    "recover-payments",
    cron="5-55/10 * * * *",
    func="payments.recover_payments",
    queue="settlement",
    id_prefix="recover",
    enabled=lambda config: config["BILLING"].enabled,
)

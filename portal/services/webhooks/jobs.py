"""Webhook jobs: the dispatcher (every minute) hands new events out and starts one sender job
per endpoint with deliveries due; a sender sends rounds until nothing is due, something
failed, or its minute is up."""

from __future__ import annotations

import time

from ...extensions import db
from ...models import WebhookEndpoint
from ...tasks.clock import database_now
from ...tasks.queues import enqueue
from ...tasks.registry import schedule, task
from . import delivery

SENDER_SECONDS = 50  # a sender stops starting rounds after this (the next minute's takes over)


@task("webhooks.dispatch")
def dispatch() -> dict[str, int]:
    handed_out = 0
    while True:
        count = delivery.fan_out(now=database_now())
        db.session.commit()
        handed_out += count
        if count < delivery.FAN_OUT_AT_ONCE:
            break
    endpoint_ids = delivery.endpoints_with_due(database_now())
    db.session.commit()
    for endpoint_id in endpoint_ids:
        # One sender per endpoint at a time (a job id waiting or running is not enqueued
        # again): each user's deliveries leave in order.
        enqueue("webhooks", "webhooks.deliver", endpoint_id, job_id=f"webhooks:{endpoint_id}")
    return {"events": handed_out, "endpoints": len(endpoint_ids)}


@task("webhooks.deliver")
def deliver(endpoint_id: int) -> dict[str, int]:
    totals = {"sent": 0, "succeeded": 0, "failed": 0, "given_up": 0}
    started = time.monotonic()
    endpoint = db.session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        return totals
    with delivery.Sender(endpoint.url, delivery.Policy.from_config()) as sender:
        while True:
            result = delivery.deliver_round(endpoint_id, now=database_now(), sender=sender)
            db.session.commit()
            for key in totals:
                totals[key] += getattr(result, key)
            if not result.sent or result.failed or result.disabled:
                break
            if time.monotonic() - started > SENDER_SECONDS:
                break
    return totals


schedule(
    "deliver-webhooks",
    cron="* * * * *",
    func="webhooks.dispatch",
    queue="webhooks",
    id_prefix="webhooks",
)

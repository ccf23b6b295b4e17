"""process_event: one dispatch per event, livemode filtered, failures kept for a retry."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import OutboundEmail, WebhookEvent, utcnow
from portal.services.payments import inbox
from portal.services.payments import jobs as settlement_jobs
from tests.support.webhooks import event_body


def stored(event_type="payment_intent.succeeded", *, livemode=False) -> int:
    payload = json.loads(event_body(event_type, livemode=livemode))
    row = WebhookEvent(
        event_id=payload["id"],
        type=event_type,
        livemode=livemode,
        payload=payload,
        received_at=utcnow(),
        attempts=0,
    )
    db.session.add(row)
    db.session.commit()
    return row.id


def test_each_event_reaches_its_handler_once(stripe_app, ctx, monkeypatch):
    calls = []
    monkeypatch.setitem(inbox.EVENT_HANDLERS, "payment_intent.succeeded", calls.append)
    inbox_id = stored()
    assert inbox.process_event(inbox_id).outcome == "handled"
    db.session.commit()
    assert inbox.process_event(inbox_id).outcome == "already"
    assert settlement_jobs.process_webhook(inbox_id) == {"inbox_id": inbox_id, "outcome": "already"}
    assert len(calls) == 1 and calls[0].type == "payment_intent.succeeded"


def test_an_event_of_the_other_mode_never_reaches_a_handler(stripe_app, ctx, monkeypatch):
    calls = []
    monkeypatch.setitem(inbox.EVENT_HANDLERS, "payment_intent.succeeded", calls.append)
    inbox_id = stored(livemode=True)
    result = inbox.process_event(inbox_id)  # our key is a test key
    db.session.commit()
    assert result.outcome == "ignored" and calls == []
    row = db.session.get(WebhookEvent, inbox_id)
    assert row.processed_at is not None and row.error == "livemode differs from ours"


def test_a_failing_handler_rolls_back_and_leaves_the_event_for_a_retry(
    stripe_app, ctx, monkeypatch
):
    def broken(event):
        db.session.add(
            OutboundEmail(
                to_addr="x@example.com", subject="half done", body_text="-", status="outbox"
            )
        )
        db.session.flush()
        raise RuntimeError("payment service unavailable")

    monkeypatch.setitem(inbox.EVENT_HANDLERS, "charge.refunded", broken)
    inbox_id = stored("charge.refunded")
    with pytest.raises(settlement_jobs.WebhookFailed, match="payment service unavailable"):
        settlement_jobs.process_webhook(inbox_id)
    db.session.remove()
    row = db.session.get(WebhookEvent, inbox_id)
    assert row.processed_at is None and row.attempts == 1
    assert row.error == "RuntimeError: payment service unavailable"
    assert db.session.scalars(select(OutboundEmail)).all() == []  # the half-done work is gone

    calls = []
    monkeypatch.setitem(inbox.EVENT_HANDLERS, "charge.refunded", calls.append)
    assert settlement_jobs.process_webhook(inbox_id)["outcome"] == "handled"
    db.session.remove()
    row = db.session.get(WebhookEvent, inbox_id)
    assert (row.outcome, row.attempts, row.error) == ("handled", 2, None) and len(calls) == 1


def test_unprocessed_events_are_requeued(stripe_app, ctx, monkeypatch):
    enqueued = []
    monkeypatch.setattr(
        inbox, "enqueue_after_commit", lambda *args, **kwargs: enqueued.append((args, kwargs))
    )
    old = stored()
    db.session.get(WebhookEvent, old).received_at = utcnow() - timedelta(hours=1)
    stored()  # too recent: its own job may still be on the way
    done = stored()
    db.session.get(WebhookEvent, done).received_at = utcnow() - timedelta(hours=1)
    db.session.get(WebhookEvent, done).processed_at = utcnow()
    db.session.commit()
    assert inbox.requeue_unprocessed() == 1
    [(args, kwargs)] = enqueued
    assert args[:2] == ("settlement", "payments.process_webhook") and args[2] == old
    assert kwargs["job_id"].startswith("webhook:evt_test_")


def test_the_default_handlers_cover_the_events_we_subscribe_to():
    assert set(inbox.EVENT_HANDLERS) >= {
        "checkout.session.completed",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "setup_intent.succeeded",
        "charge.refunded",
        "charge.dispute.created",
    }

"""POST /api/plugins/billing/webhook: verified, stored once, processed by a job, 200 fast."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import WebhookEvent
from portal.services.payments import inbox
from tests.support.webhooks import WEBHOOK_SECRET, event_body, sign


def rows(app) -> list[WebhookEvent]:
    with app.app_context():
        found = db.session.scalars(select(WebhookEvent).order_by(WebhookEvent.id)).all()
        db.session.expunge_all()
        return found


@pytest.fixture
def seen(monkeypatch):
    calls = []
    monkeypatch.setitem(
        inbox.EVENT_HANDLERS,
        "payment_intent.succeeded",
        lambda event: calls.append((event.id, event.type, event.object["id"])),
    )
    return calls


def test_a_signed_event_is_stored_once_and_processed_once(stripe_app, deliver, seen):
    body = event_body(event_id="evt_once")
    first = deliver(body)
    assert first.status_code == 200 and first.json == {"received": True, "duplicate": False}
    for _ in range(3):  # Stripe redelivers; each is a new signature over the same body
        again = deliver(body)
        assert again.status_code == 200 and again.json["duplicate"] is True

    [row] = rows(stripe_app)
    assert (row.event_id, row.type, row.livemode) == ("evt_once", "payment_intent.succeeded", False)
    assert row.payload == json.loads(body)
    assert row.processed_at is not None and row.outcome == "handled" and row.attempts == 1
    assert seen == [("evt_once", "payment_intent.succeeded", row.payload["data"]["object"]["id"])]


@pytest.mark.parametrize(
    "signature",
    [
        None,  # no header
        "t=1,v1=" + "0" * 64,  # garbage
        sign(b"another body"),  # signature of something else
        sign(event_body(), secret="whsec_someone_else"),  # another endpoint's secret
        "sign-stale",  # older than the tolerance
    ],
)
def test_a_bad_signature_is_400_and_stores_nothing(stripe_app, deliver, seen, signature):
    body = event_body()
    if signature == "sign-stale":
        signature = sign(body, timestamp=1_000_000_000)
    answer = deliver(body, signature=signature)
    assert answer.status_code == 400
    assert answer.json["error"]["code"] == "bad_signature"
    assert rows(stripe_app) == [] and seen == []


def test_a_body_that_is_not_an_event_is_refused(stripe_app, deliver):
    body = b'{"hello": "world"}'
    assert deliver(body).status_code == 400
    assert deliver(b"\xff\xfe not json").status_code == 400
    assert rows(stripe_app) == []


def test_an_event_from_the_other_mode_is_acknowledged_and_ignored(stripe_app, deliver, seen):
    answer = deliver(event_body(livemode=True))
    assert answer.status_code == 200 and answer.json == {"received": False, "ignored": "livemode"}
    assert rows(stripe_app) == [] and seen == []


def test_no_session_no_token_no_csrf_needed(stripe_app, deliver):
    # The signature is the authentication: a plain POST (no cookie, token or CSRF field).
    assert deliver(event_body("charge.refunded")).status_code == 200
    assert [r.outcome for r in rows(stripe_app)] == ["handled"]


def test_a_type_without_a_handler_is_stored_and_marked_unhandled(stripe_app, deliver):
    assert deliver(event_body("customer.created", obj={"id": "cus_1"})).status_code == 200
    [row] = rows(stripe_app)
    assert row.outcome == "unhandled" and row.processed_at is not None


def test_without_stripe_configured_the_endpoint_says_so(app):
    body = event_body()
    answer = app.test_client().post(
        "/api/plugins/billing/webhook", data=body, headers={"Stripe-Signature": sign(body)}
    )
    assert answer.status_code == 503
    assert rows(app) == []


def test_the_stand_ins_own_delivery_is_accepted(stripe_app, deliver, seen):
    """A payload and header exactly as the stand-in signs them (same scheme as Stripe)."""
    body = json.dumps(
        json.loads(event_body(event_id="evt_standin")), indent=2, sort_keys=True
    ).encode()
    stamp = int(time.time())
    digest = hmac.new(
        WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert deliver(body, signature=f"t={stamp},v1={digest}").status_code == 200
    assert [e[0] for e in seen] == ["evt_standin"]

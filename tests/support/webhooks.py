"""The webhook endpoint's app: a test-mode key and a webhook secret, and signed payloads."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time

import pytest

WEBHOOK_SECRET = "whsec_webhook_tests_0123456789"
_ids = itertools.count(1)


def sign(body: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """A Stripe-Signature header (t=...,v1=HMAC-SHA256 of "t.body"), as Stripe signs."""
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), b"%d." % stamp + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def event_body(
    event_type: str = "payment_intent.succeeded",
    *,
    livemode: bool = False,
    event_id: str | None = None,
    obj: dict | None = None,
) -> bytes:
    n = next(_ids)
    return json.dumps(
        {
            "id": event_id or f"evt_test_{n}",
            "object": "event",
            "type": event_type,
            "livemode": livemode,
            "created": int(time.time()),
            "api_version": "2026-10-28",
            "data": {
                "object": obj
                or {
                    "id": f"pi_test_{n}",
                    "object": "payment_intent",
                    "amount": 1000,
                    "currency": "usd",
                    "status": "succeeded",
                }
            },
        }
    ).encode()


@pytest.fixture
def stripe_app(app):
    """The shared test app with Stripe configured (test mode) for this test only."""
    saved = {k: app.config.get(k) for k in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET")}
    app.config.update(STRIPE_SECRET_KEY="sk_test_webhooks", STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    app.extensions.pop("portal.gateway", None)
    yield app
    app.config.update(saved)
    app.extensions.pop("portal.gateway", None)


@pytest.fixture
def deliver(stripe_app):
    client = stripe_app.test_client()

    def post(body: bytes, signature: str | None = "sign", **headers):
        if signature == "sign":
            signature = sign(body)
        if signature is not None:
            headers["Stripe-Signature"] = signature
        return client.post(
            "/api/plugins/billing/webhook",
            data=body,
            headers=headers,
            content_type="application/json",
        )

    return post

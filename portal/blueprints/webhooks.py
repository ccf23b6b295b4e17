"""POST /api/plugins/billing/webhook: the gateway's events in.

No session and no bearer token: the signature over the raw body is the authentication
(checked through the gateway), so the blueprint is CSRF-exempt. A verified event is stored
once and processed by a job; the answer is 200 at once. A bad signature is 400 and stores
nothing; an event of the other mode (live vs test) is acknowledged and ignored. A body over
WEBHOOK_MAX_CONTENT_LENGTH is 413 and is not read (portal/request_guard.py).
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify, request

from ..extensions import csrf
from ..gateways import GatewayNotConfigured, LivemodeMismatch, SignatureError, get_gateway
from ..request_guard import body_limit
from ..services.payments import inbox
from ..web import json_error

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/api/plugins/billing")
csrf.exempt(bp)


@bp.post("/webhook")
@body_limit("WEBHOOK_MAX_CONTENT_LENGTH")  # a bigger body, chunked or not, is 413 unread
def receive():
    try:
        received = inbox.record_event(
            get_gateway(), request.get_data(cache=False), request.headers.get("Stripe-Signature")
        )
    except SignatureError as exc:
        log.warning("webhook refused: %s", exc)
        return json_error(400, "bad_signature", "signature verification failed")
    except LivemodeMismatch as exc:
        log.warning("webhook ignored: %s", exc)
        return jsonify({"received": False, "ignored": "livemode"}), 200
    except GatewayNotConfigured:
        return json_error(503, "not_configured", "payments are not configured")
    return jsonify({"received": True, "duplicate": not received.created}), 200

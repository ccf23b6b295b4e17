"""Operators' endpoints: /healthz (public: is the portal able to serve) and /metrics
(Prometheus; an admin API token, the METRICS_TOKEN, or from this host when METRICS_LOCAL)."""

from __future__ import annotations

import hmac
import ipaddress

from flask import Blueprint, Response, current_app, jsonify, request

from ..extensions import csrf
from ..models import TokenScope
from ..services import accounts
from ..services.admin import signals

bp = Blueprint("ops", __name__)
csrf.exempt(bp)


@bp.get("/healthz")
def healthz():
    ok, checks = signals.health()
    response = jsonify({"status": "ok" if ok else "unavailable", **checks})
    response.status_code = 200 if ok else 503
    response.headers["Cache-Control"] = "no-store"
    return response


def _metrics_allowed() -> bool:
    header = request.headers.get("Authorization", "")
    bearer = header[7:].strip() if header.lower().startswith("bearer ") else ""
    expected = current_app.config.get("METRICS_TOKEN") or ""
    if bearer and expected and hmac.compare_digest(bearer.encode(), expected.encode()):
        return True
    if bearer:
        token = accounts.token_for(bearer)
        if token is not None and token.scope == TokenScope.ADMIN:
            return True
    if current_app.config.get("METRICS_LOCAL") and request.remote_addr:
        try:
            return ipaddress.ip_address(request.remote_addr).is_loopback
        except ValueError:
            return False
    return False


@bp.get("/metrics")
def metrics():
    if not _metrics_allowed():
        return Response(
            "metrics need an admin API token or the METRICS_TOKEN\n",
            status=401,
            mimetype="text/plain",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Response(
        signals.metrics_text(),
        content_type="text/plain; version=0.0.4; charset=utf-8",
        headers={"Cache-Control": "no-store"},
    )

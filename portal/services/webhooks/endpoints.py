"""The platform's webhook endpoints: registered, changed, enabled and disabled by admins; each
with a signing secret shown once (at creation and at each rotation). Every change is in the
audit log."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import func, select

from ...errors import NotFound, ValidationFailed
from ...extensions import db
from ...models import User, WebhookEndpoint
from .. import audit
from ..events.catalog import NAMES
from . import signing

PREVIOUS_SECRET_VALID = timedelta(hours=24)
MAX_URL = 2000
MAX_DESCRIPTION = 200


@dataclass(frozen=True)
class EndpointInput:
    url: str
    event_types: Sequence[str] | None  # None: every event
    description: str = ""
    enabled: bool = True


def _check(data: EndpointInput) -> tuple[str, list[str] | None]:
    url = data.url.strip()
    problems: dict[str, str] = {}
    parts = urlsplit(url)
    if len(url) > MAX_URL:
        problems["url"] = f"at most {MAX_URL} characters"
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        problems["url"] = "must be an http:// or https:// URL with a host"
    elif parts.username or parts.password:
        problems["url"] = "must not hold a user name or password"
    elif any(c.isspace() for c in url):
        problems["url"] = "must not contain spaces"
    else:
        try:
            parts.port  # noqa: B018 (a bad port raises)
        except ValueError:
            problems["url"] = "has a bad port"
    if len(data.description) > MAX_DESCRIPTION:
        problems["description"] = f"at most {MAX_DESCRIPTION} characters"
    types = None
    if data.event_types is not None:
        types = sorted(set(data.event_types))
        unknown = [t for t in types if t not in NAMES]
        if unknown:
            problems["event_types"] = f"unknown event type {unknown[0]!r}"
        elif not types:
            problems["event_types"] = "choose at least one event type, or all"
    if problems:
        raise ValidationFailed(next(iter(problems.values())), fields=problems)
    return url, types


def _snapshot(endpoint: WebhookEndpoint) -> dict[str, object]:
    """What the audit log keeps of an endpoint (never its secret)."""
    return {
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
    }


def create_endpoint(
    data: EndpointInput, *, actor: User | None, now: datetime
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (shown to the admin this once)."""
    url, types = _check(data)
    secret = signing.new_secret()
    endpoint = WebhookEndpoint(
        url=url,
        description=data.description.strip(),
        event_types=types,
        enabled=data.enabled,
        disabled_reason="" if data.enabled else "disabled by an admin",
        secret=secret,
        created_at=now,
        updated_at=now,
    )
    db.session.add(endpoint)
    db.session.flush()
    audit.record(
        "webhook_endpoint.created",
        "webhook_endpoint",
        endpoint.id,
        actor=actor,
        after=_snapshot(endpoint),
    )
    return endpoint, secret


def update_endpoint(
    endpoint: WebhookEndpoint, data: EndpointInput, *, actor: User | None, now: datetime
) -> None:
    url, types = _check(data)
    before = _snapshot(endpoint)
    endpoint.url, endpoint.event_types = url, types
    endpoint.description = data.description.strip()
    _set_enabled(endpoint, data.enabled, reason="disabled by an admin")
    endpoint.updated_at = now
    after = _snapshot(endpoint)
    if after != before:
        audit.record(
            "webhook_endpoint.updated",
            "webhook_endpoint",
            endpoint.id,
            actor=actor,
            before=before,
            after=after,
        )


def _set_enabled(endpoint: WebhookEndpoint, enabled: bool, *, reason: str) -> None:
    if enabled and not endpoint.enabled:
        endpoint.enabled, endpoint.disabled_reason, endpoint.failing_since = True, "", None
    elif not enabled and endpoint.enabled:
        endpoint.enabled, endpoint.disabled_reason = False, reason


def set_enabled(
    endpoint: WebhookEndpoint, enabled: bool, *, actor: User | None, now: datetime
) -> None:
    """Enable (its pending deliveries go out again) or disable (nothing is sent to it)."""
    if endpoint.enabled == enabled:
        return
    before = _snapshot(endpoint)
    _set_enabled(endpoint, enabled, reason="disabled by an admin")
    endpoint.updated_at = now
    audit.record(
        "webhook_endpoint.enabled" if enabled else "webhook_endpoint.disabled",
        "webhook_endpoint",
        endpoint.id,
        actor=actor,
        before=before,
        after=_snapshot(endpoint),
    )


def rotate_secret(endpoint: WebhookEndpoint, *, actor: User | None, now: datetime) -> str:
    """A new secret; the current one keeps signing (as a second v1) for 24 hours."""
    secret = signing.new_secret()
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_expires_at = now + PREVIOUS_SECRET_VALID
    endpoint.secret = secret
    endpoint.updated_at = now
    audit.record(
        "webhook_endpoint.secret_rotated",
        "webhook_endpoint",
        endpoint.id,
        actor=actor,
        after={"previous_secret_valid_until": endpoint.previous_expires_at.isoformat()},
    )
    return secret


def signing_keys(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    keys = [endpoint.secret]
    if (
        endpoint.previous_secret
        and endpoint.previous_expires_at
        and endpoint.previous_expires_at > now
    ):
        keys.append(endpoint.previous_secret)
    return keys


def get_endpoint(endpoint_id: int) -> WebhookEndpoint:
    endpoint = db.session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return endpoint


def list_endpoints() -> list[WebhookEndpoint]:
    return list(db.session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id)))


def count_enabled() -> int:
    return db.session.scalar(select(func.count()).where(WebhookEndpoint.enabled.is_(True))) or 0


def takes(endpoint: WebhookEndpoint, name: str) -> bool:
    return endpoint.event_types is None or name in endpoint.event_types

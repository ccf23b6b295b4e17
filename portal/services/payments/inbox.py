"""The webhook inbox: store each verified gateway event once, then process it in a job.

``record_event`` (the web request) verifies through the gateway and inserts the event,
UNIQUE by its id, so a replay stores nothing new; it asks for processing after commit.
``process_event`` (the job) dispatches through ``EVENT_HANDLERS`` and marks the row
processed in the same transaction as the handler's changes: a failed handler's transaction
is rolled back and the row is left unprocessed with its error, to be retried (a refund that
arrives before its payment waits this way: ``gateway_events.NotYet``); a processed row is
never dispatched again.

Handlers receive a plain ``GatewayEvent`` and must act only on legal transitions of our own
rows, so that duplicates and out-of-order deliveries are harmless (the payment services'
concern). Services flush; the caller commits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ...errors import NotFound
from ...extensions import db
from ...gateways import get_gateway
from ...gateways.base import GatewayEvent, PaymentGateway
from ...models import WebhookEvent, WebhookOutcome, utcnow
from ...tasks.queues import enqueue_after_commit
from . import gateway_events

log = logging.getLogger(__name__)

Handler = Callable[[GatewayEvent], None]


# event type -> handler (payment_events). A type without one is stored and marked
# "unhandled".
EVENT_HANDLERS: dict[str, Handler] = dict(gateway_events.HANDLERS)


@dataclass(frozen=True)
class Received:
    inbox_id: int
    event_id: str
    created: bool  # False: a replay of an event already stored


def record_event(gateway: PaymentGateway, payload: bytes, signature: str | None) -> Received:
    """Verify (SignatureError, LivemodeMismatch propagate) and store the event once.

    A new event, or a stored one not processed yet (a redelivery after our enqueue failed),
    is enqueued for processing after commit; the job id makes repeats collapse.
    """
    event = gateway.construct_event(payload, signature)
    existing = _by_event_id(event.id)
    created = False
    if existing is None:
        # The verified body itself; floats (none carry money) keep their exact text.
        row = WebhookEvent(
            event_id=event.id,
            type=event.type,
            livemode=event.livemode,
            payload=json.loads(payload.decode("utf-8"), parse_float=str),
            received_at=utcnow(),
            attempts=0,
        )
        try:
            with db.session.begin_nested():
                db.session.add(row)
                db.session.flush()
            existing, created = row, True
        except IntegrityError:  # the same event arrived twice at once
            existing = db.session.scalars(
                select(WebhookEvent).where(WebhookEvent.event_id == event.id)
            ).one()
    if existing.processed_at is None:
        enqueue_after_commit(
            "settlement",
            "payments.process_webhook",
            existing.id,
            job_id=f"webhook:{event.id}",
        )
    return Received(existing.id, event.id, created)


def _by_event_id(event_id: str) -> WebhookEvent | None:
    return db.session.scalar(select(WebhookEvent).where(WebhookEvent.event_id == event_id))


@dataclass(frozen=True)
class Processed:
    inbox_id: int
    outcome: str  # handled, unhandled, ignored, already, failed
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"


def process_event(inbox_id: int, *, livemode: bool | None = None) -> Processed:
    """Dispatch one stored event to its handler, once.

    ``livemode`` is our key's mode (from the gateway when not given): an event of the other
    mode is marked ignored without reaching a handler. A failing handler rolls the session's
    transaction back, so call this with nothing else pending (the job's own transaction).
    """
    row = _lock(inbox_id)
    if row is None:
        raise NotFound(f"no webhook event {inbox_id}")
    if row.processed_at is not None:
        return Processed(row.id, "already")
    row.attempts += 1
    if livemode is None:
        livemode = get_gateway().livemode
    if row.livemode != livemode:
        log.warning(
            "webhook %s (%s) has livemode=%s, ours is %s: ignored",
            row.event_id,
            row.type,
            row.livemode,
            livemode,
        )
        return _done(row, WebhookOutcome.IGNORED, error="livemode differs from ours")
    handler = EVENT_HANDLERS.get(row.type)
    if handler is None:
        return _done(row, WebhookOutcome.UNHANDLED)
    event = GatewayEvent.from_payload(row.payload)
    attempts = row.attempts
    try:
        handler(event)
        db.session.flush()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        if isinstance(exc, gateway_events.NotYet):
            log.info(
                "webhook %s (%s) waits (attempt %d): %s", row.event_id, row.type, attempts, exc
            )
        else:
            log.exception("webhook %s (%s) failed (attempt %d)", row.event_id, row.type, attempts)
        # The whole transaction goes, not a savepoint: the handler's changes and the jobs it
        # asked for (they run after the outermost commit only). The row keeps the error.
        db.session.rollback()
        row = _lock(inbox_id)
        if row is None or row.processed_at is not None:  # done meanwhile by another worker
            return Processed(inbox_id, "already")
        row.attempts += 1
        row.error = error
        db.session.flush()
        return Processed(row.id, "failed", error)
    return _done(row, WebhookOutcome.HANDLED)


def _lock(inbox_id: int) -> WebhookEvent | None:
    return db.session.scalar(
        select(WebhookEvent)
        .where(WebhookEvent.id == inbox_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _done(row: WebhookEvent, outcome: WebhookOutcome, *, error: str | None = None) -> Processed:
    row.processed_at = utcnow()
    row.outcome = outcome.value
    row.error = error
    db.session.flush()
    return Processed(row.id, outcome.value, error)


def requeue_unprocessed(
    *, older_than: timedelta = timedelta(minutes=5), now: datetime | None = None, limit: int = 1000
) -> int:
    """Enqueue (after commit) every stored event still unprocessed after ``older_than``:
    a failed handler, or an enqueue lost with Redis. Returns how many."""
    cutoff = (now or utcnow()) - older_than
    rows = db.session.execute(
        select(WebhookEvent.id, WebhookEvent.event_id)
        .where(WebhookEvent.processed_at.is_(None), WebhookEvent.received_at < cutoff)
        .order_by(WebhookEvent.id)
        .limit(limit)
    ).all()
    for inbox_id, event_id in rows:
        enqueue_after_commit(
            "settlement", "payments.process_webhook", inbox_id, job_id=f"webhook:{event_id}"
        )
    return len(rows)

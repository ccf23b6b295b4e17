"""The event outbox: facts for the platform, recorded in the transaction that made them
true, delivered after commit. The same fact (name, subject) is recorded once. Only names in
the events catalogue (catalog.py) may be recorded.

Outgoing webhooks (portal.services.webhooks) deliver them; ``page_after`` serves the pull API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select

from ...db import bulk_insert, dialect_insert
from ...extensions import db
from ...models import Event, utcnow
from .catalog import API_VERSION, NAMES, check_name

__all__ = ["API_VERSION", "NAMES", "envelope", "page_after", "record", "record_many"]


def record(name: str, subject: str, payload: dict[str, object], user_id: int | None = None) -> None:
    record_many([(name, subject, payload, user_id)])


def record_many(events: Sequence[tuple[str, str, dict[str, object], int | None]]) -> None:
    if not events:
        return
    for name, *_ in events:
        check_name(name)
    now = utcnow()
    db.session.execute(
        dialect_insert(Event.__table__)
        .values(
            [
                {
                    "name": n,
                    "subject": s,
                    "payload": p,
                    "user_id": u,
                    "created_at": now,
                    "attempts": 0,
                }
                for n, s, p, u in events
            ]
        )
        .on_conflict_do_nothing()
    )


def record_new_many(events: Sequence[tuple[str, str, dict[str, object], int | None]]) -> None:
    """Facts about rows this transaction created (a new invoice's id in the subject): no
    earlier record of them can exist, so they are written in bulk without the conflict
    check (a duplicate would still fail on the unique index)."""
    for name, *_ in events:
        check_name(name)
    now = utcnow()
    bulk_insert(
        Event.__table__,
        ("name", "subject", "payload", "user_id", "created_at", "attempts"),
        [(n, s, p, u, now, 0) for n, s, p, u in events],
    )


def envelope(event_id: int, name: str, created_at: datetime, payload: dict) -> dict[str, object]:
    """What the platform receives for an event (pushed or pulled)."""
    return {
        "id": event_id,
        "type": name,
        "created": created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "api_version": API_VERSION,
        "data": payload,
    }


def page_after(after: int, *, types: Sequence[str] = (), limit: int = 100) -> list[Event]:
    """Published events (handed out to the webhooks) with a position above ``after``, in
    that order (of ``types`` only, if given). Paging by position, not id, a reader never
    skips an event whose transaction committed after a later id's."""
    query = select(Event).where(Event.position > after)
    if types:
        query = query.where(Event.name.in_(list(types)))
    return list(db.session.scalars(query.order_by(Event.position).limit(limit)))

"""The event outbox: facts for the platform, recorded in the transaction that made them
true, delivered after commit. The same fact (name, subject) is recorded once."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from ..db import bulk_insert, dialect_insert
from ..extensions import db
from ..models import Event, utcnow


def record(name: str, subject: str, payload: dict[str, object], user_id: int | None = None) -> None:
    record_many([(name, subject, payload, user_id)])


def record_many(events: Sequence[tuple[str, str, dict[str, object], int | None]]) -> None:
    if not events:
        return
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
    now = utcnow()
    bulk_insert(
        Event.__table__,
        ("name", "subject", "payload", "user_id", "created_at", "attempts"),
        [(n, s, p, u, now, 0) for n, s, p, u in events],
    )


def pending(limit: int = 100) -> list[Event]:
    return list(
        db.session.scalars(
            select(Event).where(Event.delivered_at.is_(None)).order_by(Event.id).limit(limit)
        )
    )

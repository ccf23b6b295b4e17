"""Every event a test made the portal record is checked against the events catalogue (its
name and its payload's schema) when the test ends."""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import select

from portal.extensions import db
from portal.models import Event
from portal.services.events import catalog


def catalogue_problems() -> list[str]:
    problems = []
    for event_id, name, payload, user_id in db.session.execute(
        select(Event.id, Event.name, Event.payload, Event.user_id).order_by(Event.id)
    ):
        try:
            catalog.validate(name, payload)
        except (catalog.UnknownEvent, ValidationError) as exc:
            problems.append(f"event {event_id} {name}: {exc}")
            continue
        if payload.get("user_id") != user_id:
            problems.append(f"event {event_id} {name}: data.user_id is not the event's user")
    return problems

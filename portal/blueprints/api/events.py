"""The events pull API: the same events the webhooks push, paged by a cursor, for platforms
that poll."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from ...models import TokenScope
from ...services import events
from ...services.events.catalog import EVENT_TYPES, NAMES
from . import bp
from .fields import QueryModel, QueryWhole, check_text
from .models import Out
from .spec import operation

MAX_CURSOR = 2**63 - 1  # the largest id a 64-bit key holds
MAX_LIMIT = 1000
TYPES_TEXT = re.compile(r"[a-z0-9_.]+(,[a-z0-9_.]+)*")


def _types(value: Any) -> tuple[str, ...]:
    if not isinstance(value, str):
        raise PydanticCustomError("invalid", "must be comma-separated event names")
    check_text(value)
    value = value.strip()
    if not value:
        return ()
    if len(value) > 2000 or not TYPES_TEXT.fullmatch(value):
        raise PydanticCustomError("invalid", "must be comma-separated event names")
    names = tuple(dict.fromkeys(value.split(",")))
    for name in names:
        if name not in EVENT_TYPES:
            raise PydanticCustomError("invalid", f"{name!r} is not an event name")
    return names


EventTypes = Annotated[
    tuple[str, ...],
    PlainValidator(_types),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 2000,
            "pattern": "^([a-z0-9_.]+(,[a-z0-9_.]+)*)?$",
            "description": "only these event names, comma-separated: " + ", ".join(NAMES),
        }
    ),
]


class EventsQuery(QueryModel):
    after: Annotated[
        int,
        QueryWhole(
            0,
            MAX_CURSOR,
            description="the cursor: next_after of the previous page (0: from the first)",
        ),
    ] = 0
    types: EventTypes = ()
    limit: Annotated[int, QueryWhole(1, MAX_LIMIT, description="at most this many events")] = 100


class EventOut(Out):
    id: int = Field(description="the event's id, also the cursor")
    type: str = Field(description="the event's name (see the webhooks section for its data)")
    created: str = Field(description="ISO 8601 UTC: when the event was recorded")
    api_version: str
    data: dict[str, Any] = Field(description="the event's data, as in the webhooks section")


class EventsPage(Out):
    items: list[EventOut]
    next_after: int = Field(description="the cursor: pass as after= for the next page")
    has_more: bool = Field(description="whether more events follow now")


@bp.get("/events")
@operation(
    summary="The events, in order, from a cursor",
    tag="Events",
    scopes=(TokenScope.PLATFORM, TokenScope.ADMIN),
    query=EventsQuery,
    responses={200: EventsPage},
)
def list_events(query: EventsQuery):
    """The events recorded for the platform, in the order they were published (oldest
    first), after the cursor `after`: the same envelopes the webhooks POST. Page on with
    `after=next_after` while `has_more`. An event is published by the dispatcher within a
    minute of its transaction's commit; a page never skips one that committed late."""
    rows = events.page_after(query.after, types=query.types, limit=query.limit + 1)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    items = [
        EventOut.model_validate(events.envelope(r.id, r.name, r.created_at, r.payload))
        for r in rows
    ]
    cursor = (rows[-1].position or query.after) if rows else query.after
    return EventsPage(items=items, next_after=cursor, has_more=more)

"""One clock: the database server's. Leases, heartbeats, the schedule's slots and login
sessions' ages are read against it, so machines whose clocks disagree still agree on what time it is. (SQLite runs
inside the process: its clock is the process's.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Interval, bindparam, func, literal, text

from ..extensions import db
from ..models import utcnow
from ..models.types import UTCDateTime

# A scheduler whose own clock differs from the database's by more than this does not lead.
MAX_SKEW = timedelta(minutes=1)


def database_now() -> datetime:
    """The database server's current time (not the transaction's start), aware UTC. On a
    connection of its own, so no transaction is left open while a caller waits."""
    if db.engine.dialect.name != "postgresql":
        return utcnow()
    with db.engine.connect() as connection:
        value = connection.scalar(text("SELECT clock_timestamp()"))
    return value.astimezone(UTC)


def database_now_sql(minus: timedelta = timedelta(0)) -> ColumnElement[datetime]:
    """The database server's time less ``minus``, inside a statement (no round trip of its
    own): on PostgreSQL now() (the transaction's start); on SQLite this process's time."""
    if db.engine.dialect.name != "postgresql":
        return literal(utcnow() - minus, UTCDateTime)
    return func.now(type_=UTCDateTime) - literal(minus, Interval())


def database_since_sql(postgresql: bool) -> ColumnElement[datetime]:
    """``database_now_sql(minus=...)`` for a statement built once: the amount is a bound
    parameter, given by ``database_since_params``."""
    if not postgresql:
        return bindparam("clock_since", type_=UTCDateTime)
    return func.now(type_=UTCDateTime) - bindparam("clock_minus", type_=Interval())


def database_since_params(minus: timedelta) -> dict[str, object]:
    """The parameters of ``database_since_sql`` for ``minus``."""
    if db.engine.dialect.name != "postgresql":
        return {"clock_since": utcnow() - minus}
    return {"clock_minus": minus}

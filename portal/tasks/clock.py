"""One clock: the database server's. Leases, heartbeats and the schedule's slots are read
against it, so machines whose clocks disagree still agree on what time it is. (SQLite runs
inside the process: its clock is the process's.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from ..extensions import db
from ..models import utcnow

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

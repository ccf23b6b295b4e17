"""Usage rollups written by hand (a test's shortcut past metering)."""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select

from portal.extensions import db
from portal.models import UsageDaily, UsageTotal, User
from portal.services.metering import rollups, totals


def add_rollups(rows: list[UsageDaily]) -> None:
    """Add rollup rows and total them by day, chunk and currency as metering would."""
    db.session.add_all(rows)
    db.session.flush()
    d = UsageDaily
    chunk = d.user_id // rollups.chunk_size()
    db.session.execute(delete(UsageTotal))
    db.session.execute(
        insert(UsageTotal).from_select(
            ["day", "chunk", "currency", *totals.COSTS],
            select(d.day, chunk, User.currency, *(func.sum(getattr(d, c)) for c in totals.COSTS))
            .join(User, User.id == d.user_id)
            .group_by(d.day, chunk, User.currency),
        )
    )

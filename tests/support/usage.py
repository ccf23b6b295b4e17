"""Usage rollups written by hand (a test's shortcut past metering)."""

from __future__ import annotations

from portal.extensions import db
from portal.models import UsageDaily
from portal.services.metering import rollups, totals


def add_rollups(rows: list[UsageDaily]) -> None:
    """Add rollup rows, and their totals as metering keeps them."""
    db.session.add_all(rows)
    db.session.flush()
    totals.recount(rollups.chunk_size())

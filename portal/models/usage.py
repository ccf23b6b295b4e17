"""Usage rollups that metering maintains and invoicing reads.

One row per deployment and UTC day. For each resource it holds the quantity and the exact
cost numerator (quantity times rate, integers), so nothing is rounded before the invoice
line:
- cpu_ms: milli-core-seconds; cpu_cost / 3_600_000 = micro-units (rate per core-hour)
- memory_ms: milli-GB-seconds; memory_cost / 3_600_000 = micro-units (rate per GB-hour)
- storage_ms: milli-GB-seconds; storage_cost / (1000 * seconds in the day's month) = micro-units
  (rate per GB-month, so a whole month costs the rate whatever its length)
- instance_s, ip_s: seconds; *_cost / 3600 = micro-units (rates per hour)
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Model
from .types import UTCDateTime

USAGE_COLUMNS = (
    "cpu_ms",
    "cpu_cost",
    "memory_ms",
    "memory_cost",
    "storage_ms",
    "storage_cost",
    "instance_s",
    "instance_cost",
    "ip_s",
    "ip_cost",
)


class UsageColumns:
    """The quantities and exact cost numerators of USAGE_COLUMNS (rollups and adjustments)."""

    cpu_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    cpu_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    storage_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    storage_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    instance_s: Mapped[int] = mapped_column(BigInteger, default=0)
    instance_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    ip_s: Mapped[int] = mapped_column(BigInteger, default=0)
    ip_cost: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageDaily(UsageColumns, Model):
    """Derived data, written only by metering from intervals (whose foreign keys hold), so
    it carries no foreign keys itself: checking two per row would double metering's cost.
    On PostgreSQL partitioned by month of ``day`` (migration 0021; portal/services/retention)."""

    __tablename__ = "usage_daily"
    __table_args__ = (
        PrimaryKeyConstraint("deployment_id", "day"),
        Index("ix_usage_daily_user_id_day", "user_id", "day"),
        # Admin › Usage reports: rows in their shown order (migration 0022).
        Index("ix_usage_daily_day_user_id_deployment_id", "day", "user_id", "deployment_id"),
        {"postgresql_partition_by": "RANGE (day)"},
    )

    deployment_id: Mapped[int] = mapped_column(BigInteger)
    day: Mapped[date] = mapped_column(Date)
    user_id: Mapped[int] = mapped_column(BigInteger)


# A chunk-day's sum of many rollups may pass a BIGINT on PostgreSQL; SQLite's integers
# are 64-bit whatever the type says, as its sums of the rollups are.
_TOTAL = BigInteger().with_variant(Numeric(38, 0), "postgresql")


class UsageTotal(Model):
    """The rollups' costs summed by day, chunk of users and currency, kept by the same
    statements that write the rollups (portal/services/metering/totals.py), so reading a
    whole period for every account (the admin dashboard's revenue) is a few hundred rows,
    not one per deployment and day. Chunk only spreads the rows: metering a chunk updates
    its own rows under the chunk's mark lock, never a row another worker's chunk updates.
    `flask billing usage-audit` checks them against the rollups."""

    __tablename__ = "usage_totals"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    chunk: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    cpu_cost: Mapped[int] = mapped_column(_TOTAL, default=0)
    memory_cost: Mapped[int] = mapped_column(_TOTAL, default=0)
    storage_cost: Mapped[int] = mapped_column(_TOTAL, default=0)
    instance_cost: Mapped[int] = mapped_column(_TOTAL, default=0)
    ip_cost: Mapped[int] = mapped_column(_TOTAL, default=0)


class RunningCost(Model):
    """What the open deployment intervals cost per hour, summed by chunk of users and
    currency: each column the sum of an open interval's quantity times its rate (as
    ``DeploymentInterval``: cpu_milli * cpu_rate_micros, ...). Kept by the statement that
    opens or closes an interval (portal/services/metering/deployments.py), under the chunk's
    mark lock, so the admin dashboard's projection reads a few rows, not every running
    deployment. `flask billing usage-audit` checks them against the open intervals."""

    __tablename__ = "running_costs"

    chunk: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    cpu: Mapped[int] = mapped_column(_TOTAL, default=0)
    memory: Mapped[int] = mapped_column(_TOTAL, default=0)
    storage: Mapped[int] = mapped_column(_TOTAL, default=0)
    instance: Mapped[int] = mapped_column(_TOTAL, default=0)
    ip: Mapped[int] = mapped_column(_TOTAL, default=0)


class MeterMark(Model):
    """How far the deployments of one chunk of users are metered. A metering run claims
    [metered_through, upto) by a conditional UPDATE of this row, so two runs can never both
    count an hour; changes that reach back before the mark adjust the rollups themselves."""

    __tablename__ = "meter_marks"

    chunk: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    metered_through: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ArchivedYear(Model):
    """A closed year whose rollups and ledger entries were written to archive files and
    removed (`flask billing archive`). Archiving goes oldest year first, so every row of
    usage_daily and ledger_entries before the newest archived year's end is archived."""

    __tablename__ = "archived_years"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime)
    usage_rows: Mapped[int] = mapped_column(BigInteger)
    ledger_entries: Mapped[int] = mapped_column(BigInteger)
    # SHA-256 of the archive's manifest (which holds each file's SHA-256).
    manifest_sha256: Mapped[str] = mapped_column(String(64))


class ArchivedUsage(UsageColumns, Model):
    """One deployment's usage totals over an archived year: what usage-audit compares the
    recomputation from the intervals with, once that year's rollup rows are gone."""

    __tablename__ = "archived_usage"

    year: Mapped[int] = mapped_column(
        ForeignKey("archived_years.year"), primary_key=True, autoincrement=False
    )
    deployment_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(BigInteger)
    days: Mapped[int] = mapped_column(BigInteger)  # rollup rows archived

"""Deployments the platform runs for users, and the intervals they are billed by.

Quantities are integer thousandths: ``cpu_milli`` (1000 = one core), ``memory_mgb`` and
``storage_mgb`` (1000 = one GB). Interval bounds are integer Unix seconds (UTC), so that
metering is plain integer SQL that gives identical results on SQLite and PostgreSQL.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow


class DeploymentState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    FAILED = "failed"
    SUSPENDED = "suspended"
    REMOVING = "removing"  # unpaid: scheduled for deletion after the grace period
    REMOVED = "removed"  # deleted for non-payment
    TERMINATED = "terminated"  # deleted by the platform


class DeploymentKind(enum.StrEnum):
    VM = "vm"
    K8S = "k8s"
    SESSION = "session"


class Deployment(Model):
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    labels: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16))
    price_version_id: Mapped[int] = mapped_column(ForeignKey("price_versions.id"))
    sku_code: Mapped[str | None] = mapped_column(String(40))
    cpu_milli: Mapped[int] = mapped_column(BigInteger)
    memory_mgb: Mapped[int] = mapped_column(BigInteger)
    storage_mgb: Mapped[int] = mapped_column(BigInteger)
    public_ip: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    intervals: Mapped[list[DeploymentInterval]] = relationship(
        back_populates="deployment", order_by="DeploymentInterval.start_epoch", lazy="selectin"
    )


class DeploymentInterval(Model):
    """A stretch of time with one billable shape: the quantities billed while it lasts and
    the rates snapshotted from the deployment's price version. Intervals of one deployment
    never overlap; an open interval has ``end_epoch`` NULL. This is the audit trail from
    which any hour's usage can be recomputed."""

    __tablename__ = "deployment_intervals"
    __table_args__ = (
        Index("ix_deployment_intervals_user_id_start_epoch", "user_id", "start_epoch"),
        # can-deploy's one read: the user's open intervals (what runs now, at its rates).
        Index("ix_deployment_intervals_user_id_end_epoch", "user_id", "end_epoch"),
        Index(
            "ix_deployment_intervals_deployment_id_start_epoch",
            "deployment_id",
            "start_epoch",
            unique=True,
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    start_epoch: Mapped[int] = mapped_column(BigInteger)
    end_epoch: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    # Billed quantities while the interval lasts (0 when the state does not bill them).
    cpu_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_mgb: Mapped[int] = mapped_column(BigInteger, default=0)
    storage_mgb: Mapped[int] = mapped_column(BigInteger, default=0)
    instances: Mapped[int] = mapped_column(Integer, default=0)  # SKU-priced: 1 while billed
    public_ips: Mapped[int] = mapped_column(Integer, default=0)
    # Rates in micro-units: per core-hour, GB-hour, GB-month, instance-hour, IP-hour.
    cpu_rate_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_rate_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    storage_rate_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    instance_rate_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    ip_rate_micros: Mapped[int] = mapped_column(BigInteger, default=0)

    deployment: Mapped[Deployment] = relationship(back_populates="intervals")

"""Plans (versioned like prices), subscriptions, plan changes and quota bookkeeping.

A plan's price or limits change by a new version from a date; a subscription keeps the
version it holds until its owner changes plan. Limits are integer thousandths, as the
deployments' quantities are (1000 = one core, one GB).
"""

from __future__ import annotations

import enum
from datetime import date, datetime, timedelta

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..money import Money
from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow


class BillingMode(enum.StrEnum):
    USAGE = "usage"  # everything metered at the rates
    SUBSCRIPTION = "subscription"  # the plan fee in advance; limits are quotas
    HYBRID = "hybrid"  # the plan fee in advance, plus overage above the limits in arrears
    PREPAID = "prepaid"  # everything metered at the rates, paid hour by hour from the funds

    @property
    def plans(self) -> bool:
        """Whether plans are offered (and their fees and quotas apply)."""
        return self in (BillingMode.SUBSCRIPTION, BillingMode.HYBRID)


class Plan(Model):
    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)  # the seed's plan id: "pro"
    position: Mapped[int] = mapped_column(Integer, default=0)
    # What subscriptionPlans last said of this plan: a change there is a new version.
    settings: Mapped[dict | None] = mapped_column(JSON)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    versions: Mapped[list[PlanVersion]] = relationship(
        back_populates="plan", order_by="PlanVersion.version", lazy="selectin"
    )


class PlanVersion(Model):
    __tablename__ = "plan_versions"
    __table_args__ = (
        UniqueConstraint("plan_id", "version"),
        UniqueConstraint("plan_id", "effective_from"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"))
    version: Mapped[int] = mapped_column(Integer)
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime)
    name: Mapped[str] = mapped_column(String(100))
    currency: Mapped[str] = mapped_column(String(3))
    price_minor: Mapped[int] = mapped_column(BigInteger)
    interval: Mapped[str] = mapped_column(String(8))  # month | year
    cpu_limit_milli: Mapped[int] = mapped_column(BigInteger)
    memory_limit_mgb: Mapped[int] = mapped_column(BigInteger)
    storage_limit_mgb: Mapped[int] = mapped_column(BigInteger)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    plan: Mapped[Plan] = relationship(back_populates="versions", lazy="joined")

    @property
    def price(self) -> Money:
        return Money(self.price_minor, self.currency)

    @property
    def code(self) -> str:
        return self.plan.code

    def limits(self) -> dict[str, int]:
        return {
            "cpu": self.cpu_limit_milli,
            "memory": self.memory_limit_mgb,
            "storage": self.storage_limit_mgb,
        }


class SubscriptionStatus(enum.StrEnum):
    ACTIVE = "active"
    PENDING = "pending"  # a first subscription waits for its invoice to be paid
    CANCELED = "canceled"


class Subscription(Model):
    """One per user. ``revision`` is bumped by every change with a conditional UPDATE, so of
    two changes made from the same state only one can win."""

    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    plan_version_id: Mapped[int] = mapped_column(ForeignKey("plan_versions.id"))
    status: Mapped[str] = mapped_column(String(16))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime)
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    # A downgrade waiting for the period's end.
    scheduled_version_id: Mapped[int | None] = mapped_column(ForeignKey("plan_versions.id"))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    plan_version: Mapped[PlanVersion] = relationship(foreign_keys=[plan_version_id], lazy="joined")
    scheduled_version: Mapped[PlanVersion | None] = relationship(
        foreign_keys=[scheduled_version_id], lazy="joined"
    )

    @property
    def period_last_day(self) -> date:
        """The period's last day, for showing it inclusively (the period is half-open)."""
        return (self.period_end - timedelta(days=1)).date()


class ChangeKind(enum.StrEnum):
    SUBSCRIBE = "subscribe"
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    CANCEL = "cancel"


class ChangeStatus(enum.StrEnum):
    PENDING = "pending"  # its invoice is not paid yet
    SCHEDULED = "scheduled"  # takes effect at the period's end
    APPLIED = "applied"
    CANCELED = "canceled"  # undone before it took effect


class SubscriptionChange(Model):
    """Each plan change, its invoice (proration) and when it took effect: the history the
    overage of a period is computed against."""

    __tablename__ = "subscription_changes"
    __table_args__ = (
        UniqueConstraint("subscription_id", "revision"),
        # At most one change waits for payment per subscription.
        Index(
            "uq_subscription_changes_pending",
            "subscription_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_subscription_changes_user_id_effective_at", "user_id", "effective_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    revision: Mapped[int] = mapped_column(Integer)  # the subscription's revision it made
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("plan_versions.id"))
    to_version_id: Mapped[int | None] = mapped_column(ForeignKey("plan_versions.id"))
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))
    effective_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    to_version: Mapped[PlanVersion | None] = relationship(
        foreign_keys=[to_version_id], lazy="joined"
    )


class QuotaAlert(Model):
    """A quota alert sent: once per user, resource, level and billing period."""

    __tablename__ = "quota_alerts"
    __table_args__ = (UniqueConstraint("user_id", "resource", "level", "period_start"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    resource: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(16))  # warning | exceeded
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    limit_milli: Mapped[int] = mapped_column(BigInteger)
    allocated_milli: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class QuotaBreach(Model):
    """A user over a quota since ``since``; closed when back under. The grace period runs
    from ``since``."""

    __tablename__ = "quota_breaches"
    __table_args__ = (
        Index(
            "uq_quota_breaches_open",
            "user_id",
            "resource",
            unique=True,
            sqlite_where=text("resolved_at IS NULL"),
            postgresql_where=text("resolved_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    resource: Mapped[str] = mapped_column(String(16))
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class QuotaSuspension(Model):
    """A deployment suspended for being over a quota; ``resumed_at`` once it runs again."""

    __tablename__ = "quota_suspensions"
    __table_args__ = (
        Index(
            "uq_quota_suspensions_open",
            "deployment_id",
            unique=True,
            sqlite_where=text("resumed_at IS NULL"),
            postgresql_where=text("resumed_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    resource: Mapped[str] = mapped_column(String(16))
    suspended_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

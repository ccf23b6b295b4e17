"""Dunning: the steps taken about an overdue invoice, each recorded once; prepaid accounts:
their hourly charges and the removals their empty funds start."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow


class DunningStep(Model):
    """One step of an overdue invoice's dunning: ``reminder-<week>``, ``suspended``,
    ``removing``, ``removed`` or ``restored``. UNIQUE per invoice and step, so two runs (or
    two daemons) take each step once. ``deployments`` lists the external ids the step acted
    on; ``template`` and ``message_id`` name the mail sent with it."""

    __tablename__ = "dunning_steps"
    __table_args__ = (UniqueConstraint("invoice_id", "step"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    step: Mapped[str] = mapped_column(String(32))
    template: Mapped[str] = mapped_column(String(64), default="")
    message_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_emails.id"))
    deployments: Mapped[list] = mapped_column(JSON, default=list)
    removal_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PrepaidCharge(Model):
    """What a prepaid account's funds paid for its usage up to ``through`` (an hour
    boundary) in the billing period starting ``period_start``: each wallet's part, in the
    order credits, vouchers, cash. UNIQUE per user and hour, inserted before the ledger
    postings, so a second metering of the hour, or a replay, charges nothing more.
    ``invoice_id``: the period's statement, once issued (it is paid by these charges)."""

    __tablename__ = "prepaid_charges"
    __table_args__ = (
        UniqueConstraint("user_id", "through"),
        Index("ix_prepaid_charges_user_id_invoice_id", "user_id", "invoice_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    through: Mapped[datetime] = mapped_column(UTCDateTime)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    currency: Mapped[str] = mapped_column(String(3))
    credit_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    voucher_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    cash_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def total_minor(self) -> int:
        return self.credit_minor + self.voucher_minor + self.cash_minor


class PrepaidRemoval(Model):
    """A prepaid account whose funds stopped covering the next hour: its deployments are
    REMOVING until ``removal_at`` (24 hours on), then REMOVED, unless money arrives first
    (``restored_at``). At most one open (neither restored nor removed) per user, by a
    partial UNIQUE index: two runs at once start one. ``hour_minor``: what an hour of the
    deployments cost when they stopped being covered (restoring needs it, plus what the
    funds still owe); ``deployments``: the external ids put up for removal."""

    __tablename__ = "prepaid_removals"
    __table_args__ = (
        Index(
            "uq_prepaid_removals_open",
            "user_id",
            unique=True,
            sqlite_where=text("closed_at IS NULL"),
            postgresql_where=text("closed_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    removal_at: Mapped[datetime] = mapped_column(UTCDateTime)
    hour_minor: Mapped[int] = mapped_column(BigInteger)
    deployments: Mapped[list] = mapped_column(JSON, default=list)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_emails.id"))
    outcome: Mapped[str | None] = mapped_column(String(16))  # restored or removed
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

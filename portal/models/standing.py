"""Dunning: the steps taken about an overdue invoice, each recorded once."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint
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

"""Payments: the webhook inbox (every verified gateway event, stored once by its id)."""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import BigIntPK, UTCDateTime, utcnow


class WebhookOutcome(enum.StrEnum):
    HANDLED = "handled"      # its handler ran and its changes committed
    UNHANDLED = "unhandled"  # no handler for this type: stored, nothing to do
    IGNORED = "ignored"      # from the other mode (livemode differs from our key's)


class WebhookEvent(db.Model):
    """The inbox: UNIQUE by the gateway's event id, so a replay stores nothing new."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_processed_at_id", "processed_at", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    livemode: Mapped[bool] = mapped_column(Boolean)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the event exactly as verified
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)  # the last failed attempt's error

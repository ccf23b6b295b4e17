"""Operational records: the mail outbox."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow


class EmailStatus(enum.StrEnum):
    OUTBOX = "outbox"  # no SMTP server configured: kept for admins to read
    PENDING = "pending"  # waiting for the mail job
    SENT = "sent"
    FAILED = "failed"


class OutboundEmail(Model):
    """Every message is written here in the request's transaction and sent after commit."""

    __tablename__ = "outbound_emails"
    __table_args__ = (Index("ix_outbound_emails_status_id", "status", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    to_addr: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(300))
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    # The invoice whose PDF goes with the message, attached when it is sent.
    attachment_invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))
    error: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

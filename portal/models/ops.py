"""Operational records: the mail outbox and the job requests (an outbox for jobs)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow


class EmailStatus(enum.StrEnum):
    OUTBOX = "outbox"  # no SMTP server configured: kept for admins to read
    PENDING = "pending"  # waiting for the mail job
    SENDING = "sending"  # claimed by a mail job (claimed_at)
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
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A message sent at most once per key (payment-failure mail: once per invoice per day);
    # the database refuses the second.
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)


class JobRequestStatus(enum.StrEnum):
    REQUESTED = "requested"  # committed, not yet (or again not) in Redis
    SENT = "sent"  # handed to RQ
    DONE = "done"  # the job finished
    FAILED = "failed"  # failed on every attempt: waits for a person


class JobRequest(Model):
    """A job a transaction asked for, written in that transaction: the relay
    (portal.tasks.requests) moves it to RQ, and again when Redis lost it or it failed."""

    __tablename__ = "job_requests"
    __table_args__ = (
        CheckConstraint("status IN ('requested', 'sent', 'done', 'failed')", name="status"),
        Index("ix_job_requests_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    queue: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(200))
    args: Mapped[list[Any]] = mapped_column(JSON)
    # The job id ("mail:7"): asking again for a job under the same key reuses the row.
    dedupe_key: Mapped[str | None] = mapped_column(String(160), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # last asked for
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The run whose chunk this is: the run ends when its chunks do (portal.tasks.runs).
    run_id: Mapped[int | None] = mapped_column(ForeignKey("job_runs.id"), index=True)

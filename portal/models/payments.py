"""Payments: the webhook inbox, gateway customers, saved cards, card payment attempts,
checkout sessions and reversals (refunds, disputes)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..money import Money
from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow


class WebhookOutcome(enum.StrEnum):
    HANDLED = "handled"  # its handler ran and its changes committed
    UNHANDLED = "unhandled"  # no handler for this type: stored, nothing to do
    IGNORED = "ignored"  # from the other mode (livemode differs from our key's)


class WebhookEvent(Model):
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


class GatewayCustomer(Model):
    """The user's customer at the payment gateway (made on the first card action)."""

    __tablename__ = "gateway_customers"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id"), primary_key=True, autoincrement=False
    )
    customer_id: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PaymentMethod(Model):
    """A saved card: the gateway's id and what a person needs to recognize it. The number
    itself is only ever typed on the gateway's page."""

    __tablename__ = "payment_methods"
    __table_args__ = (
        # The same card (the gateway's fingerprint of its number) once per user.
        Index(
            "uq_payment_methods_user_fingerprint",
            "user_id",
            "fingerprint",
            unique=True,
            sqlite_where=text("removed_at IS NULL"),
            postgresql_where=text("removed_at IS NULL"),
        ),
        # At most one default card per user.
        Index(
            "uq_payment_methods_user_default",
            "user_id",
            unique=True,
            sqlite_where=text("is_default AND removed_at IS NULL"),
            postgresql_where=text("is_default AND removed_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    gateway_id: Mapped[str] = mapped_column(String(255), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    brand: Mapped[str] = mapped_column(String(32))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int] = mapped_column(Integer)
    exp_year: Mapped[int] = mapped_column(Integer)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Removed cards stay: attempts made with them keep naming them.
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def label(self) -> str:
        return f"{self.brand.title()} •••• {self.last4}"


class AttemptPurpose(enum.StrEnum):
    INVOICE = "invoice"  # a card's part of an invoice
    TOPUP = "topup"  # a saved card charged to add to the prepaid balance


class AttemptStatus(enum.StrEnum):
    PENDING = "pending"  # committed; the gateway's answer not recorded yet
    REQUIRES_ACTION = "requires_action"  # the customer must authenticate (3-D Secure)
    PROCESSING = "processing"  # accepted, not final: a webhook will tell
    SUCCEEDED = "succeeded"
    FAILED = "failed"


OPEN_ATTEMPT_STATUSES = (
    AttemptStatus.PENDING,
    AttemptStatus.REQUIRES_ACTION,
    AttemptStatus.PROCESSING,
)
_OPEN_SQL = "status IN ('pending', 'requires_action', 'processing')"


class PaymentAttempt(Model):
    """One charge of a saved card, committed before the gateway is called: its idempotency
    key (``inv:{invoice}:att:{n}``) goes with the request, so a retry or a recovery after a
    crash can never charge twice; an unanswered attempt is resolved by looking it up."""

    __tablename__ = "payment_attempts"
    __table_args__ = (
        UniqueConstraint("invoice_id", "number"),
        # One charge in flight per invoice: a second settlement run cannot start another.
        Index(
            "uq_payment_attempts_open_invoice",
            "invoice_id",
            unique=True,
            sqlite_where=text(f"invoice_id IS NOT NULL AND {_OPEN_SQL}"),
            postgresql_where=text(f"invoice_id IS NOT NULL AND {_OPEN_SQL}"),
        ),
        Index("ix_payment_attempts_status_created_at", "status", "created_at"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))
    payment_method_id: Mapped[int] = mapped_column(ForeignKey("payment_methods.id"))
    purpose: Mapped[str] = mapped_column(String(16))
    number: Mapped[int] = mapped_column(Integer)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(20), default=AttemptStatus.PENDING.value)
    gateway_payment_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    decline_code: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    payment_method: Mapped[PaymentMethod] = relationship(lazy="joined")

    @property
    def amount(self) -> Money:
        return Money(self.amount_minor, self.currency)


class CheckoutSession(Model):
    """A hosted checkout page we opened for a user (a balance top-up, or "add a card")."""

    __tablename__ = "checkout_sessions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    gateway_session_id: Mapped[str] = mapped_column(String(255), unique=True)
    purpose: Mapped[str] = mapped_column(String(16))  # topup, setup, subscription
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open, complete
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReversalKind(enum.StrEnum):
    REFUND = "refund"
    DISPUTE = "dispute"


class PaymentReversal(Model):
    """Money the gateway took back after a card payment (a refund, a dispute), booked once
    by its key: ``{charge}:{amount refunded so far}`` for refunds, the dispute's id."""

    __tablename__ = "payment_reversals"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    reference: Mapped[str] = mapped_column(String(255), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    gateway_payment_id: Mapped[str] = mapped_column(String(255), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(200), default="")
    ledger_transaction_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_transactions.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def amount(self) -> Money:
        return Money(self.amount_minor, self.currency)

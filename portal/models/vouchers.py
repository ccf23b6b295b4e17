"""Vouchers: codes that fund the voucher wallet, and users' requests for them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..money import Money
from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow


class Voucher(Model):
    __tablename__ = "vouchers"
    __table_args__ = (
        CheckConstraint("value_minor > 0", name="value_positive"),
        CheckConstraint(
            "max_redemptions >= 1 AND redemptions >= 0 AND redemptions <= max_redemptions",
            name="redemptions_in_range",
        ),
        Index("ix_vouchers_batch", "batch"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    # Canonical form: 20 Crockford base-32 characters (100 random bits), shown in groups.
    code: Mapped[str] = mapped_column(String(32), unique=True)
    value_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    max_redemptions: Mapped[int] = mapped_column(Integer, default=1)
    redemptions: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str] = mapped_column(String(500), default="")
    batch: Mapped[str | None] = mapped_column(String(40))
    # A voucher made for one user (an approved request) can only be redeemed by them.
    for_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def value(self) -> Money:
        return Money(self.value_minor, self.currency)

    @property
    def display_code(self) -> str:
        return display_code(self.code)


def display_code(code: str) -> str:
    """A voucher's code as shown, in groups of five (a code read as a column)."""
    return "-".join(code[i : i + 5] for i in range(0, len(code), 5))


class VoucherRedemption(Model):
    __tablename__ = "voucher_redemptions"
    # One redemption of a code per user; the code's counter caps the total.
    __table_args__ = (UniqueConstraint("voucher_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    voucher_id: Mapped[int] = mapped_column(ForeignKey("vouchers.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    ledger_transaction_id: Mapped[int] = mapped_column(
        ForeignKey("ledger_transactions.id"), unique=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class VoucherRequest(Model):
    __tablename__ = "voucher_requests"
    __table_args__ = (
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint("status IN ('pending', 'approved', 'rejected')", name="status_known"),
        Index("ix_voucher_requests_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision_note: Mapped[str] = mapped_column(String(500), default="")
    voucher_id: Mapped[int | None] = mapped_column(ForeignKey("vouchers.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def amount(self) -> Money:
        return Money(self.amount_minor, self.currency)

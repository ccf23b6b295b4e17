"""Invoices, their lines, payments, PDFs, numbering, late-usage adjustments and events."""

from __future__ import annotations

import enum
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..money import Money
from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow
from .usage import UsageColumns

if TYPE_CHECKING:
    from .ledger import LedgerTransaction
    from .users import User

# The ledger transaction kind of credits applied at issue (services/invoicing/run.py).
ISSUE_CREDIT_KIND = "invoice_credit"


class InvoiceStatus(enum.StrEnum):
    DRAFT = "draft"
    OPEN = "open"  # finalized and sent; the API and pages call it "sent"
    PAID = "paid"
    OVERDUE = "overdue"
    VOID = "void"

    @property
    def label(self) -> str:
        return "sent" if self is InvoiceStatus.OPEN else self.value

    @property
    def css_class(self) -> str:
        return f"status status-{self.label}"

    @classmethod
    def from_label(cls, label: str) -> InvoiceStatus:
        """The status a page, filter or API call names by its label ("sent" is open)."""
        return cls.OPEN if label == "sent" else cls(label)

    @property
    def display(self) -> str:
        """The status as people read it (pages, PDF, the API's ``status_display``)."""
        return STATUS_DISPLAY[self]


STATUS_DISPLAY = {
    InvoiceStatus.DRAFT: "Draft",
    InvoiceStatus.OPEN: "Open",
    InvoiceStatus.OVERDUE: "Past due",
    InvoiceStatus.PAID: "Paid",
    InvoiceStatus.VOID: "Void",
}
PARTIALLY_PAID = "Partially paid"
INVOICE_STATUS_DISPLAYS = (*STATUS_DISPLAY.values(), PARTIALLY_PAID)


def display_status(status: InvoiceStatus, amount_paid_minor: int) -> str:
    """Draft, Open, Past due, Partially paid, Paid or Void: an open invoice with a payment
    that does not cover it is partially paid (past due wins: it is what needs doing)."""
    if status is InvoiceStatus.OPEN and amount_paid_minor > 0:
        return PARTIALLY_PAID
    return status.display


# The status vocabulary, as pages, filters and the API name it: all of it (admins, the API)
# and what users can see (a draft is never shown to its user).
INVOICE_STATUS_LABELS = tuple(s.label for s in InvoiceStatus)
USER_INVOICE_STATUS_LABELS = tuple(s.label for s in InvoiceStatus if s is not InvoiceStatus.DRAFT)


class InvoiceKind(enum.StrEnum):
    USAGE = "usage"  # the period invoice (usage, plan fee in advance, overage)
    PLAN_CHANGE = "plan_change"  # a subscription or upgrade's proration, issued at once


class InvoiceFigures:
    """An invoice's status as pages show it and its amounts, from its status, currency and
    amounts: the Invoice model's, and those of invoices read as columns for a list."""

    __slots__ = ()
    if TYPE_CHECKING:  # given by the class that mixes it in (columns, or a dataclass's fields)
        status: Any
        currency: Any
        total_minor: Any
        amount_paid_minor: Any

    @property
    def invoice_status(self) -> InvoiceStatus:
        return InvoiceStatus(self.status)

    @property
    def display_status(self) -> str:
        return display_status(self.invoice_status, self.amount_paid_minor)

    @property
    def status_css(self) -> str:
        if self.display_status == PARTIALLY_PAID:
            return "status status-partial"
        return self.invoice_status.css_class

    @property
    def total(self) -> Money:
        return Money(self.total_minor, self.currency)

    @property
    def amount_due(self) -> Money:
        return Money(self.total_minor - self.amount_paid_minor, self.currency)


class Invoice(InvoiceFigures, Model):
    __tablename__ = "invoices"
    __table_args__ = (
        # One live invoice per user, period and kind; a voided one may be reissued.
        Index(
            "uq_invoices_user_period_kind",
            "user_id",
            "period_start",
            "kind",
            unique=True,
            sqlite_where=text("status <> 'void'"),
            postgresql_where=text("status <> 'void'"),
        ),
        Index("ix_invoices_status_due_at", "status", "due_at"),
        # Admin › Invoices, newest period first: a page read from the index, not a sort of all.
        Index("ix_invoices_period_start_id", "period_start", "id"),
        CheckConstraint(
            "total_minor >= 0 AND credits_minor >= 0 AND amount_paid_minor >= 0",
            name="amounts_not_negative",
        ),
        CheckConstraint(
            "status IN ('draft', 'open', 'paid', 'overdue', 'void')", name="status_known"
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default=InvoiceKind.USAGE)
    status: Mapped[str] = mapped_column(String(16), default=InvoiceStatus.DRAFT)
    # Gap-free per year, assigned at finalization: INV-2026-000123.
    number: Mapped[str | None] = mapped_column(String(32), unique=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime)
    currency: Mapped[str] = mapped_column(String(3))
    subtotal_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    total_minor: Mapped[int] = mapped_column(BigInteger, default=0)  # due after credits
    amount_paid_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    void_reason: Mapped[str | None] = mapped_column(String(500))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The plain data the PDF is rendered from, frozen at finalization. An invoice run numbers
    # its invoices after writing them, so their snapshots leave the number to the column above
    # (snapshot.with_number joins them).
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # a JSON document
    pdf_status: Mapped[str] = mapped_column(String(16), default="none")  # none|pending|ready|failed
    pdf_sha256: Mapped[str | None] = mapped_column(String(64))

    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice", order_by="InvoiceLine.position", lazy="selectin"
    )
    payments: Mapped[list[InvoicePayment]] = relationship(
        back_populates="invoice", order_by="InvoicePayment.id", lazy="selectin"
    )
    # Loaded on access only (pages that list invoices with their users' emails).
    user: Mapped[User] = relationship(foreign_keys=[user_id], lazy="select", viewonly=True)

    @property
    def settlement_payments(self) -> list[InvoicePayment]:
        """The payments that count toward "Paid": every one but the credits applied when
        the invoice was issued, which its "Credits applied" line already takes off."""
        return [p for p in self.payments if not p.is_issue_credit]

    @property
    def period_last_day(self) -> date:
        """The period's last day, for showing it inclusively (the period is half-open)."""
        return (self.period_end - timedelta(days=1)).date()

    def money(self, minor: int) -> Money:
        return Money(minor, self.currency)

    @property
    def subtotal(self) -> Money:
        return Money(self.subtotal_minor, self.currency)

    @property
    def credits(self) -> Money:
        return Money(self.credits_minor, self.currency)

    @property
    def amount_paid(self) -> Money:
        return Money(self.amount_paid_minor, self.currency)


class InvoiceLine(Model):
    __tablename__ = "invoice_lines"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # usage|adjustment|fee|overage|proration
    # No foreign key: the line is a frozen copy of what was billed (from the rollups, which
    # carry none either), and checking one per line was a large part of an invoice run's cost.
    deployment_id: Mapped[int | None] = mapped_column(BigIntPK)  # the type deployments.id has
    resource: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(300))
    quantity: Mapped[str] = mapped_column(String(40))  # exact decimal text
    unit: Mapped[str] = mapped_column(String(20))
    unit_price: Mapped[str] = mapped_column(String(40))  # major units, exact decimal text
    amount_minor: Mapped[int] = mapped_column(BigInteger)  # rounded once, ROUND_HALF_UP

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class PaymentTender(enum.StrEnum):
    CREDIT = "credit"
    VOUCHER = "voucher"
    CASH = "cash"
    CARD = "card"
    OFFLINE = "offline"


class InvoicePayment(Model):
    """One tender's part of paying an invoice, each with its ledger transaction."""

    __tablename__ = "invoice_payments"
    __table_args__ = (CheckConstraint("amount_minor > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    tender: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reference: Mapped[str] = mapped_column(String(200), default="")
    ledger_transaction_id: Mapped[int] = mapped_column(
        ForeignKey("ledger_transactions.id"), unique=True
    )
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    invoice: Mapped[Invoice] = relationship(back_populates="payments")
    ledger_transaction: Mapped[LedgerTransaction] = relationship(lazy="select", viewonly=True)

    @property
    def is_issue_credit(self) -> bool:
        """Credits applied when the invoice was issued (in its credits, not its payments)."""
        return self.tender == PaymentTender.CREDIT and self.ledger_transaction.kind == (
            ISSUE_CREDIT_KIND
        )

    @property
    def amount(self) -> Money:
        return Money(self.amount_minor, self.currency)


class InvoicePdf(Model):
    """The rendered PDF of a finalized invoice and its SHA-256."""

    __tablename__ = "invoice_pdfs"

    invoice_id: Mapped[int] = mapped_column(
        ForeignKey("invoices.id"), primary_key=True, autoincrement=False
    )
    template_version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    rendered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InvoiceCounter(Model):
    """The last invoice number used in a year; incremented under its row lock."""

    __tablename__ = "invoice_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_number: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageAdjustment(UsageColumns, Model):
    """Usage that changed after its period was invoiced (a deletion or deployment reported
    late): the difference, carried to the user's next invoice as adjustment lines. Same
    columns as the rollups; pending rows have no invoice yet."""

    __tablename__ = "usage_adjustments"
    __table_args__ = (
        Index(
            "uq_usage_adjustments_pending",
            "deployment_id",
            "day",
            unique=True,
            sqlite_where=text("invoice_id IS NULL"),
            postgresql_where=text("invoice_id IS NULL"),
        ),
        Index("ix_usage_adjustments_user_id_invoice_id", "user_id", "invoice_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(BigInteger)
    day: Mapped[date] = mapped_column(Date)
    user_id: Mapped[int] = mapped_column(BigInteger)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))


class Event(Model):
    """The event outbox: written in the transaction that caused the event, delivered to the
    platform after commit (signed webhooks)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_delivered_at_id", "delivered_at", "id"),
        Index("uq_events_name_subject", "name", "subject", unique=True),
        Index("uq_events_position", "position", unique=True),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    # What the event is about, unique per name: the same fact is recorded once.
    subject: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the dispatcher handed it out to the webhook endpoints (portal.services.webhooks)
    # and its place in the published order: increasing with each hand-out, so a reader
    # paging by position never misses an event whose transaction committed late.
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    position: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)

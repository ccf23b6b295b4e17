"""What happened to the money, in words: which invoices new money paid (a top-up, a voucher,
a new card), what a card would pay before it is saved, and each card attempt on an invoice
with its outcome and the bank's reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from ...extensions import db
from ...models import (
    AttemptStatus,
    Invoice,
    InvoicePayment,
    PaymentAttempt,
    User,
    utcnow,
)
from ...money import Money
from ..invoicing import invoices
from . import settlement

# The bank's decline codes as people say them.
DECLINE_REASONS = {
    "insufficient_funds": "insufficient funds",
    "card_declined": "declined by the bank",
    "generic_decline": "declined by the bank",
    "do_not_honor": "declined by the bank",
    "expired_card": "the card has expired",
    "incorrect_cvc": "the security code is wrong",
    "lost_card": "the card was reported lost",
    "stolen_card": "the card was reported stolen",
    "authentication_required": "your bank asks you to confirm the payment",
    "authentication_not_completed": "the payment was not confirmed with your bank",
    "not_sent": "the charge never reached the card processor",
    "not_needed": "the invoice was paid by other means",
    "gateway_error": "the card processor refused the charge",
}


def decline_reason(code: str | None, message: str | None = None) -> str:
    if code and code in DECLINE_REASONS:
        return DECLINE_REASONS[code]
    if message:
        return message.rstrip(".")
    return (code or "declined").replace("_", " ")


def payments_marker(user: User) -> int:
    """The newest invoice payment of the user so far (``paid_since`` reads what came after)."""
    return int(
        db.session.scalar(
            select(func.coalesce(func.max(InvoicePayment.id), 0))
            .join(Invoice, Invoice.id == InvoicePayment.invoice_id)
            .where(Invoice.user_id == user.id)
        )
        or 0
    )


@dataclass(frozen=True)
class PaidInvoice:
    invoice_id: int
    number: str
    amount: Money
    in_full: bool


def paid_since(user: User, marker: int) -> list[PaidInvoice]:
    """The invoices paid (in part or in full) by payments made after ``marker``."""
    rows = db.session.execute(
        select(Invoice, func.sum(InvoicePayment.amount_minor))
        .join(InvoicePayment, InvoicePayment.invoice_id == Invoice.id)
        .where(Invoice.user_id == user.id, InvoicePayment.id > marker)
        .group_by(Invoice.id)
        .order_by(func.min(InvoicePayment.id))
    ).all()
    return [
        PaidInvoice(
            invoice.id,
            invoice.number or "",
            Money(int(amount), invoice.currency),
            invoice.invoice_status is invoices.S.PAID,
        )
        for invoice, amount in rows
    ]


def describe(paid: list[PaidInvoice]) -> str:
    """ "It paid INV-2026-000001 in full ($5.00) and $3.00 of INV-2026-000002." """
    if not paid:
        return ""
    parts = [
        f"{p.number} in full ({p.amount.format()})"
        if p.in_full
        else f"{p.amount.format()} of {p.number}"
        for p in paid
    ]
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"It paid {joined}."


def settle_wallets(user: User, since: int, now: datetime | None = None) -> list[PaidInvoice]:
    """COMMITS. New money pays the user's open invoices now (the wallets only: cards are
    charged by the settlement job), so the page can say what it paid: the invoices paid
    after the ``since`` marker (taken before the money came; the job may have been first)."""
    marker = since
    settlement.settle_user(user, now or utcnow())
    db.session.commit()
    return paid_since(user, marker)


@dataclass(frozen=True)
class CardWouldPay:
    amount: Money
    invoices: int

    @property
    def message(self) -> str:
        if not self.amount.amount_minor:
            return ""
        noun = "open invoice" if self.invoices == 1 else "open invoices"
        return f"Saving this card pays {self.amount.format()} of {self.invoices} {noun}."


def card_would_pay(user: User, now: datetime | None = None) -> CardWouldPay:
    """What a newly saved card would be charged at once: what the user's open invoices owe
    beyond what the balances cover."""
    unpaid = list(
        db.session.scalars(
            select(Invoice).where(
                Invoice.user_id == user.id,
                Invoice.status.in_([str(s) for s in invoices.UNPAID]),
            )
        )
    )
    due = sum(i.total_minor - i.amount_paid_minor for i in unpaid)
    wallets = sum(settlement.available_balances(user, now or utcnow()).values())
    return CardWouldPay(Money(max(due - wallets, 0), user.currency), len(unpaid))


@dataclass(frozen=True)
class AttemptLine:
    when: datetime
    card: str
    amount: Money
    outcome: str  # "paid", "declined: insufficient funds", "waiting for your bank", ...
    ok: bool

    @property
    def text(self) -> str:
        return f"{self.card} {self.outcome}"


def card_attempts(invoice: Invoice) -> list[AttemptLine]:
    """Each card charge for the invoice, oldest first, with what came of it."""
    lines = []
    for attempt in db.session.scalars(
        select(PaymentAttempt)
        .where(PaymentAttempt.invoice_id == invoice.id)
        .order_by(PaymentAttempt.id)
    ):
        status = AttemptStatus(attempt.status)
        if status is AttemptStatus.SUCCEEDED:
            outcome, ok = f"paid {attempt.amount.format()}", True
        elif status is AttemptStatus.FAILED:
            outcome = "declined: " + decline_reason(attempt.decline_code, attempt.message)
            ok = False
        elif status is AttemptStatus.REQUIRES_ACTION:
            outcome, ok = "is waiting for you to confirm the payment with your bank", False
        else:
            outcome, ok = "is being processed", False
        lines.append(
            AttemptLine(
                attempt.created_at, attempt.payment_method.label, attempt.amount, outcome, ok
            )
        )
    return lines

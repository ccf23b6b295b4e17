"""Settlement: unpaid invoices paid from what the user has, smallest total first.

Each invoice draws from credits (oldest expiry first), then the voucher balance, then the
prepaid (cash) balance, mixing tenders; each tender's part is one payment row and one ledger
transaction. Settlement of one user is serialized by the lock on their receivable account,
and every payment re-reads the invoice under its lock, so two settlement runs at once pay
each invoice once. Cards follow these tenders once the card gateway takes part.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from ..extensions import db
from ..models import AccountKind, Invoice, InvoiceStatus, PaymentTender, User, utcnow
from ..money import Money
from . import credits, invoicing, ledger
from .errors import InvalidTransition

WALLET_TENDERS = (PaymentTender.CREDIT, PaymentTender.VOUCHER, PaymentTender.CASH)
TENDER_LABELS = {PaymentTender.CREDIT: "Credits", PaymentTender.VOUCHER: "Voucher balance",
                 PaymentTender.CASH: "Prepaid balance", PaymentTender.CARD: "Card",
                 PaymentTender.OFFLINE: "Bank transfer"}


@dataclass(frozen=True)
class TenderPart:
    tender: PaymentTender
    amount: Money

    @property
    def label(self) -> str:
        return TENDER_LABELS[self.tender]


@dataclass
class Preview:
    parts: list[TenderPart]
    remaining: Money  # what the wallets do not cover (the card's part, once cards pay)


@dataclass
class SettleResult:
    paid: list[int] = field(default_factory=list)
    payments: int = 0


def _available(user: User, now: datetime) -> dict[PaymentTender, int]:
    balances = ledger.balances(user)
    return {PaymentTender.CREDIT: credits.available_credit(user, now).amount_minor,
            PaymentTender.VOUCHER: balances.voucher.amount_minor,
            PaymentTender.CASH: balances.cash.amount_minor}


def _split(due: int, available: dict[PaymentTender, int]) -> list[tuple[PaymentTender, int]]:
    parts = []
    for tender in WALLET_TENDERS:
        take = min(due, available[tender])
        if take > 0:
            parts.append((tender, take))
            available[tender] -= take
            due -= take
    return parts


def preview(invoice: Invoice, user: User, now: datetime | None = None) -> Preview:
    """Which tender would pay what of this invoice now (nothing is written)."""
    due = invoice.total_minor - invoice.amount_paid_minor
    parts = _split(due, _available(user, now or utcnow())) if due > 0 else []
    covered = sum(amount for _, amount in parts)
    return Preview([TenderPart(t, Money(a, invoice.currency)) for t, a in parts],
                   Money(due - covered, invoice.currency))


def _pay(invoice: Invoice, user: User, tender: PaymentTender, amount: int, now: datetime) -> None:
    n = len(invoice.payments) + 1
    key = f"invoice:{invoice.id}:pay:{n}:{tender}"
    receivable = ledger.user_account(user, AccountKind.RECEIVABLE)
    description = f"{TENDER_LABELS[tender]} paid {invoice.number}"
    if tender == PaymentTender.CREDIT:
        txn = credits.spend_credit(user=user, amount=Money(amount, invoice.currency),
                                   counter_account=receivable, idempotency_key=key,
                                   kind="invoice_payment", description=description, now=now)
    else:
        wallet = AccountKind.VOUCHER if tender == PaymentTender.VOUCHER else AccountKind.CASH
        txn = ledger.post_transaction(
            idempotency_key=key, kind="invoice_payment", user_id=user.id,
            description=description,
            legs=[(ledger.user_account(user, wallet), -amount), (receivable, amount)])
    invoicing.record_payment(invoice, tender=tender, amount=Money(amount, invoice.currency),
                             txn_id=txn.id)


def settle_invoice(invoice: Invoice, user: User, now: datetime | None = None) -> int:
    """Pay what the wallets can of one invoice; returns the number of payments made. The
    caller holds the user's settlement lock (settle_user / pay_now take it)."""
    now = now or utcnow()
    invoice = invoicing.lock_invoice(invoice)
    if InvoiceStatus(invoice.status) not in invoicing.UNPAID:
        return 0
    due = invoice.total_minor - invoice.amount_paid_minor
    parts = _split(due, _available(user, now))
    for tender, amount in parts:
        _pay(invoice, user, tender, amount, now)
    return len(parts)


def _lock_user(user: User) -> None:
    ledger.lock_accounts([ledger.user_account(user, AccountKind.RECEIVABLE)])


def settle_user(user: User, now: datetime | None = None) -> SettleResult:
    """Settle every unpaid invoice of the user, smallest total first."""
    now = now or utcnow()
    _lock_user(user)
    result = SettleResult()
    unpaid = list(db.session.scalars(select(Invoice).where(
        Invoice.user_id == user.id, Invoice.status.in_([str(s) for s in invoicing.UNPAID]))
        .order_by(Invoice.total_minor, Invoice.id)))
    for invoice in unpaid:
        result.payments += settle_invoice(invoice, user, now)
        if invoice.status == InvoiceStatus.PAID:
            result.paid.append(invoice.id)
    db.session.flush()
    return result


def pay_now(invoice: Invoice, user: User, now: datetime | None = None) -> Invoice:
    """The user's "Pay now" on one invoice."""
    if InvoiceStatus(invoice.status) not in invoicing.UNPAID:
        raise InvalidTransition(f"a {InvoiceStatus(invoice.status).label} invoice needs no payment")
    _lock_user(user)
    settle_invoice(invoice, user, now)
    db.session.flush()
    return invoice


def request_settlement(user_id: int) -> None:
    """Settle the user's invoices after this transaction commits (new money arrived)."""
    from jobs.queues import enqueue_after_commit

    enqueue_after_commit("settlement", "jobs.settlement.settle_user", user_id,
                         job_id=f"settle:{user_id}")


def users_with_unpaid() -> list[int]:
    return list(db.session.scalars(select(Invoice.user_id).where(
        Invoice.status.in_([str(s) for s in invoicing.UNPAID])).distinct()))

"""Settlement: unpaid invoices paid from what the user has, smallest total first.

Each invoice draws from credits (oldest expiry first), then the voucher balance, then the
prepaid (cash) balance, then the default card, then the other cards, mixing tenders; each
tender's part is one payment row and one ledger transaction. Settlement of one user is
serialized by the lock on their receivable account, and every payment re-reads the invoice
under its lock, so two settlement runs at once pay each invoice once.

``settle_user`` pays from the wallets inside the caller's transaction.
``settle`` is the whole run, cards included, and owns its transactions: a card charge is an
attempt row committed before the gateway is called (see card_payments), and the database
allows one charge in flight per invoice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from ...errors import NotFound
from ...extensions import db
from ...gateways import PaymentStatus
from ...models import (
    AccountKind,
    AttemptStatus,
    Event,
    Invoice,
    InvoiceStatus,
    LedgerAccount,
    PaymentAttempt,
    PaymentTender,
    User,
    utcnow,
)
from ...money import Money
from ...tasks import requests
from ..invoicing import invoices
from ..wallet import credits, ledger, settlement_requests
from . import card_charges, cards

log = logging.getLogger(__name__)

WALLET_TENDERS = (PaymentTender.CREDIT, PaymentTender.VOUCHER, PaymentTender.CASH)
TENDER_LABELS = {
    PaymentTender.CREDIT: "Credits",
    PaymentTender.VOUCHER: "Voucher balance",
    PaymentTender.CASH: "Prepaid balance",
    PaymentTender.CARD: "Card",
    PaymentTender.OFFLINE: "Bank transfer",
}


@dataclass(frozen=True)
class TenderPart:
    tender: PaymentTender
    amount: Money
    card: str | None = None  # the card's label for the card's part

    @property
    def label(self) -> str:
        return f"Card {self.card}" if self.card else TENDER_LABELS[self.tender]


@dataclass
class Preview:
    parts: list[TenderPart]
    remaining: Money  # what neither the wallets nor a card would cover


@dataclass
class SettleResult:
    paid: list[int] = field(default_factory=list)
    payments: int = 0
    card_attempts: int = 0
    needs_action: list[int] = field(default_factory=list)  # invoices waiting on 3-D Secure
    failed: list[int] = field(default_factory=list)  # invoices no tender could pay


def _available(user: User, now: datetime) -> dict[PaymentTender, int]:
    balances = ledger.balances(user)
    return {
        PaymentTender.CREDIT: credits.available_credit(user, now).amount_minor,
        PaymentTender.VOUCHER: balances.voucher.amount_minor,
        PaymentTender.CASH: balances.cash.amount_minor,
    }


def available_balances(user: User, now: datetime) -> dict[PaymentTender, int]:
    """What the credits, the voucher balance and the prepaid balance can pay now."""
    return _available(user, now)


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
    """Which tender would pay what of this invoice now (nothing is written): the wallets,
    then the default card for the rest."""
    due = invoice.total_minor - invoice.amount_paid_minor
    parts = _split(due, _available(user, now or utcnow())) if due > 0 else []
    covered = sum(amount for _, amount in parts)
    tenders = [TenderPart(t, Money(a, invoice.currency)) for t, a in parts]
    rest = due - covered
    saved = cards.list_cards(user) if rest > 0 and cards.cards_enabled() else []
    if saved:
        tenders.append(
            TenderPart(PaymentTender.CARD, Money(rest, invoice.currency), card=saved[0].label)
        )
        rest = 0
    return Preview(tenders, Money(rest, invoice.currency))


def _pay(invoice: Invoice, user: User, tender: PaymentTender, amount: int, now: datetime) -> None:
    n = len(invoice.payments) + 1
    key = f"invoice:{invoice.id}:pay:{n}:{tender}"
    receivable = ledger.user_account(user, AccountKind.RECEIVABLE)
    description = f"{TENDER_LABELS[tender]} paid {invoice.number}"
    if tender == PaymentTender.CREDIT:
        txn = credits.spend_credit(
            user=user,
            amount=Money(amount, invoice.currency),
            counter_account=receivable,
            idempotency_key=key,
            kind="invoice_payment",
            description=description,
            now=now,
        )
    else:
        wallet = AccountKind.VOUCHER if tender == PaymentTender.VOUCHER else AccountKind.CASH
        txn = ledger.post_transaction(
            idempotency_key=key,
            kind="invoice_payment",
            user_id=user.id,
            description=description,
            legs=[(ledger.user_account(user, wallet), -amount), (receivable, amount)],
        )
    invoices.record_payment(
        invoice, tender=tender, amount=Money(amount, invoice.currency), txn_id=txn.id
    )
    log.info(
        "settlement: invoice %s (%s) of user %s: %s paid %s (ledger transaction %s)",
        invoice.id,
        invoice.number,
        user.id,
        tender,
        Money(amount, invoice.currency),
        txn.id,
    )


def settle_invoice(invoice: Invoice, user: User, now: datetime | None = None) -> int:
    """Pay what the wallets can of one invoice; returns the number of payments made. The
    caller holds the user's settlement lock (settle_user and settle take it)."""
    now = now or utcnow()
    invoice = invoices.lock_invoice(invoice)
    if InvoiceStatus(invoice.status) not in invoices.UNPAID:
        return 0
    due = invoice.total_minor - invoice.amount_paid_minor
    parts = _split(due, _available(user, now))
    for tender, amount in parts:
        _pay(invoice, user, tender, amount, now)
    if parts:
        log.info(
            "settlement: invoice %s (%s) of user %s is %s after %d wallet payments, %s still due",
            invoice.id,
            invoice.number,
            user.id,
            invoice.status,
            len(parts),
            Money(invoice.total_minor - invoice.amount_paid_minor, invoice.currency),
        )
    return len(parts)


def _lock_user(user: User) -> None:
    ledger.lock_accounts([ledger.user_account(user, AccountKind.RECEIVABLE)])


def settle_user(user: User, now: datetime | None = None) -> SettleResult:
    """Settle every unpaid invoice of the user, smallest total first."""
    now = now or utcnow()
    _lock_user(user)
    result = SettleResult()
    for invoice in _unpaid(user):
        result.payments += settle_invoice(invoice, user, now)
        if invoice.status == InvoiceStatus.PAID:
            result.paid.append(invoice.id)
    db.session.flush()
    return result


def settle(
    user_id: int, *, invoice_id: int | None = None, now: datetime | None = None
) -> SettleResult:
    """The whole settlement of a user (or of one of their invoices): COMMITS.

    Unanswered card charges are resolved first; then the wallets pay what they can; then,
    smallest invoice first, the default card and then the other cards are charged for the
    rest, one attempt at a time: a decline moves on to the next card, a card that needs
    3-D Secure waits for the customer, and when no card works the invoice stays open,
    ``billing.payment.failed`` is recorded and the user is emailed.
    """
    now = now or utcnow()
    result = SettleResult()
    if cards.cards_enabled():
        card_charges.recover(user_id=user_id, now=now)
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}")
    if invoice_id is None:
        done = settle_user(user, now)
        result.paid += done.paid
        result.payments += done.payments
        targets = [i.id for i in _unpaid(user)]
    else:
        invoice = invoices.get_for_owner(user, invoice_id)
        _lock_user(user)
        result.payments += settle_invoice(invoice, user, now)
        if invoice.status == InvoiceStatus.PAID:
            result.paid.append(invoice.id)
        targets = [invoice.id] if invoice.status != InvoiceStatus.PAID else []
    db.session.commit()
    if not targets:
        _log_outcome(user_id, result, targets)
        return result
    if not (cards.cards_enabled() and cards.list_cards(user)):
        for target in targets:  # (Pay now shows the user what is missing instead)
            if invoice_id is None and _nothing_can_pay(db.session.get_one(Invoice, target)):
                result.failed.append(target)
        db.session.commit()
        _log_outcome(user_id, result, targets)
        return result
    for target in targets:
        _charge_cards(user_id, target, now, result)
    _log_outcome(user_id, result, targets)
    return result


def _log_outcome(user_id: int, result: SettleResult, targets: list[int]) -> None:
    moved = result.payments or result.card_attempts or result.failed or result.needs_action
    log.log(
        logging.INFO if moved else logging.DEBUG,
        "settlement of user %s: invoices paid %s, %d payments, %d card attempts, "
        "waiting for the customer %s, unpaid %s (of the invoices left to the cards: %s)",
        user_id,
        result.paid,
        result.payments,
        result.card_attempts,
        result.needs_action,
        result.failed,
        targets,
    )


def _nothing_can_pay(invoice: Invoice) -> bool:
    """The wallets left part of the invoice unpaid and the user has no card: the platform
    and the user are told, once per invoice (later runs stay quiet until money arrives)."""
    subject = f"invoice:{invoice.id}:no-payment-method"
    if db.session.scalar(
        select(Event.id).where(Event.name == "billing.payment.failed", Event.subject == subject)
    ):
        return False
    card_charges.payment_failed(invoice, [], subject=subject)
    return True


def _unpaid(user: User) -> list[Invoice]:
    """The user's unpaid invoices, smallest total first."""
    return list(
        db.session.scalars(
            select(Invoice)
            .where(
                Invoice.user_id == user.id, Invoice.status.in_([str(s) for s in invoices.UNPAID])
            )
            .order_by(Invoice.total_minor, Invoice.id)
        )
    )


def _charge_cards(user_id: int, invoice_id: int, now: datetime, result: SettleResult) -> None:
    """Charge the user's cards, default first, for what the wallets left of one invoice."""
    tried: list[int] = []
    failed_attempts: list[PaymentAttempt] = []
    while True:
        user = db.session.get_one(User, user_id)
        _lock_user(user)
        invoice = invoices.lock_invoice(db.session.get_one(Invoice, invoice_id))
        if InvoiceStatus(invoice.status) not in invoices.UNPAID:
            db.session.commit()
            return
        waiting = card_charges.open_attempt_for(user, invoice)
        if waiting is not None:  # a charge is in flight or waits for the customer
            if waiting.status == AttemptStatus.REQUIRES_ACTION:
                result.needs_action.append(invoice_id)
            db.session.commit()
            return
        result.payments += settle_invoice(invoice, user, now)  # money may have arrived
        due = invoice.total_minor - invoice.amount_paid_minor
        card = next((c for c in cards.list_cards(user) if c.id not in tried), None)
        if due <= 0 or card is None:
            if due > 0 and failed_attempts:
                card_charges.payment_failed(invoice, failed_attempts)
                result.failed.append(invoice.id)
                log.warning(
                    "settlement: invoice %s (%s) of user %s stays unpaid, %s due: every card "
                    "declined (attempts %s)",
                    invoice.id,
                    invoice.number,
                    user_id,
                    Money(due, invoice.currency),
                    [a.id for a in failed_attempts],
                )
            elif due <= 0:
                result.paid.append(invoice.id)
            db.session.commit()
            return
        attempt = card_charges.open_invoice_attempt(invoice, card, Money(due, invoice.currency))
        if attempt is None:  # another run started a charge a moment ago
            db.session.commit()
            return
        attempt_id = attempt.id
        log.info(
            "settlement: invoice %s (%s) of user %s: charging card %s for %s (attempt %s)",
            invoice_id,
            invoice.number,
            user_id,
            card.id,
            Money(due, invoice.currency),
            attempt_id,
        )
        db.session.commit()  # the attempt exists before the gateway hears of it
        result.card_attempts += 1
        answer = card_charges.charge(attempt_id)
        if answer is None:  # outcome unknown: recovery looks it up, nothing is resent
            return
        attempt = card_charges.apply_result(attempt_id, answer)
        db.session.commit()
        if answer.status is PaymentStatus.SUCCEEDED:
            result.payments += 1
            if db.session.get_one(Invoice, invoice_id).status == InvoiceStatus.PAID:
                result.paid.append(invoice_id)
            return
        if answer.status is not PaymentStatus.FAILED:
            result.needs_action.append(invoice_id)
            return
        tried.append(card.id)
        failed_attempts.append(attempt)


def users_with_unpaid() -> list[int]:
    return list(
        db.session.scalars(
            select(Invoice.user_id)
            .where(Invoice.status.in_([str(s) for s in invoices.UNPAID]))
            .distinct()
        )
    )


def request_where_money_waits(limit: int = 500) -> int:
    """The sweep: every user with an unpaid invoice and a voucher or prepaid balance whose
    settlement job is not waiting, running or failed for good gets one. (Cards alone wait
    for the nightly run: a declined card is not tried again every few minutes.)"""
    a = LedgerAccount.__table__.c
    funded = select(a.user_id).where(
        a.user_id.is_not(None),
        a.balance_minor > 0,
        a.kind.in_([str(AccountKind.CASH), str(AccountKind.VOUCHER)]),
    )
    ids = db.session.scalars(
        select(Invoice.user_id)
        .where(
            Invoice.status.in_([str(s) for s in invoices.UNPAID]),
            Invoice.user_id.in_(funded),
            requests.no_open_request("settle:", Invoice.user_id),
        )
        .distinct()
        .order_by(Invoice.user_id)
        .limit(limit)
    ).all()
    for user_id in ids:
        settlement_requests.request_settlement(user_id)
    return len(ids)

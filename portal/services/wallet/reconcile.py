"""Proves the ledger's invariants. Every check returns human-readable differences;
`flask billing reconcile` prints them and exits non-zero when there are any."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Subquery, case, func, select

from ...extensions import db
from ...models import (
    AccountKind,
    ArchivedLedgerTotal,
    ArchivedYear,
    CreditLot,
    CurrencyPin,
    Invoice,
    InvoiceLine,
    InvoicePayment,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    PaymentAttempt,
    PrepaidCharge,
    User,
)
from ...models.ledger import CREDIT_NORMAL, WALLET_KINDS
from ...money import currency_digits

Check = Callable[[], list[str]]
CHECKS: list[tuple[str, Check]] = []


def check(name: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS.append((name, fn))
        return fn

    return register


def _derived_balance() -> Subquery:
    """Normal-side balance per account, from the entries plus the movements of the archived
    years (whose entries `flask billing archive` removed)."""
    sign = case((LedgerAccount.kind.in_([str(k) for k in CREDIT_NORMAL]), 1), else_=-1)
    entries = (
        select(LedgerEntry.account_id, func.sum(LedgerEntry.amount_minor).label("amount"))
        .group_by(LedgerEntry.account_id)
        .subquery()
    )
    archived = (
        select(
            ArchivedLedgerTotal.account_id,
            func.sum(ArchivedLedgerTotal.amount_minor).label("amount"),
        )
        .group_by(ArchivedLedgerTotal.account_id)
        .subquery()
    )
    return (
        select(
            LedgerAccount.id,
            LedgerAccount.user_id,
            LedgerAccount.kind,
            LedgerAccount.balance_minor,
            (
                sign * (func.coalesce(entries.c.amount, 0) + func.coalesce(archived.c.amount, 0))
            ).label("derived"),
        )
        .outerjoin(entries, entries.c.account_id == LedgerAccount.id)
        .outerjoin(archived, archived.c.account_id == LedgerAccount.id)
        .subquery()
    )


def _archived_through() -> datetime | None:
    """The end of the newest archived year (archiving goes oldest year first)."""
    year = db.session.scalar(select(func.max(ArchivedYear.year)))
    return None if year is None else datetime(year + 1, 1, 1, tzinfo=UTC)


@check("transactions sum to zero")
def zero_sum() -> list[str]:
    rows = db.session.execute(
        select(LedgerEntry.transaction_id, LedgerEntry.currency, func.sum(LedgerEntry.amount_minor))
        .group_by(LedgerEntry.transaction_id, LedgerEntry.currency)
        .having(func.sum(LedgerEntry.amount_minor) != 0)
    ).all()
    problems = [f"transaction {t} sums to {s} {c}, not 0" for t, c, s in rows]
    # A transaction of an archived year has its entries in the archive (checked to sum to
    # zero when archived; the year's totals are checked below).
    through = _archived_through()
    empty = db.session.scalars(
        select(LedgerTransaction.id).where(
            ~select(LedgerEntry.id)
            .where(LedgerEntry.transaction_id == LedgerTransaction.id)
            .exists(),
            *([] if through is None else [LedgerTransaction.created_at >= through]),
        )
    ).all()
    problems += [f"transaction {t} has no entries" for t in empty]
    years = db.session.execute(
        select(
            ArchivedLedgerTotal.year,
            ArchivedLedgerTotal.currency,
            func.sum(ArchivedLedgerTotal.amount_minor),
        )
        .group_by(ArchivedLedgerTotal.year, ArchivedLedgerTotal.currency)
        .having(func.sum(ArchivedLedgerTotal.amount_minor) != 0)
    ).all()
    problems += [f"archived year {y} sums to {s} {c}, not 0" for y, c, s in years]
    return problems


@check("entries match their account's currency")
def entry_currency() -> list[str]:
    rows = db.session.execute(
        select(LedgerEntry.id, LedgerEntry.currency, LedgerAccount.currency)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .where(LedgerEntry.currency != LedgerAccount.currency)
    ).all()
    return [f"entry {e} is {c} on a {a} account" for e, c, a in rows]


@check("cached balances equal the entries")
def cached_equals_derived() -> list[str]:
    derived = _derived_balance()
    rows = db.session.execute(
        select(derived).where(
            derived.c.balance_minor.is_not(None), derived.c.balance_minor != derived.c.derived
        )
    ).all()
    return [
        f"account {r.id} ({r.kind}, user {r.user_id}) caches {r.balance_minor}, "
        f"entries give {r.derived}"
        for r in rows
    ]


@check("no wallet is negative")
def no_negative_wallet() -> list[str]:
    derived = _derived_balance()
    rows = db.session.execute(
        select(derived).where(
            derived.c.kind.in_([str(k) for k in WALLET_KINDS]), derived.c.derived < 0
        )
    ).all()
    return [f"account {r.id} ({r.kind}, user {r.user_id}) is negative: {r.derived}" for r in rows]


@check("credit lots add up to the credit balance")
def credit_lots() -> list[str]:
    lots = (
        select(CreditLot.account_id, func.sum(CreditLot.remaining_minor).label("remaining"))
        .group_by(CreditLot.account_id)
        .subquery()
    )
    rows = db.session.execute(
        select(
            LedgerAccount.id,
            LedgerAccount.user_id,
            LedgerAccount.balance_minor,
            func.coalesce(lots.c.remaining, 0),
        )
        .outerjoin(lots, lots.c.account_id == LedgerAccount.id)
        .where(
            LedgerAccount.kind == str(AccountKind.CREDIT),
            LedgerAccount.balance_minor != func.coalesce(lots.c.remaining, 0),
        )
    ).all()
    return [f"credit account {a} (user {u}) holds {b} but its lots hold {r}" for a, u, b, r in rows]


def find_discrepancies() -> list[str]:
    problems: list[str] = []
    for name, fn in CHECKS:
        problems += [f"{name}: {p}" for p in fn()]
    return problems


@check("invoices add up")
def invoices_add_up() -> list[str]:

    lines = (
        select(InvoiceLine.invoice_id, func.sum(InvoiceLine.amount_minor).label("lines"))
        .group_by(InvoiceLine.invoice_id)
        .subquery()
    )
    # Credits applied when the invoice was issued (an "invoice_credit" posting) are its
    # credits; credits spent on it later by settlement are payments like any other tender.
    applied = (InvoicePayment.tender == "credit") & (LedgerTransaction.kind == "invoice_credit")
    paid = (
        select(
            InvoicePayment.invoice_id,
            func.sum(case((applied, 0), else_=InvoicePayment.amount_minor)).label("paid"),
            func.sum(case((applied, InvoicePayment.amount_minor), else_=0)).label("credits"),
        )
        .join(LedgerTransaction, LedgerTransaction.id == InvoicePayment.ledger_transaction_id)
        .group_by(InvoicePayment.invoice_id)
        .subquery()
    )
    rows = db.session.execute(
        select(
            Invoice.id,
            Invoice.number,
            Invoice.status,
            Invoice.subtotal_minor,
            Invoice.credits_minor,
            Invoice.total_minor,
            Invoice.amount_paid_minor,
            func.coalesce(lines.c.lines, 0),
            func.coalesce(paid.c.paid, 0),
            func.coalesce(paid.c.credits, 0),
        )
        .outerjoin(lines, lines.c.invoice_id == Invoice.id)
        .outerjoin(paid, paid.c.invoice_id == Invoice.id)
    ).all()
    problems = []
    for (
        iid,
        number,
        status,
        subtotal,
        credits,
        total,
        amount_paid,
        line_sum,
        paid_sum,
        credit_sum,
    ) in rows:
        name = number or f"draft {iid}"
        if subtotal != line_sum:
            problems.append(f"invoice {name}: subtotal {subtotal} != lines {line_sum}")
        if status != "draft" and total != max(0, subtotal) - credits:
            problems.append(f"invoice {name}: total {total} != subtotal - credits")
        if credits != credit_sum:
            problems.append(f"invoice {name}: credits {credits} != credit payments {credit_sum}")
        if amount_paid != paid_sum:
            problems.append(f"invoice {name}: amount paid {amount_paid} != payments {paid_sum}")
        if status == "paid" and paid_sum != total:
            problems.append(
                f"invoice {name} is paid but its payments sum to {paid_sum}, not {total}"
            )
        if status != "paid" and total and paid_sum >= total:
            problems.append(f"invoice {name} is {status} but fully paid")
    return problems


@check("receivables equal what unpaid invoices owe")
def receivables() -> list[str]:

    owed = (
        select(
            Invoice.user_id,
            Invoice.currency,
            func.sum(Invoice.total_minor - Invoice.amount_paid_minor).label("owed"),
        )
        .where(Invoice.status.in_(["open", "overdue"]))
        .group_by(Invoice.user_id, Invoice.currency)
        .subquery()
    )
    rows = db.session.execute(
        select(
            LedgerAccount.user_id,
            LedgerAccount.currency,
            LedgerAccount.balance_minor,
            func.coalesce(owed.c.owed, 0),
        )
        .outerjoin(
            owed,
            (owed.c.user_id == LedgerAccount.user_id) & (owed.c.currency == LedgerAccount.currency),
        )
        .where(
            LedgerAccount.kind == str(AccountKind.RECEIVABLE),
            LedgerAccount.balance_minor != func.coalesce(owed.c.owed, 0),
        )
    ).all()
    return [f"user {u} receivable {b} {c} != unpaid invoices {o}" for u, c, b, o in rows]


@check("prepaid usage holds the charges no statement holds yet")
def prepaid_usage() -> list[str]:
    """The prepaid_usage account of each currency holds what the hourly charges took and no
    statement has taken over yet."""
    held = dict(
        db.session.execute(
            select(LedgerAccount.currency, func.coalesce(func.sum(LedgerEntry.amount_minor), 0))
            .join(LedgerEntry, LedgerEntry.account_id == LedgerAccount.id)
            .where(LedgerAccount.kind == str(AccountKind.PREPAID_USAGE))
            .group_by(LedgerAccount.currency)
        ).all()
    )
    c = PrepaidCharge
    pending = dict(
        db.session.execute(
            select(c.currency, func.sum(c.credit_minor + c.voucher_minor + c.cash_minor))
            .where(c.invoice_id.is_(None))
            .group_by(c.currency)
        ).all()
    )
    return [
        f"prepaid usage {currency} holds {int(held.get(currency) or 0)}, but the charges not "
        f"on a statement sum to {int(pending.get(currency) or 0)}"
        for currency in sorted(set(held) | set(pending))
        if int(held.get(currency) or 0) != int(pending.get(currency) or 0)
    ]


@check("every successful card charge is booked, once")
def card_charges_booked() -> list[str]:
    """A succeeded attempt has its ledger transaction (card:{key} for invoices,
    topup:{payment} for top-ups); a card payment row points at one of those."""
    expected = case(
        (
            PaymentAttempt.purpose == "topup",
            "topup:"
            + func.coalesce(PaymentAttempt.gateway_payment_id, PaymentAttempt.idempotency_key),
        ),
        else_="card:" + PaymentAttempt.idempotency_key,
    )
    rows = db.session.execute(
        select(PaymentAttempt.id, PaymentAttempt.idempotency_key)
        .outerjoin(LedgerTransaction, LedgerTransaction.idempotency_key == expected)
        .where(PaymentAttempt.status == "succeeded", LedgerTransaction.id.is_(None))
    ).all()
    problems = [f"card attempt {i} ({key}) succeeded but is not in the ledger" for i, key in rows]
    booked = db.session.execute(
        select(LedgerTransaction.idempotency_key).where(
            LedgerTransaction.kind == "card_payment",
            ~LedgerTransaction.idempotency_key.in_(
                select("card:" + PaymentAttempt.idempotency_key).where(
                    PaymentAttempt.status == "succeeded"
                )
            ),
        )
    ).all()
    problems += [f"ledger card payment {key} has no succeeded attempt" for (key,) in booked]
    return problems


def refuse_changed_currency_digits() -> None:
    """Long-running processes call this at start: they never run on amounts whose meaning the
    code would change. Raises SystemExit with a one-line reason."""
    try:
        problems = currency_pins()
    finally:
        db.session.rollback()  # a read on SQLite holds the write lock (BEGIN IMMEDIATE)
    if problems:
        raise SystemExit(f"error: {problems[0]}")


@check("currency digits are pinned")
def currency_pins() -> list[str]:
    pins = {p.code: p.digits for p in db.session.scalars(select(CurrencyPin))}
    used = set(db.session.scalars(select(User.currency).distinct()))
    used |= set(db.session.scalars(select(LedgerAccount.currency).distinct()))
    problems = [
        f"{code} is in use but its digits were never pinned" for code in sorted(used - set(pins))
    ]
    for code, digits in sorted(pins.items()):
        try:
            now = currency_digits(code)
        except ValueError:
            now = None
        if now != digits:
            problems.append(
                f"{code} amounts are stored with {digits} digits but the code now "
                f"says {now}: a currency's digits must never change"
            )
    return problems

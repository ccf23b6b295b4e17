"""Invoices: one per user and billing period, generated in bulk from the usage rollups,
finalized with a gap-free number, never edited afterwards.

Lifecycle (one table, TRANSITIONS): draft -> open ("sent") -> paid | overdue -> paid, and
void (not once paid). A run for a period works chunk by chunk (the metering chunks): under
the chunk's mark lock it meters the chunk up to the period end, skips users who already have
a live invoice for the period, aggregates the rollups in one query, builds the lines
(rounded once each, ROUND_HALF_UP), and writes invoices, lines, ledger postings, numbers and
events in bulk. Credits are applied oldest expiry first. Usage changed after a period was
invoiced (usage_adjustments) becomes adjustment lines on the next invoice.
"""
from __future__ import annotations

import calendar
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from flask import current_app
from sqlalchemy import func, insert, select, text, update

from ..extensions import db
from ..models import (AccountKind, CreditLot, Deployment, Invoice, InvoiceCounter, InvoiceKind,
                      InvoiceLine, InvoicePayment, InvoiceStatus, LedgerAccount, PaymentTender,
                      UsageAdjustment, User, utcnow)
from ..money import Money, currency_digits, format_money
from . import credits, events, ledger, metering, usage
from .errors import Conflict, InvalidTransition, NotFound, ValidationFailed

S = InvoiceStatus
TRANSITIONS: dict[S, frozenset[S]] = {
    S.DRAFT: frozenset({S.OPEN, S.PAID, S.VOID}),
    S.OPEN: frozenset({S.PAID, S.OVERDUE, S.VOID}),
    S.OVERDUE: frozenset({S.PAID, S.VOID}),
    S.PAID: frozenset(),
    S.VOID: frozenset(),
}
LIVE = (S.DRAFT, S.OPEN, S.PAID, S.OVERDUE)
UNPAID = (S.OPEN, S.OVERDUE)


def transition(invoice: Invoice, target: S) -> None:
    current = S(invoice.status)
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(f"a {current.label} invoice cannot become {target.label}")
    invoice.status = str(target)


# -- periods ---------------------------------------------------------------------------------

def invoice_day() -> int:
    return current_app.config["BILLING"].invoice_day


def last_complete_period(now: datetime | None = None) -> tuple[datetime, datetime]:
    """The latest billing period that has ended."""
    current_start, _ = usage.period_containing(now or utcnow(), invoice_day())
    return usage.period_containing(current_start - timedelta(days=1), invoice_day())


def check_period(start: datetime, end: datetime, now: datetime | None = None) -> None:
    """Invoices cover whole billing periods that have ended."""
    expected = usage.period_containing(start, invoice_day())
    if (start, end) != expected:
        raise ValidationFailed(
            "an invoice covers one billing period", fields={
                "period_start": f"must be a billing period: from the invoice day "
                                f"({invoice_day()}) to the day before the next one"})
    if end > metering.last_complete_hour(now):
        raise ValidationFailed.field("period_end", "has not ended yet")


# -- lines (pure) ----------------------------------------------------------------------------

def _round_ratio(numerator: int, denominator: int, digits: int) -> int:
    """numerator/denominator micro-units in minor units, ROUND_HALF_UP, in integers."""
    num = numerator * 10 ** digits
    den = denominator * 1_000_000
    sign = -1 if num < 0 else 1
    q, r = divmod(abs(num), den)
    return sign * (q + (1 if 2 * r >= den else 0))


def _decimal(numerator: int, denominator: int, places: int = 6) -> Decimal:
    if denominator == 0:
        return Decimal(0)
    value = (Decimal(numerator) / Decimal(denominator)).quantize(
        Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return value.normalize() if value else Decimal(0)


@dataclass
class Usage:
    """Summed rollup columns of one deployment in one period. Storage is kept per calendar
    month, because a GB-month is priced against the length of its month."""
    cpu_ms: int = 0
    cpu_cost: int = 0
    memory_ms: int = 0
    memory_cost: int = 0
    storage: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (y, m) -> [ms, cost]
    instance_s: int = 0
    instance_cost: int = 0
    ip_s: int = 0
    ip_cost: int = 0

    def resources(self) -> list[tuple[str, int, int, int, int]]:
        """(resource, quantity num, quantity den, cost num, cost den) in units and micros."""
        out = [("cpu", self.cpu_ms, 3_600_000, self.cpu_cost, 3_600_000),
               ("memory", self.memory_ms, 3_600_000, self.memory_cost, 3_600_000)]
        if self.storage:
            # Sum a/da + b/db exactly over a common denominator.
            qn, cn, den = 0, 0, 1
            for (y, m), (ms, cost) in sorted(self.storage.items()):
                d = 1000 * calendar.monthrange(y, m)[1] * 86400
                qn, cn, den = qn * d + ms * den, cn * d + cost * den, den * d
            out.append(("storage", qn, den, cn, den))
        out += [("instance", self.instance_s, 3600, self.instance_cost, 3600),
                ("ip", self.ip_s, 3600, self.ip_cost, 3600)]
        return out


@dataclass
class LineDraft:
    kind: str
    deployment_id: int | None
    resource: str | None
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    amount_minor: int


def build_lines(usage_by_deployment: dict[int, Usage], names: dict[int, str], currency: str,
                kind: str = "usage") -> list[LineDraft]:
    """One line per deployment and resource with something to bill, rounded once."""
    digits = currency_digits(currency)
    lines = []
    for dep_id in sorted(usage_by_deployment, key=lambda d: (names.get(d, ""), d)):
        for resource, qn, qd, cn, cd in usage_by_deployment[dep_id].resources():
            if qn == 0 and cn == 0:
                continue
            amount = _round_ratio(cn, cd, digits)
            unit_price = _decimal(cn * qd, cd * qn * 1_000_000) if qn else Decimal(0)
            label = usage.LABELS[resource]
            prefix = "Adjustment: " if kind == "adjustment" else ""
            lines.append(LineDraft(kind, dep_id, resource, f"{prefix}{names.get(dep_id, dep_id)} · {label}",
                                   _decimal(qn, qd), usage.UNITS[resource], unit_price, amount))
    return lines


# -- aggregation -----------------------------------------------------------------------------

_SUMS = ("SUM(cpu_ms), SUM(cpu_cost), SUM(memory_ms), SUM(memory_cost), "
         "SUM(CASE WHEN day < :split THEN storage_ms ELSE 0 END), "
         "SUM(CASE WHEN day < :split THEN storage_cost ELSE 0 END), "
         "SUM(CASE WHEN day >= :split THEN storage_ms ELSE 0 END), "
         "SUM(CASE WHEN day >= :split THEN storage_cost ELSE 0 END), "
         "SUM(instance_s), SUM(instance_cost), SUM(ip_s), SUM(ip_cost)")


def _to_usage(row, first_month: tuple[int, int], second_month: tuple[int, int]) -> Usage:
    u = Usage(cpu_ms=int(row[0]), cpu_cost=int(row[1]), memory_ms=int(row[2]),
              memory_cost=int(row[3]), instance_s=int(row[8]), instance_cost=int(row[9]),
              ip_s=int(row[10]), ip_cost=int(row[11]))
    if row[4] or row[5]:
        u.storage[first_month] = [int(row[4]), int(row[5])]
    if row[6] or row[7]:
        u.storage[second_month] = [int(row[6]), int(row[7])]
    return u


def _period_usage(user_lo: int, user_hi: int, start: datetime, end: datetime,
                  user_ids: list[int] | None) -> dict[int, dict[int, Usage]]:
    """Per user, per deployment: the period's summed rollups, in one query."""
    split = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
    months = ((start.year, start.month), (split.year, split.month))
    where = "user_id >= :lo AND user_id < :hi AND day >= :start AND day < :end"
    params = {"lo": user_lo, "hi": user_hi, "start": start.date(), "end": end.date(),
              "split": split}
    if user_ids is not None:
        where += " AND user_id IN (" + ", ".join(str(int(u)) for u in user_ids) + ")"
    result: dict[int, dict[int, Usage]] = defaultdict(dict)
    for row in db.session.execute(text(
            f"SELECT user_id, deployment_id, {_SUMS} FROM usage_daily WHERE {where} "
            "GROUP BY user_id, deployment_id"), params):
        result[row[0]][row[1]] = _to_usage(row[2:], *months)
    return result


def _pending_adjustments(user_lo: int, user_hi: int, user_ids: list[int] | None
                         ) -> dict[int, tuple[dict[int, Usage], list[int]]]:
    query = select(UsageAdjustment).where(UsageAdjustment.invoice_id.is_(None),
                                          UsageAdjustment.user_id >= user_lo,
                                          UsageAdjustment.user_id < user_hi)
    if user_ids is not None:
        query = query.where(UsageAdjustment.user_id.in_(user_ids))
    out: dict[int, tuple[dict[int, Usage], list[int]]] = {}
    for adj in db.session.scalars(query):
        per_dep, ids = out.setdefault(adj.user_id, ({}, []))
        u = per_dep.setdefault(adj.deployment_id, Usage())
        u.cpu_ms += adj.cpu_ms
        u.cpu_cost += adj.cpu_cost
        u.memory_ms += adj.memory_ms
        u.memory_cost += adj.memory_cost
        month = u.storage.setdefault((adj.day.year, adj.day.month), [0, 0])
        month[0] += adj.storage_ms
        month[1] += adj.storage_cost
        u.instance_s += adj.instance_s
        u.instance_cost += adj.instance_cost
        u.ip_s += adj.ip_s
        u.ip_cost += adj.ip_cost
        ids.append(adj.id)
    return out


# -- numbers ---------------------------------------------------------------------------------

def reserve_numbers(year: int, count: int) -> list[str]:
    """``count`` consecutive numbers for ``year``, under the counter row's lock: gap-free
    because they are taken in the transaction that finalizes the invoices."""
    db.session.execute(ledger._dialect_insert(InvoiceCounter.__table__).values(
        year=year, last_number=0).on_conflict_do_nothing())
    last = db.session.execute(
        update(InvoiceCounter).where(InvoiceCounter.year == year)
        .values(last_number=InvoiceCounter.last_number + count)
        .returning(InvoiceCounter.last_number)).scalar_one()
    return [f"INV-{year}-{n:06d}" for n in range(last - count + 1, last + 1)]


# -- generation ------------------------------------------------------------------------------

@dataclass
class RunResult:
    invoices: int = 0
    skipped: int = 0
    total_minor: int = 0
    invoice_ids: list[int] = field(default_factory=list)

    def add(self, other: RunResult) -> None:
        self.invoices += other.invoices
        self.skipped += other.skipped
        self.total_minor += other.total_minor
        self.invoice_ids += other.invoice_ids

    def figures(self) -> dict:
        return {"invoices": self.invoices, "skipped": self.skipped,
                "total_minor": self.total_minor}


def generate_chunk(chunk: int, start: datetime, end: datetime, *, user_ids: list[int] | None = None,
                   created_by: User | None = None, now: datetime | None = None) -> RunResult:
    """Invoice the users of one chunk (or just ``user_ids`` in it) for [start, end)."""
    now = now or utcnow()
    result = RunResult()
    size = metering.chunk_size()
    lo, hi = chunk * size, (chunk + 1) * size
    mark = metering.lock_mark(chunk)  # one invoice run (and metering) per chunk at a time
    if mark is not None and mark.metered_through < end:
        metering.meter_chunk(chunk, end)
    usage_by_user = _period_usage(lo, hi, start, end, user_ids)
    adjustments = _pending_adjustments(lo, hi, user_ids)
    candidates = set(usage_by_user) | set(adjustments)
    if not candidates:
        return result
    existing = set(db.session.scalars(select(Invoice.user_id).where(
        Invoice.user_id.in_(candidates), Invoice.period_start == start,
        Invoice.kind == InvoiceKind.USAGE, Invoice.status != S.VOID)))
    todo = sorted(candidates - existing)
    result.skipped = len(existing)
    if not todo:
        return result

    users = {u.id: u for u in db.session.scalars(select(User).where(User.id.in_(todo)))}
    dep_ids = {d for uid in todo for d in usage_by_user.get(uid, {})} | {
        d for uid in todo for d in adjustments.get(uid, ({}, []))[0]}
    names = {d.id: f"{d.name} ({d.external_id})" if d.name else d.external_id
             for d in db.session.scalars(select(Deployment).where(Deployment.id.in_(dep_ids)))}

    drafts: dict[int, list[LineDraft]] = {}
    for uid in todo:
        currency = users[uid].currency
        lines = build_lines(usage_by_user.get(uid, {}), names, currency)
        lines += build_lines(adjustments.get(uid, ({}, []))[0], names, currency, "adjustment")
        drafts[uid] = lines

    invoice_rows = [{"user_id": uid, "kind": str(InvoiceKind.USAGE), "status": str(S.DRAFT),
                     "period_start": start, "period_end": end, "currency": users[uid].currency,
                     "subtotal_minor": sum(l.amount_minor for l in drafts[uid]),
                     "credits_minor": 0, "total_minor": 0, "amount_paid_minor": 0,
                     "created_at": now, "created_by_id": created_by.id if created_by else None,
                     "pdf_status": "none"} for uid in todo]
    invoice_ids = {}
    for row_user, invoice_id in db.session.execute(
            insert(Invoice).returning(Invoice.user_id, Invoice.id), invoice_rows):
        invoice_ids[row_user] = invoice_id
    db.session.execute(insert(InvoiceLine), [
        {"invoice_id": invoice_ids[uid], "position": n, "kind": l.kind,
         "deployment_id": l.deployment_id, "resource": l.resource,
         "description": l.description[:300], "quantity": f"{l.quantity:f}", "unit": l.unit,
         "unit_price": f"{l.unit_price:f}", "amount_minor": l.amount_minor}
        for uid in todo for n, l in enumerate(drafts[uid], 1)])
    for uid, (_, adj_ids) in adjustments.items():
        if uid in invoice_ids and adj_ids:
            db.session.execute(update(UsageAdjustment).where(UsageAdjustment.id.in_(adj_ids))
                               .values(invoice_id=invoice_ids[uid]))

    _finalize_many([invoice_ids[uid] for uid in todo], users, now)
    result.invoices = len(todo)
    result.invoice_ids = [invoice_ids[uid] for uid in todo]
    result.total_minor = sum(r["subtotal_minor"] for r in invoice_rows)
    return result


def _finalize_many(invoice_ids: list[int], users: dict[int, User], now: datetime) -> None:
    """Number, post to the ledger, apply credits, freeze the snapshot, record the event."""
    from .invoice_documents import request_pdf

    invoices = list(db.session.scalars(select(Invoice).where(Invoice.id.in_(invoice_ids))
                                       .order_by(Invoice.id)))
    numbers = reserve_numbers(now.year, len(invoices))
    receivables = _receivable_accounts({i.user_id for i in invoices})
    revenue: dict[str, LedgerAccount] = {}
    postings = []
    for invoice, number in zip(invoices, numbers):
        invoice.number = number
        invoice.finalized_at = now
        invoice.due_at = now + timedelta(days=current_app.config.get("INVOICE_NET_DAYS", 14))
        if invoice.currency not in revenue:
            revenue[invoice.currency] = ledger.system_account(AccountKind.REVENUE, invoice.currency)
        if invoice.subtotal_minor > 0:
            postings.append(ledger.Posting(
                f"invoice:{invoice.id}:issue", "invoice", invoice.user_id,
                f"Invoice {number}", invoice.currency,
                ((receivables[invoice.user_id], "receivable", -invoice.subtotal_minor),
                 (revenue[invoice.currency].id, "revenue", invoice.subtotal_minor))))
    ledger.post_many(postings)

    credit_holders = set(db.session.scalars(select(LedgerAccount.user_id).where(
        LedgerAccount.user_id.in_([i.user_id for i in invoices]),
        LedgerAccount.kind == str(AccountKind.CREDIT), LedgerAccount.balance_minor > 0)))
    for invoice in invoices:
        if invoice.subtotal_minor < 0:
            _credit_back(invoice, users[invoice.user_id])
        elif invoice.subtotal_minor > 0 and invoice.user_id in credit_holders:
            _apply_credits(invoice, users[invoice.user_id], now)
        invoice.total_minor = max(0, invoice.subtotal_minor) - invoice.credits_minor
        transition(invoice, S.PAID if invoice.total_minor == 0 else S.OPEN)
        if invoice.total_minor == 0:
            invoice.paid_at = now
    db.session.flush()
    for invoice in invoices:
        invoice.snapshot = build_snapshot(invoice, users[invoice.user_id])
        request_pdf(invoice)
    events.record_many([("billing.invoice.created", f"invoice:{i.id}", invoice_event(i), i.user_id)
                        for i in invoices])
    events.record_many([("billing.invoice.paid", f"invoice:{i.id}", invoice_event(i), i.user_id)
                        for i in invoices if i.status == S.PAID])
    db.session.flush()
    # Open invoices of users with money in a wallet are settled once this commits.
    from .settlement import request_settlement

    funded = set(db.session.scalars(select(LedgerAccount.user_id).where(
        LedgerAccount.user_id.in_([i.user_id for i in invoices if i.status == S.OPEN]),
        LedgerAccount.kind.in_([str(AccountKind.VOUCHER), str(AccountKind.CASH)]),
        LedgerAccount.balance_minor > 0)))
    for user_id in sorted(funded):
        request_settlement(user_id)


def _receivable_accounts(user_ids: set[int]) -> dict[int, int]:
    found = dict(db.session.execute(select(LedgerAccount.user_id, LedgerAccount.id).where(
        LedgerAccount.user_id.in_(user_ids), LedgerAccount.kind == str(AccountKind.RECEIVABLE))).all())
    for uid in user_ids - set(found):
        found[uid] = ledger.user_account(uid, AccountKind.RECEIVABLE).id
    return found


def _apply_credits(invoice: Invoice, user: User, now: datetime) -> None:
    """Credits pay first, oldest expiry first, as far as they reach."""
    available = credits.available_credit(user, now).amount_minor
    amount = min(available, invoice.subtotal_minor)
    if amount <= 0:
        return
    receivable = ledger.user_account(user, AccountKind.RECEIVABLE)
    txn = credits.spend_credit(user=user, amount=Money(amount, invoice.currency),
                               counter_account=receivable,
                               idempotency_key=f"invoice:{invoice.id}:credit", kind="invoice_credit",
                               description=f"Credits applied to {invoice.number}", now=now)
    db.session.add(InvoicePayment(invoice_id=invoice.id, tender=str(PaymentTender.CREDIT),
                                  amount_minor=amount, currency=invoice.currency,
                                  ledger_transaction_id=txn.id))
    invoice.credits_minor = amount


def _credit_back(invoice: Invoice, user: User) -> None:
    """Adjustments larger than the period's usage: the difference becomes a credit."""
    amount = -invoice.subtotal_minor
    lot, _ = credits.grant_credit(user=user, amount=Money(amount, invoice.currency),
                                  reason=f"Usage adjustment on {invoice.number}",
                                  idempotency_key=f"invoice:{invoice.id}:credit-back",
                                  source=AccountKind.REVENUE)
    return lot


# -- one user, on demand ---------------------------------------------------------------------

def generate_for_user(user: User, start: datetime, end: datetime, *,
                      created_by: User | None = None) -> tuple[Invoice, bool]:
    """The user's invoice for one billing period, made now if it does not exist yet.
    Returns (invoice, created)."""
    check_period(start, end)
    result = generate_chunk(metering.chunk_of(user.id), start, end, user_ids=[user.id],
                            created_by=created_by)
    invoice = db.session.scalar(select(Invoice).where(
        Invoice.user_id == user.id, Invoice.period_start == start,
        Invoice.kind == InvoiceKind.USAGE, Invoice.status != S.VOID))
    if invoice is None:
        raise Conflict("nothing to invoice: the user has no usage in this period",
                       fields={"period_start": "has no usage for this user"})
    return invoice, bool(result.invoices)


def generate_period(start: datetime, end: datetime, now: datetime | None = None) -> RunResult:
    """Every chunk in this process, one transaction per chunk (the CLI)."""
    check_period(start, end, now)
    totals = RunResult()
    for chunk in chunks_with_users():
        totals.add(generate_chunk(chunk, start, end, now=now))
        db.session.commit()
    return totals


def chunks_with_users() -> list[int]:
    return list(db.session.scalars(select(metering.MeterMark.chunk).order_by(metering.MeterMark.chunk)))


# -- lifecycle -------------------------------------------------------------------------------

def get_invoice(invoice_id: int, *, user: User | None = None) -> Invoice:
    query = select(Invoice).where(Invoice.id == invoice_id)
    if user is not None:
        query = query.where(Invoice.user_id == user.id)
    invoice = db.session.scalar(query)
    if invoice is None:
        raise NotFound("no such invoice")
    return invoice


def lock_invoice(invoice: Invoice) -> Invoice:
    return db.session.scalar(select(Invoice).where(Invoice.id == invoice.id).with_for_update()
                             .execution_options(populate_existing=True))


def record_payment(invoice: Invoice, *, tender: PaymentTender, amount: Money, txn_id: int,
                   reference: str = "", created_by: User | None = None) -> InvoicePayment:
    """Book a payment that the ledger already holds; marks the invoice paid when covered."""
    payment = InvoicePayment(invoice_id=invoice.id, tender=str(tender),
                             amount_minor=amount.amount_minor, currency=amount.currency,
                             reference=reference[:200], ledger_transaction_id=txn_id,
                             created_by_id=created_by.id if created_by else None)
    db.session.add(payment)
    invoice.amount_paid_minor += amount.amount_minor
    if invoice.amount_paid_minor == invoice.total_minor:
        transition(invoice, S.PAID)
        invoice.paid_at = utcnow()
        events.record("billing.invoice.paid", f"invoice:{invoice.id}", invoice_event(invoice),
                      invoice.user_id)
    db.session.flush()
    return payment


def record_offline_payment(invoice: Invoice, *, amount: Money, reference: str,
                           recorded_by: User | None = None) -> InvoicePayment:
    """A payment made outside the portal (bank transfer), booked through the ledger."""
    invoice = lock_invoice(invoice)
    if S(invoice.status) not in UNPAID:
        raise InvalidTransition(f"a {S(invoice.status).label} invoice takes no payments")
    if amount.currency != invoice.currency:
        raise ValidationFailed.field("amount", f"must be in {invoice.currency}")
    if amount.amount_minor <= 0:
        raise ValidationFailed.field("amount", "must be greater than 0")
    if amount.amount_minor > invoice.total_minor - invoice.amount_paid_minor:
        raise ValidationFailed.field("amount", f"is more than the amount due "
                                               f"({format_money(invoice.amount_due)})")
    reference = (reference or "").strip()
    if not reference:
        raise ValidationFailed.field("reference", "is required")
    count = len(invoice.payments)
    user = db.session.get(User, invoice.user_id)
    txn = ledger.post_transaction(
        idempotency_key=f"invoice:{invoice.id}:offline:{count + 1}", kind="offline_payment",
        user_id=invoice.user_id, created_by_id=recorded_by.id if recorded_by else None,
        description=f"Payment for {invoice.number}: {reference}",
        legs=[(ledger.system_account(AccountKind.OFFLINE_CLEARING, invoice.currency),
               -amount.amount_minor),
              (ledger.user_account(user, AccountKind.RECEIVABLE), amount.amount_minor)])
    return record_payment(invoice, tender=PaymentTender.OFFLINE, amount=amount, txn_id=txn.id,
                          reference=reference, created_by=recorded_by)


def void_invoice(invoice: Invoice, *, reason: str, voided_by: User | None = None) -> Invoice:
    """Cancel an unpaid invoice: its ledger posting is reversed, applied credits come back
    as a new credit lot, its late-usage adjustments return to pending."""
    invoice = lock_invoice(invoice)
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed.field("reason", "is required")
    if invoice.amount_paid_minor:
        raise Conflict("payments were made on this invoice; refund them before voiding it")
    transition(invoice, S.VOID)
    user = db.session.get(User, invoice.user_id)
    if invoice.finalized_at is not None and invoice.subtotal_minor > 0:
        legs = [(ledger.system_account(AccountKind.REVENUE, invoice.currency), -invoice.subtotal_minor)]
        if invoice.total_minor:
            legs.append((ledger.user_account(user, AccountKind.RECEIVABLE), invoice.total_minor))
        if invoice.credits_minor:
            legs.append((ledger.user_account(user, AccountKind.CREDIT), invoice.credits_minor))
        txn = ledger.post_transaction(
            idempotency_key=f"invoice:{invoice.id}:void", kind="invoice_void",
            user_id=invoice.user_id, created_by_id=voided_by.id if voided_by else None,
            description=f"Void {invoice.number}: {reason}", legs=legs)
        if invoice.credits_minor:
            db.session.add(CreditLot(
                user_id=user.id, account_id=ledger.user_account(user, AccountKind.CREDIT).id,
                currency=invoice.currency, amount_minor=invoice.credits_minor,
                remaining_minor=invoice.credits_minor, transaction_id=txn.id,
                reason=f"Credits returned from voided {invoice.number}"))
    db.session.execute(update(UsageAdjustment).where(UsageAdjustment.invoice_id == invoice.id)
                       .values(invoice_id=None))
    invoice.voided_at = utcnow()
    invoice.void_reason = reason[:500]
    db.session.flush()
    return invoice


def mark_overdue(now: datetime | None = None) -> int:
    """Open invoices past their due date become overdue (set-based; safe to repeat)."""
    return db.session.execute(update(Invoice).where(
        Invoice.status == str(S.OPEN), Invoice.due_at < (now or utcnow()))
        .values(status=str(S.OVERDUE))).rowcount


# -- plain data for the PDF and the events ---------------------------------------------------

def _fmt(minor: int, currency: str) -> str:
    return format_money(Money(minor, currency), current_app.config["BABEL_DEFAULT_LOCALE"])


def build_snapshot(invoice: Invoice, user: User) -> dict:
    cfg = current_app.config
    cur = invoice.currency
    return {
        "template_version": 1, "number": invoice.number,
        "status": S(invoice.status).label,
        "issued_at": invoice.finalized_at.date().isoformat(),
        "due_at": invoice.due_at.date().isoformat() if invoice.due_at else None,
        "period_start": invoice.period_start.date().isoformat(),
        "period_end": (invoice.period_end - timedelta(days=1)).date().isoformat(),
        "seller": {"name": cfg.get("SELLER_NAME", ""),
                   "address": list(cfg.get("SELLER_ADDRESS_LINES", [])),
                   "email": cfg.get("SELLER_EMAIL", ""), "tax_id": cfg.get("SELLER_TAX_ID", "")},
        "customer": {"name": user.name or user.email, "email": user.email, "account": str(user.id)},
        "currency": cur,
        "lines": [{"kind": l.kind, "description": l.description, "quantity": l.quantity,
                   "unit": l.unit,
                   "unit_price": usage_price(l.unit_price, cur),
                   "amount": _fmt(l.amount_minor, cur)} for l in invoice.lines],
        "subtotal": _fmt(invoice.subtotal_minor, cur), "credits": _fmt(invoice.credits_minor, cur),
        "total": _fmt(invoice.total_minor, cur),
        "amount_paid": _fmt(invoice.amount_paid_minor, cur),
        "amount_due": _fmt(invoice.total_minor - invoice.amount_paid_minor, cur),
        "payments": [{"date": p.created_at.date().isoformat(), "tender": p.tender,
                      "amount": _fmt(p.amount_minor, cur), "reference": p.reference}
                     for p in invoice.payments],
    }


def usage_price(unit_price: str, currency: str) -> str:
    from ..money import decimal_to_micros, format_micros

    return format_micros(decimal_to_micros(Decimal(unit_price)), currency,
                         current_app.config["BABEL_DEFAULT_LOCALE"])


def invoice_event(invoice: Invoice) -> dict:
    return {"invoice_id": invoice.id, "invoice_number": invoice.number,
            "user_id": invoice.user_id, "currency": invoice.currency,
            "total": str(invoice.total.amount), "total_minor": invoice.total_minor,
            "period_start": invoice.period_start.isoformat(),
            "period_end": invoice.period_end.isoformat(), "status": S(invoice.status).label}


def list_invoices(*, user: User | None = None, status: str | None = None,
                  period_start: datetime | None = None, page: int = 1, per_page: int = 20):
    query = select(Invoice)
    if user is not None:
        query = query.where(Invoice.user_id == user.id)
    if status:
        wanted = "open" if status == "sent" else status
        query = query.where(Invoice.status == wanted)
    if period_start is not None:
        query = query.where(Invoice.period_start == period_start)
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    items = list(db.session.scalars(query.order_by(Invoice.period_start.desc(), Invoice.id.desc())
                                    .limit(per_page).offset((page - 1) * per_page)))
    return ledger.Page(items, page, per_page, total)


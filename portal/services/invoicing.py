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
import contextlib
import functools
import gc
import random
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

from flask import current_app
from sqlalchemy import bindparam, func, insert, select, text, update

from ..extensions import db
from ..models import (
    AccountKind,
    CreditLot,
    Deployment,
    Invoice,
    InvoiceCounter,
    InvoiceKind,
    InvoiceLine,
    InvoicePayment,
    InvoiceStatus,
    LedgerAccount,
    LedgerTransaction,
    PaymentTender,
    UsageAdjustment,
    User,
    utcnow,
)
from ..money import Money, currency_digits, format_money
from . import credits, events, ledger, metering, usage
from .errors import Conflict, InvalidTransition, NotFound, ValidationFailed

S = InvoiceStatus
_USAGE = str(InvoiceKind.USAGE)
_CREDIT = str(PaymentTender.CREDIT)
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
            "an invoice covers one billing period",
            fields={
                "period_start": f"must be a billing period: from the invoice day "
                f"({invoice_day()}) to the day before the next one"
            },
        )
    if end > metering.last_complete_hour(now):
        raise ValidationFailed.field("period_end", "has not ended yet")


# -- lines (pure) ----------------------------------------------------------------------------


def _round_ratio(numerator: int, denominator: int, digits: int) -> int:
    """numerator/denominator micro-units in minor units, ROUND_HALF_UP, in integers."""
    num = numerator * 10**digits
    den = denominator * 1_000_000
    if num >= 0:
        return (2 * num + den) // (2 * den)  # floor(x + 1/2): halves go up
    return -((-2 * num + den) // (2 * den))  # and away from zero below it


def _decimal(numerator: int, denominator: int, places: int = 6) -> Decimal:
    if denominator == 0:
        return Decimal(0)
    value = (Decimal(numerator) / Decimal(denominator)).quantize(
        Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP
    )
    return value.normalize() if value else Decimal(0)


# When _decimal_text may compute in integers: the exact ROUND_HALF_UP of n/d to 6 places in
# integers gives the same text as _decimal (Decimal's division rounded to 28 significant
# digits, then ROUND_HALF_UP to 6 places, normalized), digit for digit, when either
# - |n| < 10^21 (d > 0): Decimal's division is off by at most |n/d| * 10^-27 / 2, while an
#   n/d that is not itself a half-way point (k + 1/2) * 10^-6 is at least 1 / (2 * 10^6 * d)
#   away from one; |n/d| * 10^-27 / 2 < 1 / (2 * 10^6 * d) is |n| < 10^21, so the division
#   never reaches or crosses a half-way point, and one itself (7 decimals) divides exactly; or
# - d divides 3,600,000 (= 2^7 3^2 5^5) or 10^6 and |n/d| < 10^15: then n/d has at most 7
#   decimals before one digit (0-8) repeats, or ends within 6 decimals, so the division,
#   rounded to 28 significant digits, can never carry into the 7th decimal.
_EXACT_NUMERATORS = 10**21
_INTEGER_DENOMINATORS = frozenset(
    {2**a * 3**b * 5**c for a in range(8) for b in range(3) for c in range(6)}  # | 3.6M
    | {2**a * 5**c for a in range(7) for c in range(7)}
)  # | 10^6


def _decimal_text(numerator: int, denominator: int) -> str:
    """``f"{_decimal(numerator, denominator):f}"``: quantities and unit prices as stored."""
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    if not denominator:
        return "0"
    if numerator % denominator == 0:  # whole hours, whole months
        return str(numerator // denominator)
    if not (
        -_EXACT_NUMERATORS < numerator < _EXACT_NUMERATORS
        or (denominator in _INTEGER_DENOMINATORS and -(10**15) < numerator // denominator < 10**15)
    ):
        return f"{_decimal(numerator, denominator):f}"
    q, r = divmod(abs(numerator) * 1_000_000, denominator)  # |n/d| in micro-units
    if 2 * r >= denominator:
        q += 1
    if q == 0:
        return "0"
    whole, micros = divmod(q, 1_000_000)
    sign = "-" if numerator < 0 else ""
    return f"{sign}{whole}" if not micros else f"{sign}{whole}.{micros:06d}".rstrip("0")


def _unit_price_text(qn: int, qd: int, cn: int, cd: int) -> str:
    """Cost per unit, ``_decimal(cn * qd, cd * qn * 10^6)``; usually one rate all period, so
    the ratio reduces to the rate in micro-units (the same rational, so the same Decimal)."""
    if not qn:
        return "0"
    if qd == cd:
        if cn % qn == 0:
            return _rate_text(cn // qn)
        return _decimal_text(cn, qn * 1_000_000)  # the same rational, with smaller terms
    return _decimal_text(cn * qd, cd * qn * 1_000_000)


@functools.lru_cache(maxsize=1024)
def _rate_text(micros: int) -> str:
    return _decimal_text(micros, 1_000_000)


@functools.lru_cache(maxsize=256)
def _month_ms(year: int, month: int) -> int:
    return 1000 * calendar.monthrange(year, month)[1] * 86400


@dataclass(slots=True)
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
        out = [
            ("cpu", self.cpu_ms, 3_600_000, self.cpu_cost, 3_600_000),
            ("memory", self.memory_ms, 3_600_000, self.memory_cost, 3_600_000),
        ]
        if self.storage:
            # Sum a/da + b/db exactly over a common denominator.
            qn, cn, den = 0, 0, 1
            for (y, m), (ms, cost) in sorted(self.storage.items()):
                d = _month_ms(y, m)
                qn, cn, den = qn * d + ms * den, cn * d + cost * den, den * d
            out.append(("storage", qn, den, cn, den))
        out += [
            ("instance", self.instance_s, 3600, self.instance_cost, 3600),
            ("ip", self.ip_s, 3600, self.ip_cost, 3600),
        ]
        return out


class LineDraft(NamedTuple):
    """An invoice line as stored (its columns after invoice_id and position)."""

    kind: str
    deployment_id: int | None
    resource: str | None
    description: str  # at most 300 characters
    quantity: str  # exact decimal text
    unit: str
    unit_price: str  # major units, exact decimal text
    amount_minor: int


def build_lines(
    usage_by_deployment: dict[int, Usage], names: dict[int, str], currency: str, kind: str = "usage"
) -> list[LineDraft]:
    """One line per deployment and resource with something to bill, rounded once."""
    if not usage_by_deployment:
        return []
    digits = currency_digits(currency)
    prefix = "Adjustment: " if kind == "adjustment" else ""
    labels, units = usage.LABELS, usage.UNITS
    lines = []
    for dep_id in sorted(usage_by_deployment, key=lambda d: (names.get(d, ""), d)):
        head = f"{prefix}{names.get(dep_id, dep_id)} · "
        for resource, qn, qd, cn, cd in usage_by_deployment[dep_id].resources():
            if qn or cn:
                lines.append(
                    LineDraft(
                        kind,
                        dep_id,
                        resource,
                        (head + labels[resource])[:300],
                        _decimal_text(qn, qd),
                        units[resource],
                        _unit_price_text(qn, qd, cn, cd),
                        _round_ratio(cn, cd, digits),
                    )
                )
    return lines


# -- aggregation -----------------------------------------------------------------------------


def _sums(*terms: str) -> str:
    # As integers: PostgreSQL's SUM(bigint) is a numeric, which would arrive as Decimals.
    return ", ".join(f"CAST(SUM({term}) AS BIGINT)" for term in terms)


_SUMS = _sums(
    "cpu_ms",
    "cpu_cost",
    "memory_ms",
    "memory_cost",
    "CASE WHEN day < :split THEN storage_ms ELSE 0 END",
    "CASE WHEN day < :split THEN storage_cost ELSE 0 END",
    "CASE WHEN day >= :split THEN storage_ms ELSE 0 END",
    "CASE WHEN day >= :split THEN storage_cost ELSE 0 END",
    "instance_s",
    "instance_cost",
    "ip_s",
    "ip_cost",
)
# A period inside one calendar month (invoice day 1) has no second month to split off.
_SUMS_ONE_MONTH = (
    _sums("cpu_ms", "cpu_cost", "memory_ms", "memory_cost", "storage_ms", "storage_cost")
    + ", 0, 0, "
    + _sums("instance_s", "instance_cost", "ip_s", "ip_cost")
)


def _to_usage(row, first_month: tuple[int, int], second_month: tuple[int, int]) -> Usage:
    (
        cpu_ms,
        cpu_cost,
        memory_ms,
        memory_cost,
        storage1_ms,
        storage1_cost,
        storage2_ms,
        storage2_cost,
        instance_s,
        instance_cost,
        ip_s,
        ip_cost,
    ) = row
    storage = {}
    if storage1_ms or storage1_cost:
        storage[first_month] = [storage1_ms, storage1_cost]
    if storage2_ms or storage2_cost:
        storage[second_month] = [storage2_ms, storage2_cost]
    return Usage(
        cpu_ms, cpu_cost, memory_ms, memory_cost, storage, instance_s, instance_cost, ip_s, ip_cost
    )


def _period_usage(
    user_lo: int, user_hi: int, start: datetime, end: datetime, user_ids: list[int] | None
) -> dict[int, dict[int, Usage]]:
    """Per user, per deployment: the period's summed rollups, in one query."""
    split = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
    months = ((start.year, start.month), (split.year, split.month))
    where = "user_id >= :lo AND user_id < :hi AND day >= :start AND day < :end"
    params = {
        "lo": user_lo,
        "hi": user_hi,
        "start": start.date(),
        "end": end.date(),
        "split": split,
    }
    if user_ids is not None:
        where += " AND user_id IN (" + ", ".join(str(int(u)) for u in user_ids) + ")"
    sums = _SUMS_ONE_MONTH if end.date() <= split else _SUMS
    if db.engine.dialect.name == "postgresql":
        # For this transaction: room to aggregate a chunk's month (~30 rows per deployment) in
        # memory, not in a sort spilled to disk; and the snapshots, which TOAST compresses,
        # compressed with lz4 where the server has it (a fraction of pglz's CPU).
        db.session.execute(
            text(
                "SELECT set_config('work_mem', '64MB', true), "
                "(SELECT set_config(name, 'lz4', true) FROM pg_settings "
                " WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals))"
            )
        )
    result: dict[int, dict[int, Usage]] = defaultdict(dict)
    for row in db.session.execute(
        text(
            f"SELECT user_id, deployment_id, {sums} FROM usage_daily WHERE {where} "
            "GROUP BY user_id, deployment_id"
        ),
        params,
    ).all():
        result[row[0]][row[1]] = _to_usage(row[2:], *months)
    return result


def _pending_adjustments(
    user_lo: int, user_hi: int, user_ids: list[int] | None
) -> dict[int, tuple[dict[int, Usage], list[int]]]:
    query = select(UsageAdjustment).where(
        UsageAdjustment.invoice_id.is_(None),
        UsageAdjustment.user_id >= user_lo,
        UsageAdjustment.user_id < user_hi,
    )
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
    db.session.execute(
        ledger._dialect_insert(InvoiceCounter.__table__)
        .values(year=year, last_number=0)
        .on_conflict_do_nothing()
    )
    last = db.session.execute(
        update(InvoiceCounter)
        .where(InvoiceCounter.year == year)
        .values(last_number=InvoiceCounter.last_number + count)
        .returning(InvoiceCounter.last_number)
    ).scalar_one()
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
        return {"invoices": self.invoices, "skipped": self.skipped, "total_minor": self.total_minor}


@contextlib.contextmanager
def _cyclic_gc_paused():
    """A chunk holds a few hundred thousand small containers (lines, snapshots, rows) until
    it is written, none of them in a reference cycle; the cyclic collector would scan them
    again and again (a fifth of a run's CPU). Collection resumes afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def generate_chunk(
    chunk: int,
    start: datetime,
    end: datetime,
    *,
    user_ids: list[int] | None = None,
    created_by: User | None = None,
    now: datetime | None = None,
    before_numbers: Callable[[], None] | None = None,
) -> RunResult:
    """Invoice the users of one chunk (or just ``user_ids`` in it) for [start, end).

    Everything is computed in memory from a handful of queries and written set-based: the
    invoices are inserted finalized (numbered, totalled, with their snapshot), then their
    lines, ledger postings, credit payments and events. ``before_numbers`` is called once
    all is built, before the numbers are taken (it may wait, or raise to give up). Flushes
    only; the caller commits."""
    with _cyclic_gc_paused():
        return _generate_chunk(
            chunk, start, end, user_ids, created_by, now or utcnow(), before_numbers
        )


def _generate_chunk(
    chunk: int,
    start: datetime,
    end: datetime,
    user_ids: list[int] | None,
    created_by: User | None,
    now: datetime,
    before_numbers: Callable[[], None] | None,
) -> RunResult:
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
    in_chunk = _in_chunk(lo, hi, user_ids)
    inv = Invoice.__table__.c  # plain rows (no ORM entities to load) where only values are read
    existing = candidates.intersection(
        db.session.scalars(
            select(inv.user_id).where(
                *in_chunk(inv.user_id),
                inv.period_start == start,
                inv.kind == InvoiceKind.USAGE,
                inv.status != S.VOID,
            )
        )
    )
    todo = sorted(candidates - existing)
    result.skipped = len(existing)
    if not todo:
        return result

    u, dep = User.__table__.c, Deployment.__table__.c
    users = {
        row.id: row
        for row in db.session.execute(
            select(u.id, u.currency, u.name, u.email).where(*in_chunk(u.id))
        ).all()
    }
    names = {
        dep_id: f"{name} ({external_id})" if name else external_id
        for dep_id, name, external_id in db.session.execute(
            select(dep.id, dep.name, dep.external_id).where(*in_chunk(dep.user_id))
        ).all()
    }
    drafts: dict[int, _Draft] = {}
    for uid in todo:
        currency = users[uid].currency
        lines = build_lines(usage_by_user.get(uid, {}), names, currency)
        lines += build_lines(adjustments.get(uid, ({}, []))[0], names, currency, "adjustment")
        drafts[uid] = _Draft(uid, currency, lines, sum(l.amount_minor for l in lines))

    _finalize(drafts, users, start, end, now, created_by, in_chunk, before_numbers)
    for uid, (_, adj_ids) in adjustments.items():
        if uid in drafts and adj_ids:
            db.session.execute(
                update(UsageAdjustment)
                .where(UsageAdjustment.id.in_(adj_ids))
                .values(invoice_id=drafts[uid].invoice_id)
            )
    result.invoices = len(todo)
    result.invoice_ids = [drafts[uid].invoice_id for uid in todo]
    result.total_minor = sum(d.subtotal for d in drafts.values())
    return result


def _in_chunk(lo: int, hi: int, user_ids: list[int] | None):
    """WHERE clauses for rows of the chunk's users (or just ``user_ids``) by a user id column."""

    def clauses(column):
        where = [column >= lo, column < hi]
        if user_ids is not None:
            where.append(column.in_(user_ids))
        return where

    return clauses


@dataclass
class _Draft:
    """One invoice being made: computed in memory, then written in bulk."""

    user_id: int
    currency: str
    lines: list[LineDraft]
    subtotal: int
    credits: int = 0
    draws: list[tuple[int, int]] = field(default_factory=list)  # (credit lot id, amount)
    invoice_id: int = 0
    number: str = ""

    @property
    def total(self) -> int:
        return max(0, self.subtotal) - self.credits


def _finalize(
    drafts: dict[int, _Draft],
    users: dict,
    start: datetime,
    end: datetime,
    now: datetime,
    created_by: User | None,
    in_chunk,
    before_numbers: Callable[[], None] | None = None,
) -> None:
    """Credits, numbers, then the invoices (already finalized), their lines, the ledger
    postings, credit payments, late-usage credit-backs, events and PDF requests."""
    from .invoice_documents import enqueue_render

    todo = sorted(drafts)
    billed = {uid for uid in todo if drafts[uid].subtotal > 0}
    a = LedgerAccount.__table__.c
    accounts = [
        (uid, aid, kind, balance)
        for uid, aid, kind, currency, balance in db.session.execute(
            select(a.user_id, a.id, a.kind, a.currency, a.balance_minor).where(
                *in_chunk(a.user_id),
                a.kind.in_([str(AccountKind.RECEIVABLE), str(AccountKind.CREDIT)]),
            )
        ).all()
        if uid in billed and currency == drafts[uid].currency
    ]
    receivables = {uid: aid for uid, aid, kind, _ in accounts if kind == AccountKind.RECEIVABLE}
    for uid in sorted(billed - set(receivables)):
        receivables[uid] = ledger.user_account(uid, AccountKind.RECEIVABLE).id
    holders = {
        uid: aid
        for uid, aid, kind, balance in accounts
        if kind == AccountKind.CREDIT and balance > 0
    }
    # The user accounts this run moves, locked in id order (as every posting locks them):
    # credit lots are read and drawn under their account's lock.
    locked = ledger.lock_account_ids([*receivables.values(), *holders.values()])
    _draw_credits(drafts, holders, now)

    # Everything but the numbers is built first: the year's counter row, locked from
    # reserve_numbers to commit, orders concurrent chunk runs, so each holds it only to write.
    ids = ledger.allocate_ids(Invoice.__table__, len(todo))
    due_at = now + timedelta(days=current_app.config.get("INVOICE_NET_DAYS", 14))
    paid_at = utcnow()  # the credit payments' time, as their rows record it
    seller = _seller()
    locale = current_app.config["BABEL_DEFAULT_LOCALE"]
    created_by_id = created_by.id if created_by else None
    statuses: dict[int, S] = {}
    rows = []
    for uid, invoice_id in zip(todo, ids, strict=False):
        d = drafts[uid]
        d.invoice_id = invoice_id
        status = statuses[uid] = S.PAID if d.total == 0 else S.OPEN
        rows.append(
            [
                invoice_id,
                uid,
                _USAGE,
                str(status),
                None,
                start,
                end,
                d.currency,
                d.subtotal,
                d.credits,
                d.total,
                0,
                due_at,
                now,
                now if status == S.PAID else None,
                now,
                created_by_id,
                "pending",
                snapshot_data(
                    number=None,
                    status=status,
                    issued_at=now,
                    due_at=due_at,
                    period_start=start,
                    period_end=end,
                    seller=seller,
                    user=users[uid],
                    currency=d.currency,
                    lines=d.lines,
                    subtotal=d.subtotal,
                    credits=d.credits,
                    total=d.total,
                    amount_paid=0,
                    payments=[(paid_at, _CREDIT, d.credits, "")] if d.credits else [],
                    locale=locale,
                ),
            ]
        )
    lines = [
        (d.invoice_id, n, *line)
        for d in (drafts[uid] for uid in todo)
        for n, line in enumerate(d.lines, 1)
    ]

    if before_numbers is not None:
        before_numbers()
    for row, uid, number in zip(rows, todo, reserve_numbers(now.year, len(todo)), strict=False):
        drafts[uid].number = row[4] = row[-1]["number"] = number
    ledger.bulk_insert(
        Invoice.__table__,
        (
            "id",
            "user_id",
            "kind",
            "status",
            "number",
            "period_start",
            "period_end",
            "currency",
            "subtotal_minor",
            "credits_minor",
            "total_minor",
            "amount_paid_minor",
            "due_at",
            "finalized_at",
            "paid_at",
            "created_at",
            "created_by_id",
            "pdf_status",
            "snapshot",
        ),
        rows,
    )
    ledger.bulk_insert(
        InvoiceLine.__table__,
        (
            "invoice_id",
            "position",
            "kind",
            "deployment_id",
            "resource",
            "description",
            "quantity",
            "unit",
            "unit_price",
            "amount_minor",
        ),
        lines,
    )

    revenue: dict[str, int] = {}
    postings, credit_postings = [], []
    for uid in todo:
        d = drafts[uid]
        if d.subtotal <= 0:
            continue
        if d.currency not in revenue:
            revenue[d.currency] = ledger.system_account(AccountKind.REVENUE, d.currency).id
        postings.append(
            ledger.Posting(
                f"invoice:{d.invoice_id}:issue",
                "invoice",
                uid,
                f"Invoice {d.number}",
                d.currency,
                (
                    (receivables[uid], "receivable", -d.subtotal),
                    (revenue[d.currency], "revenue", d.subtotal),
                ),
            )
        )
        if d.credits:
            credit_postings.append(
                ledger.Posting(
                    f"invoice:{d.invoice_id}:credit",
                    "invoice_credit",
                    uid,
                    f"Credits applied to {d.number}",
                    d.currency,
                    (
                        (holders[uid], "credit", -d.credits),
                        (receivables[uid], "receivable", d.credits),
                    ),
                )
            )
    txn_ids = ledger.post_many(postings + credit_postings, locked=locked)

    credited = [drafts[uid] for uid in todo if drafts[uid].credits]
    if credited:
        lots = CreditLot.__table__
        db.session.execute(
            update(lots)
            .where(lots.c.id == bindparam("lot_id"))
            .values(remaining_minor=lots.c.remaining_minor - bindparam("take")),
            [{"lot_id": lot_id, "take": take} for d in credited for lot_id, take in d.draws],
        )
        identity = db.session.identity_map
        for d in credited:  # lots loaded in this session re-read what remains
            for lot_id, _ in d.draws:
                lot = identity.get(db.session.identity_key(CreditLot, lot_id))
                if lot is not None:
                    db.session.expire(lot, ["remaining_minor"])
        db.session.execute(
            insert(InvoicePayment),
            [
                {
                    "invoice_id": d.invoice_id,
                    "tender": str(PaymentTender.CREDIT),
                    "amount_minor": d.credits,
                    "currency": d.currency,
                    "reference": "",
                    "ledger_transaction_id": txn_ids[f"invoice:{d.invoice_id}:credit"],
                    "created_by_id": None,
                    "created_at": paid_at,
                }
                for d in credited
            ],
        )
    for uid in todo:
        if drafts[uid].subtotal < 0:
            _credit_back(drafts[uid], db.session.get(User, uid))

    created, paid = [], []
    period = (start.isoformat(), end.isoformat())
    for uid in todo:
        d = drafts[uid]
        payload = _event_payload(
            d.invoice_id, d.number, uid, d.currency, d.total, *period, statuses[uid]
        )
        created.append(("billing.invoice.created", f"invoice:{d.invoice_id}", payload, uid))
        if statuses[uid] == S.PAID:
            paid.append(("billing.invoice.paid", f"invoice:{d.invoice_id}", payload, uid))
        enqueue_render(d.invoice_id)
    events.record_new_many(created + paid)
    _settle_where_money_waits({uid for uid in todo if statuses[uid] == S.OPEN}, in_chunk)


def _settle_where_money_waits(open_users: set[int], in_chunk) -> None:
    """Issued invoices are settled at once (after commit) for the users who have something
    to pay with: a voucher or prepaid balance, or a saved card. The others wait for money
    (settlement runs again when it arrives, and daily)."""
    from ..models import PaymentMethod
    from . import settlement

    if not open_users:
        return
    a = LedgerAccount.__table__.c
    funded = select(a.user_id).where(
        *in_chunk(a.user_id),
        a.balance_minor > 0,
        a.kind.in_([str(AccountKind.CASH), str(AccountKind.VOUCHER)]),
    )
    carded = select(PaymentMethod.user_id).where(
        *in_chunk(PaymentMethod.user_id), PaymentMethod.removed_at.is_(None)
    )
    for uid in sorted(open_users & set(db.session.scalars(funded.union(carded)))):
        settlement.request_settlement(uid)


def _draw_credits(drafts: dict[int, _Draft], holders: dict[int, int], now: datetime) -> None:
    """Credits pay first, as far as they reach: each holder's unexpired lots, oldest expiry
    first (lots that never expire last, then in grant order). Their accounts are locked."""
    if not holders:
        return
    lots: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for lot_id, account_id, remaining in db.session.execute(
        select(CreditLot.id, CreditLot.account_id, CreditLot.remaining_minor)
        .where(
            CreditLot.account_id.in_(holders.values()),
            CreditLot.remaining_minor > 0,
            (CreditLot.expires_at.is_(None)) | (CreditLot.expires_at > now),
        )
        .order_by(
            CreditLot.account_id, CreditLot.expires_at.is_(None), CreditLot.expires_at, CreditLot.id
        )
    ):
        lots[account_id].append((lot_id, remaining))
    for uid, account_id in holders.items():
        d = drafts[uid]
        needed = min(sum(remaining for _, remaining in lots[account_id]), d.subtotal)
        if needed <= 0:
            continue
        d.credits = needed
        for lot_id, remaining in lots[account_id]:
            if needed == 0:
                break
            take = min(remaining, needed)
            d.draws.append((lot_id, take))
            needed -= take


def _credit_back(draft: _Draft, user: User) -> CreditLot:
    """Adjustments larger than the period's usage: the difference becomes a credit."""
    lot, _ = credits.grant_credit(
        user=user,
        amount=Money(-draft.subtotal, draft.currency),
        reason=f"Usage adjustment on {draft.number}",
        idempotency_key=f"invoice:{draft.invoice_id}:credit-back",
        source=AccountKind.REVENUE,
    )
    return lot


# -- one user, on demand ---------------------------------------------------------------------


def generate_for_user(
    user: User, start: datetime, end: datetime, *, created_by: User | None = None
) -> tuple[Invoice, bool]:
    """The user's invoice for one billing period, made now if it does not exist yet.
    Returns (invoice, created)."""
    check_period(start, end)
    result = generate_chunk(
        metering.chunk_of(user.id), start, end, user_ids=[user.id], created_by=created_by
    )
    invoice = db.session.scalar(
        select(Invoice).where(
            Invoice.user_id == user.id,
            Invoice.period_start == start,
            Invoice.kind == InvoiceKind.USAGE,
            Invoice.status != S.VOID,
        )
    )
    if invoice is None:
        raise Conflict(
            "nothing to invoice: the user has no usage in this period",
            fields={"period_start": "has no usage for this user"},
        )
    return invoice, bool(result.invoices)


def generate_period(start: datetime, end: datetime, now: datetime | None = None) -> RunResult:
    """Every chunk in this process, one transaction per chunk, committed in chunk order (the
    CLI). A chunk that fails stops the run: the chunks before it stay committed."""
    check_period(start, end, now)
    chunks = chunks_with_users()
    if db.engine.dialect.name == "postgresql" and len(chunks) > 1:
        db.session.commit()
        return _generate_overlapped(chunks, start, end, now)
    totals = RunResult()
    for chunk in chunks:
        totals.add(generate_chunk(chunk, start, end, now=now))
        db.session.commit()
    return totals


class _RunStopped(Exception):
    """An earlier chunk of the run failed; this one gives up uncommitted."""


def _generate_overlapped(
    chunks: list[int], start: datetime, end: datetime, now: datetime | None
) -> RunResult:
    """generate_period's chunks with the next one read and built (on a second connection)
    while the one before it is written: a chunk waits for the previous one's commit before
    it takes its numbers, and commits after it, so numbers, commits and a failure's outcome
    are those of one chunk at a time; only the waiting for the database overlaps."""
    app = current_app._get_current_object()
    over = [threading.Event() for _ in chunks]  # chunk i's transaction has ended
    committed = [False] * len(chunks)

    def after_previous(i: int) -> None:
        if i:
            over[i - 1].wait()
            if not committed[i - 1]:
                raise _RunStopped()

    def run(i: int) -> RunResult:
        with app.app_context():
            try:
                if i and over[i - 1].is_set() and not committed[i - 1]:
                    raise _RunStopped()
                result = generate_chunk(
                    chunks[i], start, end, now=now, before_numbers=lambda: after_previous(i)
                )
                after_previous(i)
                db.session.commit()
                committed[i] = True
                return result
            finally:
                db.session.remove()  # rolls back what was not committed
                over[i].set()

    totals = RunResult()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="invoice-run") as pool:
        for future in [pool.submit(run, i) for i in range(len(chunks))]:
            totals.add(future.result())  # the first failure, in chunk order, is raised
    return totals


def chunks_with_users() -> list[int]:
    return list(
        db.session.scalars(select(metering.MeterMark.chunk).order_by(metering.MeterMark.chunk))
    )


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
    return db.session.scalar(
        select(Invoice)
        .where(Invoice.id == invoice.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def record_payment(
    invoice: Invoice,
    *,
    tender: PaymentTender,
    amount: Money,
    txn_id: int,
    reference: str = "",
    created_by: User | None = None,
) -> InvoicePayment:
    """Book a payment that the ledger already holds; marks the invoice paid when covered."""
    payment = InvoicePayment(
        invoice_id=invoice.id,
        tender=str(tender),
        amount_minor=amount.amount_minor,
        currency=amount.currency,
        reference=reference[:200],
        ledger_transaction_id=txn_id,
        created_by_id=created_by.id if created_by else None,
    )
    db.session.add(payment)
    invoice.amount_paid_minor += amount.amount_minor
    if invoice.amount_paid_minor == invoice.total_minor:
        transition(invoice, S.PAID)
        invoice.paid_at = utcnow()
        events.record(
            "billing.invoice.paid", f"invoice:{invoice.id}", invoice_event(invoice), invoice.user_id
        )
    db.session.flush()
    return payment


def record_offline_payment(
    invoice: Invoice,
    *,
    amount: Money,
    reference: str,
    recorded_by: User | None = None,
    idempotency_key: str | None = None,
) -> InvoicePayment:
    """A payment made outside the portal (bank transfer), booked through the ledger. With an
    ``idempotency_key`` (a rendered form, a client's header) a repeat records nothing."""
    invoice = lock_invoice(invoice)
    key = (
        f"invoice:{invoice.id}:offline:{idempotency_key}"
        if idempotency_key
        else f"invoice:{invoice.id}:offline:{len(invoice.payments) + 1}"
    )
    if idempotency_key:
        earlier = db.session.scalar(
            select(InvoicePayment)
            .join(LedgerTransaction, LedgerTransaction.id == InvoicePayment.ledger_transaction_id)
            .where(LedgerTransaction.idempotency_key == key)
        )
        if earlier is not None:
            if earlier.amount_minor != amount.amount_minor:
                raise Conflict("this request was already used for a different payment")
            return earlier
    if S(invoice.status) not in UNPAID:
        raise InvalidTransition(f"a {S(invoice.status).label} invoice takes no payments")
    if amount.currency != invoice.currency:
        raise ValidationFailed.field("amount", f"must be in {invoice.currency}")
    if amount.amount_minor <= 0:
        raise ValidationFailed.field("amount", "must be greater than 0")
    if amount.amount_minor > invoice.total_minor - invoice.amount_paid_minor:
        raise ValidationFailed.field(
            "amount", f"is more than the amount due ({format_money(invoice.amount_due)})"
        )
    reference = (reference or "").strip()
    if not reference:
        raise ValidationFailed.field("reference", "is required")
    user = db.session.get(User, invoice.user_id)
    txn = ledger.post_transaction(
        idempotency_key=key,
        kind="offline_payment",
        user_id=invoice.user_id,
        created_by_id=recorded_by.id if recorded_by else None,
        description=f"Payment for {invoice.number}: {reference}",
        legs=[
            (
                ledger.system_account(AccountKind.OFFLINE_CLEARING, invoice.currency),
                -amount.amount_minor,
            ),
            (ledger.user_account(user, AccountKind.RECEIVABLE), amount.amount_minor),
        ],
    )
    return record_payment(
        invoice,
        tender=PaymentTender.OFFLINE,
        amount=amount,
        txn_id=txn.id,
        reference=reference,
        created_by=recorded_by,
    )


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
        legs = [
            (ledger.system_account(AccountKind.REVENUE, invoice.currency), -invoice.subtotal_minor)
        ]
        if invoice.total_minor:
            legs.append((ledger.user_account(user, AccountKind.RECEIVABLE), invoice.total_minor))
        if invoice.credits_minor:
            legs.append((ledger.user_account(user, AccountKind.CREDIT), invoice.credits_minor))
        txn = ledger.post_transaction(
            idempotency_key=f"invoice:{invoice.id}:void",
            kind="invoice_void",
            user_id=invoice.user_id,
            created_by_id=voided_by.id if voided_by else None,
            description=f"Void {invoice.number}: {reason}",
            legs=legs,
        )
        if invoice.credits_minor:
            db.session.add(
                CreditLot(
                    user_id=user.id,
                    account_id=ledger.user_account(user, AccountKind.CREDIT).id,
                    currency=invoice.currency,
                    amount_minor=invoice.credits_minor,
                    remaining_minor=invoice.credits_minor,
                    transaction_id=txn.id,
                    reason=f"Credits returned from voided {invoice.number}",
                )
            )
    db.session.execute(
        update(UsageAdjustment)
        .where(UsageAdjustment.invoice_id == invoice.id)
        .values(invoice_id=None)
    )
    invoice.voided_at = utcnow()
    invoice.void_reason = reason[:500]
    db.session.flush()
    return invoice


def mark_overdue(now: datetime | None = None) -> int:
    """Open invoices past their due date become overdue (set-based; safe to repeat)."""
    return db.session.execute(
        update(Invoice)
        .where(Invoice.status == str(S.OPEN), Invoice.due_at < (now or utcnow()))
        .values(status=str(S.OVERDUE))
    ).rowcount


# -- plain data for the PDF and the events ---------------------------------------------------


def _fmt(minor: int, currency: str) -> str:
    return _money_formatter(currency, current_app.config["BABEL_DEFAULT_LOCALE"])(minor)


@functools.lru_cache(maxsize=64)
def _money_formatter(currency: str, locale: str) -> Callable[[int], str]:
    """``format_money`` for amounts in minor units, without Babel's cost per call (an invoice
    run formats every line): the prefix, suffix, separators and grouping are read off Babel's
    own output once, and used only if they give Babel's text for a spread of amounts;
    otherwise (a pattern this does not model) Babel formats every amount."""

    def babel(minor: int) -> str:
        return format_money(Money(minor, currency), locale)

    try:
        fast = _derive_money_formatter(babel, currency_digits(currency))
    except ValueError:
        return babel
    rng = random.Random(20261101)
    samples = [0, 1, -1, 5, -5, 50, 99, 100, 101, -100, 999, 1000, 1001]
    samples += [
        sign * (10**k + delta) for k in range(1, 17) for delta in (-1, 0, 7) for sign in (1, -1)
    ]
    samples += [
        rng.randrange(-(10 ** rng.randrange(1, 16)), 10 ** rng.randrange(1, 16)) for _ in range(300)
    ]
    return fast if all(fast(m) == babel(m) for m in samples) else babel


def _derive_money_formatter(babel: Callable[[int], str], digits: int) -> Callable[[int], str]:
    whole_digits = "9876543210987"
    probe = int(whole_digits + "123456789"[:digits])

    def parts(text: str) -> tuple[str, str, list[str], list[str]]:
        at = [i for i, c in enumerate(text) if c in "0123456789"]
        if not at:
            raise ValueError(text)
        body = text[at[0] : at[-1] + 1]
        runs, seps, current, sep = [], [], "", ""
        for c in body:
            if c in "0123456789":
                if sep:
                    seps.append(sep)
                    runs.append(current)
                    current, sep = "", ""
                current += c
            else:
                sep += c
        runs.append(current)
        return text[: at[0]], text[at[-1] + 1 :], runs, seps

    pos_prefix, pos_suffix, runs, seps = parts(babel(probe))
    neg_prefix, neg_suffix, neg_runs, neg_seps = parts(babel(-probe))
    if (runs, seps) != (neg_runs, neg_seps) or "".join(runs) != str(probe):
        raise ValueError("unexpected layout")
    decimal_symbol = ""
    if digits:
        if len(runs) < 2 or len(runs[-1]) != digits:
            raise ValueError("unexpected fraction")
        decimal_symbol = seps.pop()
        runs.pop()
    group_symbol = seps[0] if seps else ""
    if any(sep != group_symbol for sep in seps):
        raise ValueError("mixed group separators")
    primary = len(runs[-1])
    secondary = len(runs[-2]) if len(runs) > 2 else primary
    scale = 10**digits
    fractions = [f"{decimal_symbol}{n:0{digits}d}" for n in range(scale)] if digits else [""]

    def group(number: int) -> str:
        text = str(number)
        if len(text) <= primary:
            return text
        out = [text[-primary:]]
        text = text[:-primary]
        while len(text) > secondary:
            out.append(text[-secondary:])
            text = text[:-secondary]
        out.append(text)
        return group_symbol.join(reversed(out))

    if not group_symbol:
        group = str
    elif primary == secondary == 3:  # as Python groups: "{:,}"
        group = (
            "{:,}".format
            if group_symbol == ","
            else (lambda number: f"{number:,}".replace(",", group_symbol))
        )

    def fast(minor: int) -> str:
        if minor < 0:
            whole, fraction = divmod(-minor, scale)
            return f"{neg_prefix}{group(whole)}{fractions[fraction]}{neg_suffix}"
        whole, fraction = divmod(minor, scale)
        return f"{pos_prefix}{group(whole)}{fractions[fraction]}{pos_suffix}"

    return fast


def _major_text(minor: int, currency: str) -> str:
    """``str(Money(minor, currency).amount)``: "27.20"."""
    digits = currency_digits(currency)
    if not digits:
        return str(minor)
    whole, fraction = divmod(abs(minor), 10**digits)
    return f"{'-' if minor < 0 else ''}{whole}.{fraction:0{digits}d}"


def _seller() -> dict:
    cfg = current_app.config
    return {
        "name": cfg.get("SELLER_NAME", ""),
        "address": list(cfg.get("SELLER_ADDRESS_LINES", [])),
        "email": cfg.get("SELLER_EMAIL", ""),
        "tax_id": cfg.get("SELLER_TAX_ID", ""),
    }


def snapshot_data(
    *,
    number: str | None,
    status: S,
    issued_at: datetime,
    due_at: datetime | None,
    period_start: datetime,
    period_end: datetime,
    seller: dict,
    user,
    currency: str,
    lines: list[LineDraft],
    subtotal: int,
    credits: int,
    total: int,
    amount_paid: int,
    payments: list[tuple[datetime, str, int, str]],
    locale: str | None = None,
) -> dict:
    """The plain data a PDF is rendered from. ``lines`` as stored; ``payments``: (created
    at, tender, amount in minor units, reference)."""
    locale = locale or current_app.config["BABEL_DEFAULT_LOCALE"]
    fmt = _money_formatter(currency, locale)
    return {
        "template_version": 1,
        "number": number,
        "status": status.label,
        "issued_at": issued_at.date().isoformat(),
        "due_at": due_at.date().isoformat() if due_at else None,
        "period_start": period_start.date().isoformat(),
        "period_end": (period_end - timedelta(days=1)).date().isoformat(),
        "seller": {**seller, "address": list(seller["address"])},
        "customer": {"name": user.name or user.email, "email": user.email, "account": str(user.id)},
        "currency": currency,
        "lines": [
            {
                "kind": kind,
                "description": description,
                "quantity": quantity,
                "unit": unit,
                "unit_price": _usage_price(unit_price, currency, locale),
                "amount": fmt(amount),
            }
            for kind, _, _, description, quantity, unit, unit_price, amount in lines
        ],
        "subtotal": fmt(subtotal),
        "credits": fmt(credits),
        "total": fmt(total),
        "amount_paid": fmt(amount_paid),
        "amount_due": fmt(total - amount_paid),
        "payments": [
            {
                "date": created_at.date().isoformat(),
                "tender": tender,
                "amount": fmt(amount),
                "reference": reference,
            }
            for created_at, tender, amount, reference in payments
        ],
    }


def build_snapshot(invoice: Invoice, user: User) -> dict:
    return snapshot_data(
        number=invoice.number,
        status=S(invoice.status),
        issued_at=invoice.finalized_at,
        due_at=invoice.due_at,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        seller=_seller(),
        user=user,
        currency=invoice.currency,
        lines=[
            LineDraft(
                l.kind,
                l.deployment_id,
                l.resource,
                l.description,
                l.quantity,
                l.unit,
                l.unit_price,
                l.amount_minor,
            )
            for l in invoice.lines
        ],
        subtotal=invoice.subtotal_minor,
        credits=invoice.credits_minor,
        total=invoice.total_minor,
        amount_paid=invoice.amount_paid_minor,
        payments=[(p.created_at, p.tender, p.amount_minor, p.reference) for p in invoice.payments],
    )


def usage_price(unit_price: str, currency: str) -> str:
    return _usage_price(unit_price, currency, current_app.config["BABEL_DEFAULT_LOCALE"])


@functools.lru_cache(maxsize=4096)
def _usage_price(unit_price: str, currency: str, locale: str) -> str:
    # Unit prices are the price versions' rates (or their blends): few, and formatted for
    # every line of every invoice.
    from ..money import decimal_to_micros, format_micros

    return format_micros(decimal_to_micros(Decimal(unit_price)), currency, locale)


def _event_payload(
    invoice_id: int,
    number: str,
    user_id: int,
    currency: str,
    total_minor: int,
    period_start: str,
    period_end: str,
    status: S,
) -> dict:
    return {
        "invoice_id": invoice_id,
        "invoice_number": number,
        "user_id": user_id,
        "currency": currency,
        "total": _major_text(total_minor, currency),
        "total_minor": total_minor,
        "period_start": period_start,
        "period_end": period_end,
        "status": status.label,
    }


def invoice_event(invoice: Invoice) -> dict:
    return _event_payload(
        invoice.id,
        invoice.number,
        invoice.user_id,
        invoice.currency,
        invoice.total_minor,
        invoice.period_start.isoformat(),
        invoice.period_end.isoformat(),
        S(invoice.status),
    )


def list_invoices(
    *,
    user: User | None = None,
    status: str | None = None,
    period_start: datetime | None = None,
    page: int = 1,
    per_page: int = 20,
):
    query = select(Invoice)
    if user is not None:
        query = query.where(Invoice.user_id == user.id)
    if status:
        wanted = "open" if status == "sent" else status
        query = query.where(Invoice.status == wanted)
    if period_start is not None:
        query = query.where(Invoice.period_start == period_start)
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    items = list(
        db.session.scalars(
            query.order_by(Invoice.period_start.desc(), Invoice.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
    )
    return ledger.Page(items, page, per_page, total)

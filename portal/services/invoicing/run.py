"""Invoice runs: one invoice per user and billing period, generated in bulk from the usage
rollups, issued finalized (numbered, totalled, with their snapshot), never edited afterwards.

A run for a period works chunk by chunk (the metering chunks): under the chunk's mark lock
it meters the chunk up to the period end, skips users who already have a live invoice for
the period, aggregates the rollups in one query, builds the lines (invoicing.lines) and
writes invoices, lines, ledger postings, numbers and events in bulk. Credits are applied
oldest expiry first. Usage changed after a period was invoiced (usage_adjustments) becomes
adjustment lines on the next invoice.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import ColumnElement, SQLColumnExpression, bindparam, insert, select, update

from ...db import allocate_ids, bulk_insert
from ...errors import Conflict, ValidationFailed
from ...extensions import db
from ...models import (
    AccountKind,
    CreditLot,
    Deployment,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoicePayment,
    LedgerAccount,
    PaymentMethod,
    PaymentTender,
    UsageAdjustment,
    User,
    utcnow,
)
from ...money import Money
from .. import calendar, events
from ..metering import rollups
from ..metering.costs import Usage
from ..wallet import credits, ledger, settlement_requests
from . import prepaid, subscribed
from .documents import enqueue_renders
from .invoices import S, event_payload, number_invoices
from .lines import LineDraft, build_lines
from .period_usage import period_usage as _period_usage
from .snapshot import Customer, seller, snapshot_data

log = logging.getLogger(__name__)

_USAGE = str(InvoiceKind.USAGE)


def check_period(start: datetime, end: datetime, now: datetime | None = None) -> None:
    """Invoices cover whole billing periods that have ended."""
    expected = calendar.period_containing(start, calendar.invoice_day())
    if (start, end) != expected:
        raise ValidationFailed(
            "an invoice covers one billing period",
            fields={
                "period_start": f"must be a billing period: from the invoice day "
                f"({calendar.invoice_day()}) to the day before the next one"
            },
        )
    if end > rollups.last_complete_hour(now):
        raise ValidationFailed.field("period_end", "has not ended yet")


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


# -- generation ------------------------------------------------------------------------------


@dataclass
class RunResult:
    invoices: int = 0
    skipped: int = 0
    total_minor: int = 0
    invoice_ids: list[int] = field(default_factory=list)
    # For the log: the chunks done, the users with something to invoice, and the invoices'
    # totals per currency (total_minor adds amounts across currencies).
    chunks: int = 0
    considered: int = 0
    totals: dict[str, int] = field(default_factory=dict)

    def add(self, other: RunResult) -> None:
        self.invoices += other.invoices
        self.skipped += other.skipped
        self.total_minor += other.total_minor
        self.invoice_ids += other.invoice_ids
        self.chunks += other.chunks
        self.considered += other.considered
        for currency, amount in other.totals.items():
            self.totals[currency] = self.totals.get(currency, 0) + amount

    def figures(self) -> dict[str, int]:
        return {"invoices": self.invoices, "skipped": self.skipped, "total_minor": self.total_minor}

    def totals_text(self) -> str:
        return ", ".join(str(Money(v, c)) for c, v in sorted(self.totals.items())) or "nothing"


def log_run(start: datetime, end: datetime, result: RunResult, started: float) -> None:
    """One line for a whole run: what an operator checks first."""
    log.info(
        "invoice run for %s..%s: %d chunks, %d users considered, %d invoices made (%s), "
        "%d skipped (already invoiced), in %.1f s",
        start.date(),
        end.date(),
        result.chunks,
        result.considered,
        result.invoices,
        result.totals_text(),
        result.skipped,
        time.monotonic() - started,
    )


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
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
    invoices are inserted finalized (totalled, with their snapshot) but unnumbered, with
    their lines; then numbered, then their ledger postings, credit payments and events.
    ``before_numbers`` is called once all before the numbers is written, before they are
    taken (it may wait, or raise to give up). Flushes only; the caller commits."""
    started = time.monotonic()
    with _cyclic_gc_paused():
        result = _generate_chunk(
            chunk, start, end, user_ids, created_by, now or utcnow(), before_numbers
        )
    result.chunks = 1
    log.info(
        "invoice run chunk %d for %s..%s%s: %d users considered, %d invoices made (%s), "
        "%d skipped (already invoiced), in %.2f s",
        chunk,
        start.date(),
        end.date(),
        f" (users {user_ids})" if user_ids is not None else "",
        result.considered,
        result.invoices,
        result.totals_text(),
        result.skipped,
        time.monotonic() - started,
    )
    return result


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
    size = rollups.chunk_size()
    lo, hi = chunk * size, (chunk + 1) * size
    mark = rollups.lock_mark(chunk)  # one invoice run (and metering) per chunk at a time
    if mark is not None and mark.metered_through < end:
        rollups.meter_chunk(chunk, end)
    usage_by_user = _period_usage(lo, hi, start, end, user_ids)
    adjustments = _pending_adjustments(lo, hi, user_ids)
    in_chunk = _in_chunk(lo, hi, user_ids)
    plans = subscribed.plan_billing(in_chunk, start, end)
    for uid, keep in plans.usage_kept.items():  # the plan's resources bill as fee + overage
        kept = {}
        for dep_id, usage in usage_by_user.get(uid, {}).items():
            left = subscribed.keep_resources(usage, keep)
            if left is not None:
                kept[dep_id] = left
        if kept:
            usage_by_user[uid] = kept
        else:
            usage_by_user.pop(uid, None)
    candidates = set(usage_by_user) | set(adjustments) | set(plans.lines)
    result.considered = len(candidates)
    if not candidates:
        subscribed.renew(plans.renew, end)
        return result
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
        subscribed.renew(plans.renew, end)
        return result

    u, dep = User.__table__.c, Deployment.__table__.c
    users = {
        row.id: row
        for row in db.session.execute(
            select(
                u.id,
                u.currency,
                u.name,
                u.email,
                u.billing_company,
                u.billing_address,
                u.billing_tax_id,
            ).where(*in_chunk(u.id))
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
        lines += plans.lines.get(uid, [])
        drafts[uid] = _Draft(uid, currency, lines, sum(l.amount_minor for l in lines))
    subscribed.renew(plans.renew, end)

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
    for d in drafts.values():
        result.totals[d.currency] = result.totals.get(d.currency, 0) + d.total
    return result


_InChunk = Callable[[SQLColumnExpression[int]], list[ColumnElement[bool]]]


def _in_chunk(lo: int, hi: int, user_ids: list[int] | None) -> _InChunk:
    """WHERE clauses for rows of the chunk's users (or just ``user_ids``) by a user id column."""

    def clauses(column: SQLColumnExpression[int]) -> list[ColumnElement[bool]]:
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
    users: Mapping[int, Customer],
    start: datetime,
    end: datetime,
    now: datetime,
    created_by: User | None,
    in_chunk: _InChunk,
    before_numbers: Callable[[], None] | None = None,
    kind: str = _USAGE,
) -> None:
    """Credits, the invoices (finalized but unnumbered) and their lines, PDF requests, then
    the numbers, the ledger postings, credit payments, late-usage credit-backs and events."""
    todo = sorted(drafts)
    billed = {uid for uid in todo if drafts[uid].subtotal > 0}
    # Prepaid accounts' invoices are statements, paid by the period's hourly charges (which
    # drew their credits already): no credits are applied at issue. (So are those of accounts
    # charged hourly this period that left the prepaid mode since.)
    prepaid_users: set[int] = set()
    charged: dict[int, dict[str, int]] = {}
    if kind == _USAGE:
        charged = prepaid.uninvoiced_charges(todo, start)
        prepaid_users = prepaid.prepaid_user_ids(in_chunk(User.id), todo) | set(charged)
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
        if kind == AccountKind.CREDIT and balance > 0 and uid not in prepaid_users
    }
    # The user accounts this run moves, locked in id order (as every posting locks them):
    # credit lots are read and drawn under their account's lock.
    locked = ledger.lock_account_ids([*receivables.values(), *holders.values()])
    _draw_credits(drafts, holders, now)

    # The invoices and their lines are written unnumbered first, and numbered last: the
    # year's counter row, locked from numbering to commit, orders concurrent chunk runs, so
    # each holds it only for the numbers, the postings that name them, and the commit.
    ids = allocate_ids(Invoice.__table__, len(todo))
    due_at = now + timedelta(days=current_app.config.get("INVOICE_NET_DAYS", 14))
    paid_at = utcnow()  # the credit payments' time, as their rows record it
    seller_data = seller()
    locale = current_app.config["BABEL_DEFAULT_LOCALE"]
    created_by_id = created_by.id if created_by else None
    statuses: dict[int, S] = {}
    rows: list[list[Any]] = []  # column values in bulk_insert's order, the snapshot last
    paid_by_charges: dict[int, tuple[dict[str, int], int]] = {}
    for uid in prepaid_users:
        paid_by_charges[uid] = prepaid.statement_parts(charged.get(uid, {}), drafts[uid].total)
    for uid, invoice_id in zip(todo, ids, strict=False):
        d = drafts[uid]
        d.invoice_id = invoice_id
        parts = paid_by_charges.get(uid, ({}, 0))[0]
        amount_paid = sum(parts.values())
        status = statuses[uid] = S.PAID if d.total == amount_paid else S.OPEN
        snapshot = snapshot_data(
            number=None,
            status=status,
            issued_at=now,
            due_at=due_at,
            period_start=start,
            period_end=end,
            seller=seller_data,
            user=users[uid],
            currency=d.currency,
            lines=d.lines,
            subtotal=d.subtotal,
            credits=d.credits,
            total=d.total,
            amount_paid=amount_paid,
            payments=[(paid_at, tender, amount, "") for tender, amount in parts.items()],
            locale=locale,
        )
        if uid in prepaid_users:
            snapshot["statement"] = True
        rows.append(
            [
                invoice_id,
                uid,
                kind,
                str(status),
                None,
                start,
                end,
                d.currency,
                d.subtotal,
                d.credits,
                d.total,
                amount_paid,
                due_at,
                now,
                now if status == S.PAID else None,
                now,
                created_by_id,
                "pending",
                snapshot,  # credits applied are in ``credits``, not payments
            ]
        )
    lines = [
        (d.invoice_id, n, *line)
        for d in (drafts[uid] for uid in todo)
        for n, line in enumerate(d.lines, 1)
    ]

    bulk_insert(
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
    bulk_insert(
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

    prepaid.attach_charges(
        sorted(prepaid_users), start, {uid: drafts[uid].invoice_id for uid in prepaid_users}
    )
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
    enqueue_renders([drafts[uid].invoice_id for uid in todo], new=True)

    if before_numbers is not None:
        before_numbers()
    numbers = number_invoices(now.year, [drafts[uid].invoice_id for uid in todo])
    for uid, number in zip(todo, numbers, strict=True):
        drafts[uid].number = number

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
    statement_postings = _statement_postings(drafts, paid_by_charges, receivables)
    txn_ids = ledger.post_many(postings + credit_postings + statement_postings, locked=locked)
    _statement_payments(drafts, paid_by_charges, txn_ids, paid_at)

    if credited:
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
            _credit_back(drafts[uid], db.session.get_one(User, uid))

    created, paid = [], []
    period = (start.isoformat(), end.isoformat())
    for uid in todo:
        d = drafts[uid]
        payload = event_payload(
            d.invoice_id, d.number, uid, d.currency, d.total, *period, statuses[uid]
        )
        created.append(("billing.invoice.created", f"invoice:{d.invoice_id}", payload, uid))
        if statuses[uid] == S.PAID:
            paid.append(("billing.invoice.paid", f"invoice:{d.invoice_id}", payload, uid))
    events.record_new_many(created + paid)
    if log.isEnabledFor(logging.INFO):
        for uid in todo:
            d = drafts[uid]
            log.info(
                "invoice %s (%s) issued: user %s, subtotal %s, credits %s, total %s, %s",
                d.invoice_id,
                d.number,
                uid,
                Money(d.subtotal, d.currency),
                Money(d.credits, d.currency),
                Money(d.total, d.currency),
                str(statuses[uid]),
            )
    _settle_where_money_waits({uid for uid in todo if statuses[uid] == S.OPEN}, in_chunk)


def _statement_postings(
    drafts: dict[int, _Draft],
    paid_by_charges: dict[int, tuple[dict[str, int], int]],
    receivables: dict[int, int],
) -> list[ledger.Posting]:
    """Prepaid statements: the hourly charges, held in prepaid_usage, pay the receivable (one
    posting per wallet they came from); what they took beyond the statement goes back to
    the prepaid balance."""
    postings = []
    for uid, (parts, excess) in sorted(paid_by_charges.items()):
        d = drafts[uid]
        usage = ledger.system_account(AccountKind.PREPAID_USAGE, d.currency).id
        for tender, amount in parts.items():
            postings.append(
                ledger.Posting(
                    f"invoice:{d.invoice_id}:prepaid:{tender}",
                    "invoice_payment",
                    uid,
                    f"Hourly charges paid {d.number}",
                    d.currency,
                    ((usage, "prepaid_usage", -amount), (receivables[uid], "receivable", amount)),
                )
            )
        if excess > 0:
            cash = ledger.user_account(uid, AccountKind.CASH, d.currency).id
            postings.append(
                ledger.Posting(
                    f"invoice:{d.invoice_id}:prepaid:returned",
                    "prepaid_returned",
                    uid,
                    f"Hourly charges beyond {d.number}, returned",
                    d.currency,
                    ((usage, "prepaid_usage", -excess), (cash, "cash", excess)),
                )
            )
    return postings


def _statement_payments(
    drafts: dict[int, _Draft],
    paid_by_charges: dict[int, tuple[dict[str, int], int]],
    txn_ids: dict[str, int],
    paid_at: datetime,
) -> None:
    rows = [
        {
            "invoice_id": drafts[uid].invoice_id,
            "tender": tender,
            "amount_minor": amount,
            "currency": drafts[uid].currency,
            "reference": "Hourly charges",
            "ledger_transaction_id": txn_ids[f"invoice:{drafts[uid].invoice_id}:prepaid:{tender}"],
            "created_by_id": None,
            "created_at": paid_at,
        }
        for uid, (parts, _) in sorted(paid_by_charges.items())
        for tender, amount in parts.items()
    ]
    if rows:
        db.session.execute(insert(InvoicePayment), rows)


def _settle_where_money_waits(open_users: set[int], in_chunk: _InChunk) -> None:
    """Issued invoices are settled at once (after commit) for the users who have something
    to pay with: a voucher or prepaid balance, or a saved card. The others wait for money
    (settlement runs again when it arrives, and daily)."""
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
        settlement_requests.request_settlement(uid)


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
        rollups.chunk_of(user.id), start, end, user_ids=[user.id], created_by=created_by
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
    started = time.monotonic()
    chunks = chunks_with_users()
    if db.engine.dialect.name == "postgresql" and len(chunks) > 1:
        db.session.commit()
        totals = _generate_overlapped(chunks, start, end, now)
    else:
        totals = RunResult()
        for chunk in chunks:
            totals.add(generate_chunk(chunk, start, end, now=now))
            db.session.commit()
    log_run(start, end, totals, started)
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
    # The app itself, for the pool's threads: current_app is a proxy (typed as the Flask app,
    # so the proxy's method is unknown to the type checker).
    app = current_app._get_current_object()  # type: ignore[attr-defined]
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
    """The chunks with metered users, and those with subscribers (who may have no usage)."""
    metered = set(db.session.scalars(select(rollups.MeterMark.chunk)))
    return sorted(metered | subscribed.chunks_with_subscribers(rollups.chunk_size()))


# -- one invoice of given lines (a plan change) ------------------------------------------------


def issue_invoice(
    user: User,
    kind: InvoiceKind,
    start: datetime,
    end: datetime,
    lines: list[LineDraft],
    *,
    now: datetime | None = None,
    created_by: User | None = None,
) -> Invoice:
    """Issue one finalized invoice of ``lines`` now (a plan change's proration), through
    the same path as a period's invoices: credits first, the ledger, a number, the event and
    the PDF. UNIQUE per user, ``start`` and kind. Flushes only."""
    now = now or utcnow()
    subtotal = sum(line.amount_minor for line in lines)
    if subtotal <= 0:
        raise ValueError("an issued invoice has something to pay")
    draft = _Draft(user.id, user.currency, lines, subtotal)
    in_chunk = _in_chunk(user.id, user.id + 1, [user.id])
    _finalize(
        {user.id: draft}, {user.id: user}, start, end, now, created_by, in_chunk, kind=str(kind)
    )
    return db.session.get_one(Invoice, draft.invoice_id)

"""Invoices after they are issued: the status table, gap-free numbers, payments booked
against an invoice, voiding, overdue marking, the event payloads, and listing.

Lifecycle (one table, TRANSITIONS): draft -> open ("sent") -> paid | overdue -> paid, and
void (not once paid).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import ColumnElement, Select, bindparam, func, select, text, update
from sqlalchemy.orm import defer, joinedload, lazyload, selectinload

from ...db import Page, dialect_insert
from ...errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from ...extensions import db
from ...models import (
    AccountKind,
    CreditLot,
    Invoice,
    InvoiceCounter,
    InvoicePayment,
    InvoiceStatus,
    LedgerTransaction,
    PaymentTender,
    UsageAdjustment,
    User,
    utcnow,
)
from ...models.invoices import InvoiceFigures
from ...money import Money, format_money
from .. import audit, events, mail
from ..wallet import ledger, settlement_requests
from .formatting import major_text

log = logging.getLogger(__name__)

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


# -- numbers ---------------------------------------------------------------------------------


def reserve_numbers(year: int, count: int) -> list[str]:
    """``count`` consecutive numbers for ``year``, under the counter row's lock: gap-free
    because they are taken in the transaction that finalizes the invoices."""
    db.session.execute(
        dialect_insert(InvoiceCounter.__table__)
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


def number_invoices(year: int, invoice_ids: Sequence[int]) -> list[str]:
    """Give invoices written unnumbered in this transaction the year's next numbers, in the
    order given. The counter row stays locked until commit, so whatever a run writes before
    this does not hold up other runs. (Their snapshots leave the number out: the PDF takes
    it from the column.)"""
    numbers = reserve_numbers(year, len(invoice_ids))
    if not numbers:
        return numbers
    if db.engine.dialect.name == "postgresql":  # one statement, two array parameters
        db.session.execute(
            text(
                "UPDATE invoices SET number = given.number FROM unnest(CAST(:ids AS bigint[]),"
                " CAST(:numbers AS text[])) AS given (id, number) WHERE invoices.id = given.id"
            ),
            {"ids": list(invoice_ids), "numbers": numbers},
        )
    else:
        t = Invoice.__table__
        db.session.execute(
            update(t).where(t.c.id == bindparam("given_id")).values(number=bindparam("number")),
            [
                {"given_id": invoice_id, "number": number}
                for invoice_id, number in zip(invoice_ids, numbers, strict=True)
            ],
        )
    return numbers


# -- lifecycle -------------------------------------------------------------------------------


def get_for_owner(owner: User | None, invoice_id: int) -> Invoice:
    """The one owner-scoped invoice lookup: ``owner``'s invoice (None: any, for admins);
    another user's invoice is NotFound, as if it did not exist."""
    query = select(Invoice).where(Invoice.id == invoice_id)
    if owner is not None:
        query = query.where(Invoice.user_id == owner.id)
    invoice = db.session.scalar(query)
    if invoice is None:
        raise NotFound("no such invoice")
    return invoice


# An invoice's admin page: the invoice with its user and lines in one statement (no snapshot:
# the page shows the columns), its payments with their ledger transactions' kinds in a
# second (no entries: the page tells credits applied at issue by the kind alone). Built once.
_FOR_ADMIN = (
    select(Invoice)
    .where(Invoice.id == bindparam("invoice_id"))
    .options(
        defer(Invoice.snapshot),
        joinedload(Invoice.user),
        joinedload(Invoice.lines),
        selectinload(Invoice.payments)
        .joinedload(InvoicePayment.ledger_transaction)
        .lazyload(LedgerTransaction.entries),
    )
)


def get_for_admin(invoice_id: int) -> Invoice:
    """Any user's invoice, as its admin page shows it (``get_for_owner(None, ...)`` with
    what the page reads loaded in two statements, not six)."""
    invoice = db.session.scalars(_FOR_ADMIN, {"invoice_id": invoice_id}).unique().one_or_none()
    if invoice is None:
        raise NotFound("no such invoice")
    return invoice


def lock_invoice(invoice: Invoice) -> Invoice:
    return db.session.scalars(
        select(Invoice)
        .where(Invoice.id == invoice.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


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
        settlement_requests.request_restore(invoice.user_id)  # what it left unpaid stopped
    db.session.flush()
    db.session.expire(invoice, ["payments"])  # read again with this one, if loaded before
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
    user = db.session.get_one(User, invoice.user_id)
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
    before = {"status": str(invoice.status), "amount_paid_minor": invoice.amount_paid_minor}
    payment = record_payment(
        invoice,
        tender=PaymentTender.OFFLINE,
        amount=amount,
        txn_id=txn.id,
        reference=reference,
        created_by=recorded_by,
    )
    audit.record(
        "invoice.offline_payment",
        "invoice",
        invoice.id,
        actor=recorded_by,
        user_id=invoice.user_id,
        before=before,
        after={
            "status": str(invoice.status),
            "amount_paid_minor": invoice.amount_paid_minor,
            "payment": {"amount": str(amount.amount), "currency": amount.currency},
            "reference": reference,
        },
    )
    return payment


def void_invoice(invoice: Invoice, *, reason: str, voided_by: User | None = None) -> Invoice:
    """Cancel an unpaid invoice: its ledger posting is reversed, applied credits come back
    as a new credit lot, its late-usage adjustments return to pending."""
    invoice = lock_invoice(invoice)
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed.field("reason", "is required")
    if invoice.amount_paid_minor:
        raise Conflict("payments were made on this invoice; refund them before voiding it")
    before_status = str(invoice.status)
    transition(invoice, S.VOID)
    user = db.session.get_one(User, invoice.user_id)
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
    events.record(
        "billing.invoice.voided",
        f"invoice:{invoice.id}",
        {**invoice_event(invoice), "reason": invoice.void_reason},
        invoice.user_id,
    )
    log.info(
        "invoice %s (%s) voided: user %s, total %s, credits returned %s, by %s",
        invoice.id,
        invoice.number or "draft",
        invoice.user_id,
        Money(invoice.total_minor, invoice.currency),
        Money(invoice.credits_minor, invoice.currency),
        f"admin {voided_by.id}" if voided_by else "the system",
    )
    audit.record(
        "invoice.voided",
        "invoice",
        invoice.id,
        actor=voided_by,
        user_id=invoice.user_id,
        before={"status": before_status},
        after={"status": str(invoice.status), "reason": invoice.void_reason},
    )
    if invoice.number:  # a draft was never sent: nothing to tell
        mail.queue_email(
            to=user.email,
            subject=f"Invoice {invoice.number} is void",
            template="invoice_void",
            user_id=user.id,
            dedupe_key=f"invoice-void:{invoice.id}",
            invoice=invoice,
            total=Money(invoice.total_minor, invoice.currency),
            credits=Money(invoice.credits_minor, invoice.currency),
            link=f"{current_app.config['PUBLIC_URL']}/invoices/{invoice.id}",
        )
    return invoice


def mark_overdue(now: datetime | None = None) -> int:
    """Open invoices past their due date become overdue (set-based; safe to repeat); the
    platform is told of each."""
    ids = list(
        db.session.scalars(
            update(Invoice)
            .where(Invoice.status == str(S.OPEN), Invoice.due_at < (now or utcnow()))
            .values(status=str(S.OVERDUE))
            .returning(Invoice.id)
        )
    )
    if ids:
        overdue = db.session.scalars(select(Invoice).where(Invoice.id.in_(ids)))
        events.record_many(
            [
                ("billing.invoice.overdue", f"invoice:{i.id}", invoice_event(i), i.user_id)
                for i in overdue
            ]
        )
    return len(ids)


# -- event payloads --------------------------------------------------------------------------


def event_payload(
    invoice_id: int,
    number: str | None,
    user_id: int,
    currency: str,
    total_minor: int,
    period_start: str,
    period_end: str,
    status: S,
) -> dict[str, object]:
    return {
        "invoice_id": invoice_id,
        "invoice_number": number,
        "user_id": user_id,
        "currency": currency,
        "total": major_text(total_minor, currency),
        "total_minor": total_minor,
        "period_start": period_start,
        "period_end": period_end,
        "status": status.label,
    }


def invoice_event(invoice: Invoice) -> dict[str, object]:
    return event_payload(
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
) -> Page:
    """A page of invoices, newest period first: ``user``'s (None: everyone's, for admins).
    The rows carry what a list shows (no snapshot, lines or payments: ``lines`` and
    ``payments`` load on access only)."""
    query = select(Invoice)
    if user is not None:
        query = query.where(Invoice.user_id == user.id)
    if status:
        query = query.where(Invoice.status == S.from_label(status).value)
    if period_start is not None:
        query = query.where(Invoice.period_start == period_start)
    listed = (
        query.options(defer(Invoice.snapshot), lazyload(Invoice.lines), lazyload(Invoice.payments))
        .order_by(Invoice.period_start.desc(), Invoice.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    if user is None:
        # Admin › Invoices shows each row's user: loaded in the same query, not one each.
        # Counted apart: a window count would read every invoice of the installation.
        total = db.session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
        items = list(db.session.scalars(listed.options(joinedload(Invoice.user))))
        return Page(items, page, per_page, total)
    # One user's invoices (a dozen a year): the page and their number in one statement.
    rows = db.session.execute(listed.add_columns(func.count().over())).all()
    if rows:
        total = rows[0][1]
    elif page == 1:
        total = 0
    else:  # past the last page: how many there are, for the pager
        total = db.session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    return Page([row[0] for row in rows], page, per_page, total)


# -- Admin › Invoices --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListedInvoice(InvoiceFigures):
    """A row of Admin › Invoices: the invoice's own columns that the list shows and its user's
    email (no snapshot, lines or payments)."""

    id: int
    number: str | None
    user_id: int
    status: str
    period_start: datetime
    period_end: datetime
    finalized_at: datetime | None
    currency: str
    total_minor: int
    amount_paid_minor: int
    email: str

    @property
    def period_last_day(self) -> date:
        return (self.period_end - timedelta(days=1)).date()


_LISTED = (
    Invoice.id,
    Invoice.number,
    Invoice.user_id,
    Invoice.status,
    Invoice.period_start,
    Invoice.period_end,
    Invoice.finalized_at,
    Invoice.currency,
    Invoice.total_minor,
    Invoice.amount_paid_minor,
)


def _admin_filters(by_user: bool, by_status: bool, by_period: bool) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if by_user:
        where.append(Invoice.user_id == bindparam("user_id"))
    if by_status:
        where.append(Invoice.status == bindparam("status"))
    if by_period:
        where.append(Invoice.period_start == bindparam("period_start"))
    return where


@functools.cache
def _admin_page(by_user: bool, by_status: bool, by_period: bool) -> Select[Any]:
    """One page of the filtered invoices, newest period first, with their users' emails and
    the number of invoices that match (an index-only count, computed once in the same
    round trip): built once per combination of filters. The invoices are sorted and cut to
    the page before their users are joined, and only the listed columns are read."""
    where = _admin_filters(by_user, by_status, by_period)
    page = (
        select(*_LISTED)
        .where(*where)
        .order_by(Invoice.period_start.desc(), Invoice.id.desc())
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
        .subquery()
    )
    matching = select(func.count()).select_from(Invoice).where(*where).scalar_subquery()
    return (
        select(*page.c, User.email, matching.label("matching"))
        .join(User, User.id == page.c.user_id)
        .order_by(page.c.period_start.desc(), page.c.id.desc())
    )


@functools.cache
def _admin_count(by_user: bool, by_status: bool, by_period: bool) -> Select[int]:
    return (
        select(func.count())
        .select_from(Invoice)
        .where(*_admin_filters(by_user, by_status, by_period))
    )


def admin_list(
    *,
    user: User | None = None,
    status: str | None = None,
    period_start: datetime | None = None,
    page: int = 1,
    per_page: int = 20,
) -> Page:
    """Admin › Invoices: a page of every user's invoices (or ``user``'s), newest period first,
    as ``list_invoices`` orders and counts them, in one statement (two past the last page,
    to count what there is)."""
    filters = (user is not None, bool(status), period_start is not None)
    params: dict[str, object] = {"limit": per_page, "offset": (page - 1) * per_page}
    if user is not None:
        params["user_id"] = user.id
    if status:
        params["status"] = S.from_label(status).value
    if period_start is not None:
        params["period_start"] = period_start
    rows = db.session.execute(_admin_page(*filters), params).all()
    if rows:
        total = rows[0].matching
    elif page == 1:
        total = 0
    else:  # past the last page: how many there are, for the pager
        total = db.session.execute(_admin_count(*filters), params).scalar_one()
    return Page([ListedInvoice(*r[:-1]) for r in rows], page, per_page, total)

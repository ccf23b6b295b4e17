"""The Overview's invoices: the unpaid ones and the recent ones, read in one statement, are
what the two statements it replaced read (same invoices, same order, same figures)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Invoice, InvoiceStatus, User
from portal.services import overview
from portal.services.invoicing.invoices import UNPAID

SHOWN = ("id", "number", "status", "due_at", "total", "amount_due", "display_status", "status_css")


def unpaid_before(user_id: int) -> list[Invoice]:
    return list(
        db.session.scalars(
            select(Invoice)
            .where(Invoice.user_id == user_id, Invoice.status.in_([str(s) for s in UNPAID]))
            .order_by(Invoice.due_at, Invoice.id)
        )
    )


def recent_before(user_id: int) -> list[Invoice]:
    return list(
        db.session.scalars(
            select(Invoice)
            .where(Invoice.user_id == user_id, Invoice.status != InvoiceStatus.DRAFT.value)
            .order_by(Invoice.period_start.desc(), Invoice.id.desc())
            .limit(3)
        )
    )


def shown(invoices) -> list[tuple]:
    return [tuple(getattr(i, a) for a in SHOWN) for i in invoices]


def add_invoices(user_id: int, rows) -> None:
    for n, (month, status, due_day, paid) in enumerate(rows):
        start = datetime(2026, month, 1, tzinfo=UTC)
        db.session.add(
            Invoice(
                user_id=user_id,
                status=status,
                number=None if status == "draft" else f"INV-T{user_id}-{n:03d}",
                currency="USD",
                period_start=start,
                period_end=start + timedelta(days=28),
                subtotal_minor=1000 + n,
                total_minor=1000 + n,
                amount_paid_minor=paid,
                due_at=None if due_day is None else datetime(2026, month + 1, due_day, tzinfo=UTC),
                finalized_at=None if status == "draft" else start + timedelta(days=28),
            )
        )
    db.session.flush()


# Invoices written as bare rows (no lines, payments or ledger postings): only which of them the
# page lists, in what order and with what figures, is under test.
@pytest.mark.corrupts_ledger
def test_the_overviews_invoices_are_the_unpaid_and_the_recent_ones(ctx, make_user):
    ids = make_user().id, make_user().id, make_user().id
    owing, settled, new = (db.session.get(User, i) for i in ids)
    add_invoices(
        owing.id,
        [
            (1, "paid", 10, 1000),
            (2, "overdue", 10, 0),
            (3, "open", 5, 300),  # partially paid
            (4, "void", 10, 0),
            (5, "open", 5, 0),  # due the same day as March's: by id
            (6, "draft", None, 0),
            (7, "overdue", 1, 0),
        ],
    )
    add_invoices(settled.id, [(1, "paid", 10, 1000), (2, "void", 10, 0), (3, "draft", None, 0)])
    db.session.commit()
    for user in (owing, settled, new):
        unpaid, recent = overview._invoices(user)
        assert shown(unpaid) == shown(unpaid_before(user.id)), user.id
        assert shown(recent) == shown(recent_before(user.id)), user.id
    assert len(overview._invoices(owing)[0]) == 4

"""Fixtures for invoice documents: snapshots in the shape finalization writes, issued
invoices built through the ORM, the PDF's text as pdftotext reads it."""

from __future__ import annotations

import copy
import itertools
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from portal.extensions import db
from portal.models import Invoice
from tests.support.app import need

SNAPSHOT = {
    "template_version": 1,
    "number": "INV-2026-000001",
    "status": "sent",
    "status_display": "Partially paid",
    "issued_at": "2026-11-01",
    "due_at": "2026-11-15",
    "period_start": "2026-10-01",
    "period_end": "2026-10-31",
    "seller": {
        "name": "Example Cloud Ltd.",
        "address": ["1 Harbour Street", "Dublin D02 XY45"],
        "email": "billing@example.cloud",
        "tax_id": "IE1234567X",
    },
    "customer": {"name": "Alice Liddell", "email": "alice@example.com", "account": "12"},
    "currency": "USD",
    "lines": [
        {
            "kind": "usage",
            "description": "web (vm-1) · CPU",
            "quantity": "20",
            "unit": "core-hours",
            "unit_price": "$0.05",
            "amount": "$1.00",
        },
        {
            "kind": "usage",
            "description": "web (vm-1) · Memory",
            "quantity": "40",
            "unit": "GB-hours",
            "unit_price": "$0.01",
            "amount": "$0.40",
        },
        {
            "kind": "usage",
            "description": "db (vm-2) · Storage",
            "quantity": "100",
            "unit": "GB-months",
            "unit_price": "$0.10",
            "amount": "$10.00",
        },
        {
            "kind": "adjustment",
            "description": "Late usage: web (vm-1) · CPU in September",
            "quantity": "2",
            "unit": "core-hours",
            "unit_price": "$0.05",
            "amount": "$0.10",
        },
        {
            "kind": "fee",
            "description": "Standard plan",
            "quantity": "1",
            "unit": "month",
            "unit_price": "$25.00",
            "amount": "$25.00",
        },
    ],
    "subtotal": "$36.50",
    "credits": "$5.00",
    "total": "$31.50",
    "amount_paid": "$9.99",
    "amount_due": "$21.51",
    "payments": [
        {"date": "2026-11-03", "tender": "card", "amount": "$9.99", "reference": "pi_3Q0example"},
    ],
}


@pytest.fixture
def snapshot():
    """A fresh copy of the snapshot above, with ``changes`` applied."""

    def make(**changes) -> dict:
        return {**copy.deepcopy(SNAPSHOT), **changes}

    return make


_numbers = itertools.count(1)


@pytest.fixture
def make_invoice(app, snapshot):
    """An issued (open) invoice with a number and a snapshot, as finalization leaves it;
    ``draft=True`` gives a draft without either. Returns the invoice id. Its amount columns
    stay 0 (the ledger has nothing to match); the PDF shows the snapshot's figures."""

    def make(user_id: int, *, draft: bool = False, pdf_status: str = "none", **changes) -> int:
        n = next(_numbers)
        number = f"INV-2026-{n:06d}"
        start = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=31 * n)
        with app.app_context():
            invoice = Invoice(
                user_id=user_id,
                status="draft" if draft else "open",
                number=None if draft else number,
                currency="USD",
                period_start=start,
                period_end=start + timedelta(days=31),
                due_at=None if draft else start + timedelta(days=45),
                finalized_at=None if draft else start + timedelta(days=31),
                snapshot=None if draft else snapshot(number=number, **changes),
                pdf_status=pdf_status,
            )
            db.session.add(invoice)
            db.session.commit()
            try:
                return invoice.id
            finally:
                db.session.remove()

    return make


def pdf_text(content: bytes) -> str:
    """The PDF's text laid out as on the page (poppler's pdftotext)."""
    need(shutil.which("pdftotext") is not None, "pdftotext (poppler-utils) is not installed")
    result = subprocess.run(
        ["pdftotext", "-layout", "-", "-"],
        input=content,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return result.stdout.decode()


def text_line(text: str, *words: str) -> str:
    """The one line of ``text`` that holds all ``words``."""
    found = [line for line in text.splitlines() if all(w in line for w in words)]
    assert len(found) == 1, f"{len(found)} lines hold {words!r}:\n{text}"
    return found[0]

"""bench/load.py's seed is coherent: a few users' year of history reconciles, and what the
simulated users need (password, token, invoices, a PDF) works. The load itself never runs
here (no timings in tests)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from bench import load
from portal.extensions import db
from portal.models import AccountKind, Invoice, InvoicePdf, JobRequest
from portal.services import accounts
from portal.services.wallet import ledger
from portal.services.wallet.reconcile import find_discrepancies

pytestmark = pytest.mark.postgres  # the seed's bulk SQL is PostgreSQL's


def test_the_seed_is_a_coherent_year(app, make_app):
    # Jobs go to Redis (the shared app would render every invoice's PDF at once).
    seeding = make_app(RQ_ASYNC=True)
    seeded = load.seed(seeding, users=6, load_users=2)

    assert len(seeded.periods) == load.MONTHS + 1
    assert seeded.invoices == 6 * load.MONTHS
    assert [u["id"] for u in seeded.load_users] == [1, 2]
    with seeding.app_context():
        assert find_discrepancies() == []
        for user in seeded.load_users:
            assert accounts.authenticate(user["email"], load.PASSWORD).id == user["id"]
            assert accounts.token_for(user["token"]).user_id == user["id"]
            assert len(user["invoices"]) == load.MONTHS
            pdf = db.session.get(InvoicePdf, user["pdf_invoice"])
            assert pdf is not None and pdf.content.startswith(b"%PDF")
        assert db.session.scalar(select(func.count()).select_from(InvoicePdf)) == 2
        # Nothing left for the worker.
        assert not db.session.scalar(
            select(func.count()).select_from(JobRequest).where(JobRequest.status != "done")
        )
        # An open invoice is its user's latest, and that user has no cash to pay it with.
        for invoice in db.session.scalars(select(Invoice).where(Invoice.status != "paid")):
            assert invoice.status == "open"
            latest = db.session.scalar(
                select(func.max(Invoice.period_start)).where(Invoice.user_id == invoice.user_id)
            )
            assert invoice.period_start == latest
            cash = ledger.user_account(invoice.user_id, AccountKind.CASH)
            assert cash.balance_minor == 0
        db.session.remove()

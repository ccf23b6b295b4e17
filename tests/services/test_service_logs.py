"""What the services tell an operator: an invoice run and a settlement log the ids and the
amounts that trace each cent."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Invoice, InvoicePayment, User
from portal.money import Money
from portal.services.invoicing import run as invoice_run
from portal.services.metering import deployments
from portal.services.payments import settlement, topups
from portal.services.wallet import credits

OCT = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))


@pytest.fixture
def user(ctx, make_user):
    return db.session.get(User, make_user().id)


def test_an_invoice_run_and_a_settlement_log_their_ids_and_amounts(user, caplog):
    dep, _ = deployments.create_deployment(
        external_id="logged-vm",
        user=user,
        kind="vm",
        cpu_cores=1,
        memory_gb=0,
        storage_gb=0,
        started_at=OCT[0],
    )
    deployments.delete_deployment(dep, ended_at=OCT[0] + timedelta(hours=10))  # 10 x $0.05
    credits.grant_credit(
        user=user, amount=Money(20, "USD"), reason="goodwill", idempotency_key="log-credit"
    )
    db.session.commit()

    caplog.set_level(logging.INFO, logger="portal")
    invoice_run.generate_period(*OCT)
    db.session.commit()
    invoice = db.session.scalars(select(Invoice).where(Invoice.user_id == user.id)).one()
    run_log = caplog.text
    assert (
        "invoice run for 2026-10-01..2026-11-01: 1 chunks, 1 users considered, "
        "1 invoices made (0.30 USD), 0 skipped (already invoiced)"
    ) in run_log
    assert (
        f"invoice {invoice.id} ({invoice.number}) issued: user {user.id}, subtotal 0.50 USD, "
        "credits 0.20 USD, total 0.30 USD, open"
    ) in run_log

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="portal.services.wallet.ledger")
    topups.credit_top_up(user, Money(100, "USD"), reference="wire-7")
    db.session.commit()
    settlement.settle(user.id)
    payments = list(
        db.session.scalars(
            select(InvoicePayment)
            .where(InvoicePayment.invoice_id == invoice.id)
            .order_by(InvoicePayment.id)
        )
    )
    assert [(p.tender, p.amount_minor) for p in payments] == [("credit", 20), ("cash", 30)]
    cash = payments[1]
    settle_log = caplog.text
    assert (
        f"settlement: invoice {invoice.id} ({invoice.number}) of user {user.id}: cash paid "
        f"0.30 USD (ledger transaction {cash.ledger_transaction_id})"
    ) in settle_log
    assert (
        f"settlement of user {user.id}: invoices paid [{invoice.id}], 1 payments, 0 card attempts"
    ) in settle_log
    # Every posting at DEBUG: the transaction, its key, the accounts and amounts.
    assert (
        f"ledger transaction {cash.ledger_transaction_id} posted: "
        f"key invoice:{invoice.id}:pay:2:cash, kind invoice_payment, legs "
    ) in settle_log
    # Nothing else logs a settlement of this user's invoice twice.
    assert (
        settle_log.count(f"cash paid 0.30 USD (ledger transaction {cash.ledger_transaction_id})")
        == 1
    )

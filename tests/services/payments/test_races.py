"""Settlement runs at the same moment, with real card charges at the stand-in (PostgreSQL:
row locks and the one-open-attempt index decide, not timing). The app fixture proves the
ledger reconciles after each test."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import Invoice, InvoicePayment, User
from portal.money import Money
from portal.services.payments import settlement, topups
from portal.services.wallet import ledger
from tests.support.payments import TEST_CARDS, add_card, charges, invoice_of, settlement_held

pytestmark = pytest.mark.postgres

AUG = (datetime(2026, 8, 1, tzinfo=UTC), datetime(2026, 9, 1, tzinfo=UTC))
SEP = (datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC))


def at_once(app, jobs) -> None:
    """Run each job in its own thread and app context (its own session and connection),
    all released together; any job's exception fails the test."""
    barrier = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job):
        try:
            with app.app_context():
                try:
                    barrier.wait()
                    job()
                finally:
                    db.session.remove()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def user_with_invoices(make_user, numbers: tuple[str, ...]) -> tuple[User, list[Invoice]]:
    """A user with cards (the first is the default) and three unpaid invoices."""
    user = db.session.get(User, make_user().id)
    with settlement_held():
        for number in numbers:
            assert add_card(user, number).created
        invoices = [
            invoice_of(user, {"a": 20}, period=AUG),
            invoice_of(user, {"b": 40}, period=SEP),
            invoice_of(user, {"c": 60}),
        ]
    db.session.commit()
    return user, invoices


def payments_of(invoice: Invoice) -> list[tuple[str, int]]:
    return [
        (p.tender, p.amount_minor)
        for p in db.session.scalars(
            select(InvoicePayment)
            .where(InvoicePayment.invoice_id == invoice.id)
            .order_by(InvoicePayment.id)
        )
    ]


def test_two_settlement_runs_at_once_pay_each_invoice_once(pctx, make_user, standin):
    users = [
        user_with_invoices(make_user, (TEST_CARDS["ok"],)),
        user_with_invoices(make_user, (TEST_CARDS["ok"],)),
        user_with_invoices(make_user, (TEST_CARDS["charge_declined"], TEST_CARDS["ok"])),
    ]

    at_once(
        pctx, [lambda uid=user.id: settlement.settle(uid) for user, _ in users for _run in range(2)]
    )

    db.session.expire_all()
    for user, invoices in users:
        for invoice in invoices:
            invoice = db.session.get(Invoice, invoice.id)
            assert invoice.status == "paid", invoice.number
            assert payments_of(invoice) == [("card", invoice.total_minor)]
        intents = charges(standin, user)
        succeeded = Counter(
            int(i["metadata"]["invoice_id"]) for i in intents if i["status"] == "succeeded"
        )
        assert succeeded == {invoice.id: 1 for invoice in invoices}
        amounts = sorted(i["amount"] for i in intents if i["status"] == "succeeded")
        assert amounts == sorted(i.total_minor for i in invoices) == [100, 200, 300]
        balances = ledger.balances(user)
        assert (balances.cash, balances.voucher) == (Money(0, "USD"), Money(0, "USD"))


def test_a_top_up_during_a_settlement_pays_each_invoice_once(pctx, make_user, standin):
    people = []
    for _ in range(4):
        user = db.session.get(User, make_user().id)
        with settlement_held():
            assert add_card(user).created
            invoice = invoice_of(user, {"web": 100})
        people.append((user, invoice))
    db.session.commit()

    def top_up(uid: int):
        def run():
            user = db.session.get(User, uid)
            topups.credit_top_up(user, Money(500, "USD"), reference=f"pi_race_{uid}")
            db.session.commit()  # its own settlement runs after this commit

        return run

    at_once(
        pctx,
        [
            job
            for user, _ in people
            for job in (lambda uid=user.id: settlement.settle(uid), top_up(user.id))
        ],
    )

    db.session.expire_all()
    for user, invoice in people:
        invoice = db.session.get(Invoice, invoice.id)
        assert invoice.status == "paid"
        paid = payments_of(invoice)
        assert sum(amount for _, amount in paid) == 500 and len(paid) == 1, paid
        charged = sum(i["amount"] for i in charges(standin, user) if i["status"] == "succeeded")
        assert charged in (0, 500)
        # Paid by the card, the top-up stays in the balance; paid by the top-up, the card
        # was not charged (or its charge, already under way, went to the balance).
        assert ledger.balances(user).cash == Money(500 + charged - 500, "USD")
        assert (
            db.session.scalar(
                select(func.count())
                .select_from(InvoicePayment)
                .where(InvoicePayment.invoice_id == invoice.id)
            )
            == 1
        )

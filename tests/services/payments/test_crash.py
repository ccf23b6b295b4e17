"""A settlement process killed between its attempt row and the card processor's answer:
after recovery the card is charged exactly once (SQLite and PostgreSQL).

The child (tests/support/crash_settle.py) is a real process on the same database and the
same stand-in; it kills itself with SIGKILL either just before the charge is sent or just
after the stand-in has charged the card, before anything of the answer is recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import (
    AttemptStatus,
    Event,
    Invoice,
    InvoicePayment,
    OutboundEmail,
    PaymentAttempt,
    User,
    utcnow,
)
from portal.money import Money
from portal.services.payments import card_charges, cards, settlement
from portal.services.wallet import ledger
from tests.support.app import BASE_CONFIG
from tests.support.gateway import ROOT
from tests.support.payments import add_card, charges, invoice_of, settlement_held


def settle_and_die(app, database_url: str, redis_url: str, user_id: int, when: str) -> None:
    config = {
        **BASE_CONFIG,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        **{
            key: app.config[key]
            for key in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_BASE")
        },
    }
    db.session.commit()  # SQLite: the child needs the write lock
    child = subprocess.run(
        [sys.executable, "-m", "tests.support.crash_settle", when, str(user_id)],
        cwd=ROOT,
        env={**os.environ, "PORTAL_CRASH_CONFIG": json.dumps(config)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr)


@pytest.fixture
def user(pctx, make_user) -> User:
    return db.session.get(User, make_user().id)


def prepared(user: User) -> Invoice:
    with settlement_held():
        assert add_card(user).created
        invoice = invoice_of(user, {"web": 100})
    return invoice


def state(invoice: Invoice) -> tuple[str, list[tuple[str, int]], list[str]]:
    db.session.expire_all()
    invoice = db.session.get(Invoice, invoice.id)
    payments = [
        (p.tender, p.amount_minor)
        for p in db.session.scalars(
            select(InvoicePayment).where(InvoicePayment.invoice_id == invoice.id)
        )
    ]
    attempts = list(
        db.session.scalars(
            select(PaymentAttempt.status)
            .where(PaymentAttempt.invoice_id == invoice.id)
            .order_by(PaymentAttempt.number)
        )
    )
    return invoice.status, payments, attempts


def later() -> object:
    """A moment when an unanswered attempt can no longer be in flight."""
    return utcnow() + card_charges.stale_after() + timedelta(seconds=1)


def test_killed_after_the_card_was_charged_recovery_records_that_one_charge(
    user, pctx, database_url, redis_url, standin
):
    invoice = prepared(user)

    settle_and_die(pctx, database_url, redis_url, user.id, "after")

    assert state(invoice) == ("open", [], [AttemptStatus.PENDING])
    attempt = db.session.scalar(
        select(PaymentAttempt).where(PaymentAttempt.invoice_id == invoice.id)
    )
    assert attempt.gateway_payment_id is None  # nothing of the answer was recorded
    charged = charges(standin, user)
    assert [(i["amount"], i["status"]) for i in charged] == [(500, "succeeded")]

    # A settlement while the charge could still be in flight leaves it alone.
    settlement.settle(user.id)
    assert state(invoice) == ("open", [], [AttemptStatus.PENDING])
    assert len(charges(standin, user)) == 1

    # Once it cannot be, the next run looks the charge up by its key and records it.
    settlement.settle(user.id, now=later())

    assert state(invoice) == ("paid", [("card", 500)], [AttemptStatus.SUCCEEDED])
    assert [(i["id"], i["status"]) for i in charges(standin, user)] == [
        (charged[0]["id"], "succeeded")
    ]
    attempt = db.session.get(PaymentAttempt, attempt.id)
    assert attempt.gateway_payment_id == charged[0]["id"]
    found = pctx.extensions["portal.gateway"].find_payment_intent_by_idempotency_key(
        cards.customer_id(user), attempt.idempotency_key
    )
    assert found.id == charged[0]["id"]
    assert ledger.balances(user).cash == Money(0, "USD")
    # Recovery again, and more settlement: nothing changes.
    assert card_charges.recover(user_id=user.id, now=later()) == 0
    settlement.settle(user.id, now=later())
    assert state(invoice) == ("paid", [("card", 500)], [AttemptStatus.SUCCEEDED])
    assert len(charges(standin, user)) == 1


def test_killed_before_the_charge_was_sent_recovery_fails_it_and_the_next_run_charges_once(
    user, pctx, database_url, redis_url, standin
):
    invoice = prepared(user)

    settle_and_die(pctx, database_url, redis_url, user.id, "before")

    assert state(invoice) == ("open", [], [AttemptStatus.PENDING])
    assert charges(standin, user) == []

    assert card_charges.recover(user_id=user.id, now=later()) == 1
    db.session.expire_all()
    attempt = db.session.scalar(
        select(PaymentAttempt).where(PaymentAttempt.invoice_id == invoice.id)
    )
    assert (attempt.status, attempt.decline_code) == (AttemptStatus.FAILED, "not_sent")
    assert state(invoice) == ("open", [], [AttemptStatus.FAILED])

    settlement.settle(user.id)

    assert state(invoice) == (
        "paid",
        [("card", 500)],
        [AttemptStatus.FAILED, AttemptStatus.SUCCEEDED],
    )
    assert [(i["amount"], i["status"]) for i in charges(standin, user)] == [(500, "succeeded")]
    # The lost attempt is not a failed payment the user hears about.

    assert (
        db.session.scalars(select(Event).where(Event.name == "billing.payment.failed")).all() == []
    )
    assert (
        db.session.scalars(
            select(OutboundEmail).where(
                OutboundEmail.user_id == user.id,
                OutboundEmail.subject.contains("could not collect"),
            )
        ).all()
        == []
    )

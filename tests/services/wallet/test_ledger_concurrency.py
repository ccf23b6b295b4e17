"""Races on PostgreSQL: many connections posting at once against one wallet."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from portal.errors import InsufficientFunds
from portal.extensions import db
from portal.models import AccountKind, User
from portal.money import Money
from portal.services.wallet import credits, ledger
from portal.services.wallet.reconcile import find_discrepancies

pytestmark = pytest.mark.postgres

WORKERS = 50


@pytest.fixture(scope="module")
def _wide_app(make_app):
    return make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": WORKERS + 2, "max_overflow": 0})


@pytest.fixture
def wide_app(app, _wide_app):
    """The test app's database with a pool wide enough for 50 concurrent transactions;
    its connections are closed after each test."""
    yield _wide_app
    with _wide_app.app_context():
        db.engine.dispose()


def run_concurrently(app, fn, count: int = WORKERS) -> list[str]:
    """Run fn(i) in ``count`` threads, each in its own app context and transaction, started
    together. Returns each call's outcome: 'ok' or the error's class name."""
    barrier = threading.Barrier(count)

    def one(i: int) -> str:
        with app.app_context():
            try:
                barrier.wait()
                fn(i)
                db.session.commit()
                return "ok"
            except InsufficientFunds:
                db.session.rollback()
                return "InsufficientFunds"
            finally:
                db.session.remove()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def test_50_concurrent_debits_never_overdraw(wide_app, make_user):
    user_id = make_user().id
    with wide_app.app_context():
        user = db.session.get(User, user_id)
        ledger.post_transaction(
            idempotency_key="topup",
            kind="topup",
            user_id=user_id,
            legs=[
                (ledger.system_account(AccountKind.STRIPE_CLEARING, "USD"), -5000),
                (ledger.user_account(user, AccountKind.CASH), 5000),
            ],
        )
        db.session.commit()

    def debit(i: int) -> None:
        user = db.session.get(User, user_id)
        ledger.post_transaction(
            idempotency_key=f"debit:{i}",
            kind="charge",
            user_id=user_id,
            legs=[
                (ledger.user_account(user, AccountKind.CASH), -300),
                (ledger.system_account(AccountKind.REVENUE, "USD"), 300),
            ],
        )

    outcomes = run_concurrently(wide_app, debit)
    # 5000 covers exactly 16 debits of 300; the others are refused with a clear error.
    assert outcomes.count("ok") == 16
    assert outcomes.count("InsufficientFunds") == WORKERS - 16
    with wide_app.app_context():
        assert ledger.balances(db.session.get(User, user_id)).cash == Money(200, "USD")
        assert find_discrepancies() == []


def test_50_concurrent_postings_of_one_key_post_once(wide_app, make_user):
    user_id = make_user().id

    def grant(_i: int) -> None:
        user = db.session.get(User, user_id)
        credits.grant_credit(
            user=user, amount=Money(1000, "USD"), reason="race", idempotency_key="one-key"
        )

    outcomes = run_concurrently(wide_app, grant)
    assert outcomes == ["ok"] * WORKERS
    with wide_app.app_context():
        user = db.session.get(User, user_id)
        assert ledger.balances(user).credit == Money(1000, "USD")
        assert len(credits.list_lots(user)) == 1


def test_concurrent_credit_spends_draw_each_lot_once(wide_app, make_user):
    user_id = make_user().id
    with wide_app.app_context():
        user = db.session.get(User, user_id)
        for i in range(3):
            credits.grant_credit(
                user=user, amount=Money(1000, "USD"), reason=f"lot {i}", idempotency_key=f"lot:{i}"
            )
        db.session.commit()

    def spend(i: int) -> None:
        user = db.session.get(User, user_id)
        credits.spend_credit(
            user=user,
            amount=Money(250, "USD"),
            counter_account=ledger.system_account(AccountKind.REVENUE, "USD"),
            idempotency_key=f"spend:{i}",
            kind="spend",
            description="race",
        )

    outcomes = run_concurrently(wide_app, spend, count=20)
    assert outcomes.count("ok") == 12  # 3000 / 250
    with wide_app.app_context():
        user = db.session.get(User, user_id)
        assert ledger.balances(user).credit == Money(0, "USD")
        assert all(lot.remaining_minor == 0 for lot in credits.list_lots(user))
        assert find_discrepancies() == []

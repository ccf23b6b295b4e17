"""The ledger: balanced postings, idempotency keys, no negative wallet, reconcile."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from portal.errors import IdempotencyConflict, InsufficientFunds
from portal.extensions import db
from portal.models import AccountKind, LedgerAccount, LedgerEntry, LedgerTransaction, User, utcnow
from portal.money import Money
from portal.services.wallet import credits, ledger
from portal.services.wallet.reconcile import find_discrepancies


def top_up(user: User, minor: int, key: str) -> LedgerTransaction:
    """Money arriving from the card processor into the user's prepaid balance."""
    return ledger.post_transaction(
        idempotency_key=key,
        kind="topup",
        user_id=user.id,
        legs=[
            (ledger.system_account(AccountKind.STRIPE_CLEARING, user.currency), -minor),
            (ledger.user_account(user, AccountKind.CASH), minor),
        ],
    )


def charge(user: User, minor: int, key: str) -> LedgerTransaction:
    return ledger.post_transaction(
        idempotency_key=key,
        kind="charge",
        user_id=user.id,
        legs=[
            (ledger.user_account(user, AccountKind.CASH), -minor),
            (ledger.system_account(AccountKind.REVENUE, user.currency), minor),
        ],
    )


@pytest.fixture
def user(ctx, make_user):
    return db.session.get(User, make_user().id)


def test_a_posting_moves_balances_and_sums_to_zero(user):
    txn = top_up(user, 5000, "t1")
    db.session.commit()
    assert sum(e.amount_minor for e in txn.entries) == 0
    assert ledger.balances(user).cash == Money(5000, "USD")
    charge(user, 1234, "c1")
    db.session.commit()
    assert ledger.balances(user).cash == Money(3766, "USD")
    assert find_discrepancies() == []


def test_same_key_twice_posts_once(user):
    first = top_up(user, 5000, "same")
    second = top_up(user, 5000, "same")
    db.session.commit()
    assert first.id == second.id
    assert db.session.scalar(select(db.func.count()).select_from(LedgerTransaction)) == 1
    assert ledger.balances(user).cash == Money(5000, "USD")


def test_same_key_with_other_content_is_refused(user):
    top_up(user, 5000, "same")
    db.session.commit()
    with pytest.raises(IdempotencyConflict):
        top_up(user, 6000, "same")
    db.session.rollback()
    assert ledger.balances(user).cash == Money(5000, "USD")


def test_a_wallet_never_goes_negative(user):
    top_up(user, 1000, "t1")
    db.session.commit()
    with pytest.raises(InsufficientFunds, match="does not cover"):
        charge(user, 1001, "c1")
    db.session.rollback()
    assert ledger.balances(user).cash == Money(1000, "USD")
    assert db.session.scalar(select(db.func.count()).select_from(LedgerEntry)) == 2


def test_the_database_refuses_a_negative_wallet_too(user):
    account = ledger.user_account(user, AccountKind.CASH)
    db.session.commit()
    with pytest.raises(IntegrityError):
        db.session.execute(
            update(LedgerAccount).where(LedgerAccount.id == account.id).values(balance_minor=-1)
        )
        db.session.flush()
    db.session.rollback()


def test_unbalanced_and_mixed_currency_postings_are_refused(user):
    cash = ledger.user_account(user, AccountKind.CASH)
    revenue = ledger.system_account(AccountKind.REVENUE, "USD")
    with pytest.raises(ValueError, match="unbalanced"):
        ledger.post_transaction(idempotency_key="x", kind="x", legs=[(cash, 10), (revenue, -9)])
    eur = ledger.system_account(AccountKind.REVENUE, "EUR")
    with pytest.raises(ValueError, match="one currency"):
        ledger.post_transaction(idempotency_key="y", kind="x", legs=[(cash, 10), (eur, -10)])
    with pytest.raises(TypeError):
        ledger.post_transaction(idempotency_key="z", kind="x", legs=[(cash, 1.0), (revenue, -1.0)])
    db.session.rollback()


@pytest.mark.corrupts_ledger
def test_reconcile_finds_a_tampered_cached_balance(user, runner):
    top_up(user, 5000, "t1")
    db.session.commit()
    db.session.execute(
        update(LedgerAccount)
        .where(LedgerAccount.user_id == user.id, LedgerAccount.kind == "cash")
        .values(balance_minor=4000)
    )
    db.session.commit()
    problems = find_discrepancies()
    assert any("caches 4000, entries give 5000" in p for p in problems)
    result = runner.invoke(args=["billing", "reconcile"])
    assert result.exit_code == 1
    assert "caches 4000" in result.output


@pytest.mark.corrupts_ledger
def test_reconcile_finds_an_unbalanced_transaction(user, runner):
    top_up(user, 5000, "t1")
    db.session.commit()
    entry = db.session.scalars(select(LedgerEntry)).first()
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.id == entry.id)
        .values(amount_minor=entry.amount_minor + 1)
    )
    db.session.commit()
    assert any("sums to 1" in p for p in find_discrepancies())
    assert runner.invoke(args=["billing", "reconcile"]).exit_code == 1


def test_reconcile_command_passes_on_a_clean_ledger(user, runner):
    top_up(user, 5000, "t1")
    db.session.commit()
    result = runner.invoke(args=["billing", "reconcile"])
    assert result.exit_code == 0, result.output
    assert "checks passed" in result.output


operations = st.lists(
    st.tuples(
        st.sampled_from(["topup", "charge", "grant", "spend", "expire"]),
        st.integers(min_value=1, max_value=20_000),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_random_sequences_keep_every_invariant(user, ops):
    """Grants, top-ups, debits and expiries in any order: zero-sum, no negative wallet,
    cached = derived, lots = credit balance; refused debits change nothing."""
    run = db.session.scalar(select(db.func.count()).select_from(LedgerTransaction))
    revenue = ledger.system_account(AccountKind.REVENUE, "USD")
    expected_cash = ledger.balances(user).cash.amount_minor
    for i, (op, minor) in enumerate(ops):
        key = f"prop:{run}:{i}"
        money = Money(minor, "USD")
        try:
            if op == "topup":
                top_up(user, minor, key)
                expected_cash += minor
            elif op == "charge":
                charge(user, minor, key)
                expected_cash -= minor
            elif op == "grant":
                credits.grant_credit(
                    user=user,
                    amount=money,
                    reason="prop",
                    idempotency_key=key,
                    expires_at=utcnow() + timedelta(days=1) if minor % 2 else None,
                )
            elif op == "spend":
                credits.spend_credit(
                    user=user,
                    amount=money,
                    counter_account=revenue,
                    idempotency_key=key,
                    kind="spend",
                    description="prop",
                )
            else:
                credits.expire_credits(now=utcnow() + timedelta(days=2))
            db.session.commit()
        except InsufficientFunds:
            db.session.rollback()
        assert ledger.balances(user).cash.amount_minor == expected_cash
        assert ledger.balances(user).credit.amount_minor >= 0
    assert find_discrepancies() == []

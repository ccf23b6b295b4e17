"""Wallet history: every wallet entry of the user, newest first, page by page."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import AccountKind, LedgerAccount, LedgerEntry, User
from portal.money import Money
from portal.services.wallet import credits, ledger


def post(user: User, kind: AccountKind, counter: AccountKind, minor: int, key: str) -> None:
    """Move ``minor`` into (minor > 0) or out of the user's ``kind`` account."""
    ledger.post_transaction(
        idempotency_key=key,
        kind=f"test_{kind}",
        user_id=user.id,
        description=key,
        legs=[
            (ledger.user_account(user, kind), minor),
            (ledger.system_account(counter, user.currency), -minor),
        ],
    )


def expected_history(user: User) -> list[tuple[int, str, int]]:
    rows = db.session.execute(
        select(LedgerEntry.id, LedgerAccount.kind, LedgerEntry.amount_minor)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .where(
            LedgerAccount.user_id == user.id, LedgerAccount.kind.in_(["cash", "voucher", "credit"])
        )
        .order_by(LedgerEntry.id.desc())
    ).all()
    return [tuple(r) for r in rows]


@pytest.fixture
def users(ctx, make_user):
    ids = make_user().id, make_user().id  # both before this session opens a transaction
    return tuple(db.session.get(User, i) for i in ids)


def test_pages_walk_all_wallets_newest_first(users):
    user, other = users
    for i in range(12):
        post(user, AccountKind.CASH, AccountKind.STRIPE_CLEARING, 1000 + i, f"cash-in-{i}")
        post(other, AccountKind.CASH, AccountKind.STRIPE_CLEARING, 500, f"other-{i}")
        if i % 3 == 0:
            credits.grant_credit(
                user=user,
                amount=Money(200 + i, "USD"),
                reason=f"grant {i}",
                idempotency_key=f"grant-{i}",
            )
        if i % 4 == 1:
            post(user, AccountKind.VOUCHER, AccountKind.VOUCHER_ISSUANCE, 300 + i, f"voucher-{i}")
        if i % 2:
            post(user, AccountKind.CASH, AccountKind.REVENUE, -(100 + i), f"charge-{i}")
        # receivable is not a wallet: never in the history (owed, then paid by card)
        post(user, AccountKind.RECEIVABLE, AccountKind.REVENUE, -(50 + i), f"owed-{i}")
        post(user, AccountKind.RECEIVABLE, AccountKind.STRIPE_CLEARING, 50 + i, f"paid-{i}")
    db.session.commit()
    expected = expected_history(user)
    assert len(expected) == 12 + 4 + 3 + 6

    for per_page in (1, 4, 7, 25, 200):
        seen = []
        page = 1
        while True:
            result = ledger.wallet_history(user, page=page, per_page=per_page)
            assert result.total == len(expected)
            assert result.pages == -(-len(expected) // per_page)
            seen += [(r.entry_id, r.account_kind, r.amount.amount_minor) for r in result.items]
            if not result.has_next:
                break
            assert len(result.items) == per_page
            page += 1
        assert seen == expected, per_page
        # The uncounted window (the admin's page of a user) gives the same pages.
        for n in range(1, page + 2):
            counted = ledger.wallet_history(user, page=n, per_page=per_page)
            window = ledger.history_window(user, page=n, per_page=per_page)
            assert (window.items, window.has_next, window.has_prev, window.pages) == (
                counted.items,
                counted.has_next,
                counted.has_prev,
                None,
            )

    first = ledger.wallet_history(user, per_page=4).items
    assert [r.description for r in first] == ["charge-11", "cash-in-11", "cash-in-10", "charge-9"]
    assert (first[0].transaction_kind, first[0].account_kind, first[0].amount) == (
        "test_cash",
        "cash",
        Money(-111, "USD"),
    )
    assert [r.account_kind for r in ledger.wallet_history(user, page=2, per_page=4).items] == [
        "voucher",
        "credit",
        "cash",
        "cash",
    ]

    beyond = ledger.wallet_history(user, page=99, per_page=25)
    assert (beyond.items, beyond.total, beyond.page) == ([], len(expected), 99)


def test_a_user_without_entries_has_an_empty_history(users):
    user, other = users
    post(other, AccountKind.CASH, AccountKind.STRIPE_CLEARING, 500, "other")
    db.session.commit()
    result = ledger.wallet_history(user)
    assert (result.items, result.total, result.pages, result.has_next) == ([], 0, 1, False)
    window = ledger.history_window(user)
    assert (window.items, window.has_next, window.has_prev) == ([], False, False)


def test_recent_history_is_the_first_page_of_the_history(users):
    """recent_history (one LATERAL statement on PostgreSQL) gives what wallet_history's
    first page gives, whatever the limit, and nothing for a user without entries."""
    user, other = users
    for i in range(9):
        post(user, AccountKind.CASH, AccountKind.STRIPE_CLEARING, 1000 + i, f"cash-in-{i}")
        if i % 3 == 0:
            post(user, AccountKind.VOUCHER, AccountKind.VOUCHER_ISSUANCE, 300 + i, f"voucher-{i}")
        if i % 4 == 1:
            credits.grant_credit(
                user=user, amount=Money(200 + i, "USD"), reason=f"g{i}", idempotency_key=f"g{i}"
            )
        post(user, AccountKind.RECEIVABLE, AccountKind.REVENUE, -(50 + i), f"owed-{i}")
        post(user, AccountKind.RECEIVABLE, AccountKind.STRIPE_CLEARING, 50 + i, f"paid-{i}")
    db.session.commit()
    for limit in (1, 2, 5, 10, 100):
        assert (
            ledger.recent_history(user, limit) == ledger.wallet_history(user, per_page=limit).items
        ), limit
    assert ledger.recent_history(other, 5) == []
    post(other, AccountKind.RECEIVABLE, AccountKind.REVENUE, -5, "other-owed")
    post(other, AccountKind.RECEIVABLE, AccountKind.STRIPE_CLEARING, 5, "other-paid")
    assert ledger.recent_history(other, 5) == []

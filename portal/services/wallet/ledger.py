"""Posting to the ledger, and reading balances and history from it.

``post_transaction`` is the one way money moves. It locks the user accounts it touches
(ordered by id, so two postings cannot deadlock), refuses a second posting of the same
idempotency key with other content, refuses to take a wallet below zero, writes the entries
and moves the cached balances in the same database transaction. It flushes; the caller's
request or job commits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    Integer,
    Label,
    Row,
    Select,
    Subquery,
    bindparam,
    func,
    insert,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from ...db import Page, Window, allocate_ids, bulk_insert, dialect_insert, ids_in
from ...errors import IdempotencyConflict, InsufficientFunds, ValidationFailed
from ...extensions import db
from ...models import (
    AccountKind,
    CurrencyPin,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    User,
    utcnow,
)
from ...models.ledger import USER_KINDS, WALLET_KINDS
from ...money import Money, currency_digits

log = logging.getLogger(__name__)

Leg = tuple[LedgerAccount, int]  # (account, amount_minor: > 0 credits, < 0 debits)


def system_account(kind: AccountKind, currency: str) -> LedgerAccount:
    if kind in USER_KINDS:
        raise ValueError(f"{kind} is a user account kind")
    return _get_or_create_account(None, kind, currency)


def user_account(user: User | int, kind: AccountKind, currency: str | None = None) -> LedgerAccount:
    if kind not in USER_KINDS:
        raise ValueError(f"{kind} is a system account kind")
    user_id = user if isinstance(user, int) else user.id
    if currency is None:
        currency = (
            user.currency if isinstance(user, User) else db.session.get_one(User, user_id).currency
        )
    return _get_or_create_account(user_id, kind, currency)


def pin_currency(currency: str) -> None:
    """Record the digits ``currency``'s amounts are stored with, once (the first account in
    it). Reconcile compares the pins with the code's table ever after."""
    db.session.execute(
        dialect_insert(CurrencyPin.__table__)
        .values(code=currency, digits=currency_digits(currency), pinned_at=utcnow())
        .on_conflict_do_nothing()
    )


def open_user_accounts(user: User) -> None:
    """Create the user's wallet and receivable accounts in the user's currency."""
    pin_currency(user.currency)
    for kind in (AccountKind.CASH, AccountKind.VOUCHER, AccountKind.CREDIT, AccountKind.RECEIVABLE):
        _get_or_create_account(user.id, kind, user.currency)


def _get_or_create_account(user_id: int | None, kind: AccountKind, currency: str) -> LedgerAccount:
    query = select(LedgerAccount).where(
        LedgerAccount.kind == str(kind),
        LedgerAccount.currency == currency,
        LedgerAccount.user_id.is_(None) if user_id is None else LedgerAccount.user_id == user_id,
    )
    account = db.session.scalar(query)
    if account is None:
        # Two transactions may create the same account at once: the unique index decides,
        # the loser reads the winner's row.
        db.session.execute(
            dialect_insert(LedgerAccount.__table__)
            .values(
                user_id=user_id,
                kind=str(kind),
                currency=currency,
                balance_minor=None if user_id is None else 0,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing()
        )
        account = db.session.scalars(query).one()
    return account


def lock_accounts(accounts: Iterable[LedgerAccount]) -> list[LedgerAccount]:
    """SELECT ... FOR UPDATE the cached (user) accounts, ordered by id, refreshing them.

    On SQLite FOR UPDATE is dropped by SQLAlchemy; there every transaction starts with
    BEGIN IMMEDIATE (see portal/__init__.py), which serializes writers instead.
    """
    ids = sorted({a.id for a in accounts if a.user_id is not None})
    if not ids:
        return []
    return list(
        db.session.scalars(
            select(LedgerAccount)
            .where(LedgerAccount.id.in_(ids))
            .order_by(LedgerAccount.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )


def _content_hash(kind: str, legs: dict[int, int], extra: dict[str, object] | None) -> str:
    payload = {"kind": kind, "legs": sorted(legs.items()), "extra": extra or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def post_transaction(
    *,
    idempotency_key: str,
    kind: str,
    legs: Sequence[Leg],
    description: str = "",
    user_id: int | None = None,
    created_by_id: int | None = None,
    fingerprint: dict[str, object] | None = None,
) -> LedgerTransaction:
    """Post one balanced transaction, or return the one already posted under this key.

    ``fingerprint`` holds what else identifies the movement (a reason, an expiry) so a
    replayed key with different content is refused, not silently taken as the first.
    """
    if not idempotency_key:
        raise ValueError("an idempotency key is required")
    merged: dict[int, int] = defaultdict(int)
    accounts: dict[int, LedgerAccount] = {}
    for account, amount in legs:
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError("ledger amounts are ints of minor units")
        merged[account.id] += amount
        accounts[account.id] = account
    merged = {aid: amt for aid, amt in merged.items() if amt != 0}
    if not merged:
        raise ValidationFailed.field("amount", "must not be zero")
    currencies = {accounts[aid].currency for aid in merged}
    if len(currencies) != 1:
        raise ValueError(f"one transaction, one currency; got {sorted(currencies)}")
    if sum(merged.values()) != 0:
        raise ValueError(
            f"unbalanced transaction {idempotency_key}: sums to {sum(merged.values())}"
        )
    currency = currencies.pop()
    content_hash = _content_hash(kind, merged, fingerprint)

    locked = {a.id: a for a in lock_accounts(accounts[aid] for aid in merged)}

    existing = db.session.scalar(
        select(LedgerTransaction).where(LedgerTransaction.idempotency_key == idempotency_key)
    )
    if existing is not None:
        return _same_or_conflict(existing, content_hash)

    for aid, account in locked.items():
        akind = AccountKind(account.kind)
        balance = _cached(account.balance_minor, aid)
        new_balance = balance + akind.normal_sign * merged[aid]
        if akind in WALLET_KINDS and new_balance < 0:
            raise InsufficientFunds(
                f"the {akind} balance is {Money(balance, currency)}, "
                f"which does not cover {Money(-merged[aid], currency)}"
            )

    txn = LedgerTransaction(
        idempotency_key=idempotency_key,
        kind=kind,
        content_hash=content_hash,
        user_id=user_id,
        created_by_id=created_by_id,
        description=description[:500],
    )
    try:
        with db.session.begin_nested():
            db.session.add(txn)
            db.session.flush()
    except IntegrityError:
        # The same key committed by a concurrent transaction since our look-up.
        existing = db.session.scalar(
            select(LedgerTransaction).where(LedgerTransaction.idempotency_key == idempotency_key)
        )
        if existing is None:
            raise
        return _same_or_conflict(existing, content_hash)

    db.session.execute(
        insert(LedgerEntry),
        [
            {
                "transaction_id": txn.id,
                "account_id": aid,
                "amount_minor": amt,
                "currency": currency,
                "created_at": txn.created_at,  # the partition key: the transaction's time
            }
            for aid, amt in sorted(merged.items())
        ],
    )
    for aid, account in locked.items():
        account.balance_minor = (
            _cached(account.balance_minor, aid)
            + AccountKind(account.kind).normal_sign * merged[aid]
        )
    db.session.flush()
    db.session.expire(txn, ["entries"])
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "ledger transaction %s posted: key %s, kind %s, legs %s (account id: amount, %s minor)",
            txn.id,
            idempotency_key,
            kind,
            ", ".join(f"{aid}: {amt:+d}" for aid, amt in sorted(merged.items())),
            currency,
        )
    return txn


def _cached(balance: int | None, account_id: int) -> int:
    """A user account's cached balance (a CHECK keeps it set on user accounts and NULL on
    system accounts, which postings never check or move)."""
    if balance is None:
        raise ValueError(f"ledger account {account_id} has no cached balance")
    return balance


@dataclass(frozen=True)
class Posting:
    """One transaction for post_many: legs as (account id, account kind, amount_minor)."""

    idempotency_key: str
    kind: str
    user_id: int | None
    description: str
    currency: str
    legs: tuple[tuple[int, str, int], ...]


def post_many(
    postings: Sequence[Posting], *, locked: dict[int, int | None] | None = None
) -> dict[str, int]:
    """Post many new transactions at once (bulk jobs such as an invoice run): the same
    invariants as post_transaction, set-based. Every key must be new; cached balances move
    under row locks taken in id order. ``locked``: what ``lock_account_ids`` returned for
    accounts the caller already locked in this transaction (not locked again).
    Returns {idempotency_key: transaction id}."""
    if not postings:
        return {}
    deltas: dict[int, int] = defaultdict(int)
    kinds: dict[int, AccountKind] = {}
    rows: list[dict[str, object]] = []
    now = utcnow()
    for p in postings:
        if sum(amount for _, _, amount in p.legs) != 0:
            raise ValueError(f"unbalanced transaction {p.idempotency_key}")
        legs = {aid: amount for aid, _, amount in p.legs}
        rows.append(
            {
                "idempotency_key": p.idempotency_key,
                "kind": p.kind,
                "user_id": p.user_id,
                "description": p.description[:500],
                "created_at": now,
                "content_hash": _content_hash(p.kind, legs, None),
            }
        )
        for aid, akind, amount in p.legs:
            if not isinstance(amount, int) or isinstance(amount, bool) or amount == 0:
                raise TypeError("ledger amounts are non-zero ints of minor units")
            kind = kinds.get(aid) or kinds.setdefault(aid, AccountKind(akind))
            if kind in USER_KINDS:
                deltas[aid] += kind.normal_sign * amount
    locked = locked or {}
    balances = {**locked, **lock_account_ids(aid for aid in deltas if aid not in locked)}
    for aid, delta in deltas.items():
        if kinds[aid] in WALLET_KINDS and _cached(balances[aid], aid) + delta < 0:
            raise InsufficientFunds(f"account {aid} would go below zero")
    columns = (
        "id",
        "idempotency_key",
        "kind",
        "user_id",
        "description",
        "created_at",
        "content_hash",
    )
    txn_ids = allocate_ids(LedgerTransaction.__table__, len(rows))
    bulk_insert(
        LedgerTransaction.__table__,
        columns,
        [
            (txn_id, *(row[c] for c in columns[1:]))
            for txn_id, row in zip(txn_ids, rows, strict=False)
        ],
    )
    ids = {p.idempotency_key: txn_id for p, txn_id in zip(postings, txn_ids, strict=True)}
    # Entries in account order within each transaction, as post_transaction writes them.
    bulk_insert(
        LedgerEntry.__table__,
        ("transaction_id", "account_id", "amount_minor", "currency", "created_at"),
        [
            (ids[p.idempotency_key], aid, amount, p.currency, now)
            for p in postings
            for aid, _, amount in sorted(p.legs)
        ],
    )
    if deltas:
        # Relative updates under the locks above: never an absolute balance.
        _add_to_balances(sorted(deltas.items()))
        identity = db.session.identity_map
        for aid in deltas:  # loaded accounts re-read their balance on next access
            account = identity.get(db.session.identity_key(LedgerAccount, aid))
            if account is not None:
                db.session.expire(account, ["balance_minor"])
    if log.isEnabledFor(logging.DEBUG):
        for p in postings:
            log.debug(
                "ledger transaction %s posted: key %s, kind %s, legs %s (account id: amount, "
                "%s minor)",
                ids[p.idempotency_key],
                p.idempotency_key,
                p.kind,
                ", ".join(f"{aid}: {amount:+d}" for aid, _, amount in sorted(p.legs)),
                p.currency,
            )
    return ids


def lock_account_ids(account_ids: Iterable[int]) -> dict[int, int | None]:
    """SELECT ... FOR UPDATE the accounts (by id, in id order) without loading them as
    objects; returns {id: cached balance}. The bulk counterpart of lock_accounts."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    accounts = LedgerAccount.__table__.c
    return dict(
        db.session.execute(
            select(accounts.id, accounts.balance_minor)
            .where(ids_in(accounts.id, ids))
            .order_by(accounts.id)
            .with_for_update()
        ).all()
    )


def _add_to_balances(deltas: list[tuple[int, int]]) -> None:
    if db.engine.dialect.name == "postgresql":
        # One statement for all accounts (an executemany would be a round of work per row).
        for batch in range(0, len(deltas), 5000):
            part = deltas[batch : batch + 5000]
            db.session.execute(
                text(
                    "UPDATE ledger_accounts AS a SET balance_minor = a.balance_minor + d.delta "
                    "FROM unnest(CAST(:ids AS bigint[]), CAST(:deltas AS bigint[])) AS d(id, delta) "
                    "WHERE a.id = d.id"
                ),
                {"ids": [aid for aid, _ in part], "deltas": [delta for _, delta in part]},
            )
        return
    db.session.execute(
        text("UPDATE ledger_accounts SET balance_minor = balance_minor + :delta WHERE id = :id"),
        [{"id": aid, "delta": delta} for aid, delta in deltas],
    )


def _same_or_conflict(existing: LedgerTransaction, content_hash: str) -> LedgerTransaction:
    if existing.content_hash != content_hash:
        raise IdempotencyConflict(
            f"idempotency key {existing.idempotency_key!r} was already used for "
            "a different transaction"
        )
    return existing


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Balances:
    currency: str
    cash: Money
    voucher: Money
    credit: Money
    receivable: Money

    @property
    def spendable(self) -> Money:
        return self.cash + self.voucher + self.credit


_BALANCES = select(LedgerAccount.kind, LedgerAccount.balance_minor).where(
    LedgerAccount.user_id == bindparam("user_id"), LedgerAccount.currency == bindparam("currency")
)


def balances(user: User) -> Balances:
    """The user's balances from the cached columns (no scan of entries)."""
    rows = db.session.execute(_BALANCES, {"user_id": user.id, "currency": user.currency}).all()
    found = {kind: bal for kind, bal in rows}
    cur = user.currency
    return Balances(
        currency=cur,
        **{
            k: Money(found.get(k, 0) or 0, cur) for k in ("cash", "voucher", "credit", "receivable")
        },
    )


@dataclass(frozen=True)
class HistoryRow:
    entry_id: int
    created_at: datetime
    account_kind: str
    transaction_kind: str
    description: str
    amount: Money  # signed on the wallet's side: + money in, - money out


# The user's wallet accounts with the number of entries on each (an index-only count per
# account), in one round trip.
_WALLET_ACCOUNTS = (
    select(
        LedgerAccount.id,
        select(func.count())
        .select_from(LedgerEntry)
        .where(LedgerEntry.account_id == LedgerAccount.id)
        .correlate(LedgerAccount)
        .scalar_subquery(),
    )
    .where(
        LedgerAccount.user_id == bindparam("user_id"),
        LedgerAccount.kind.in_(sorted(str(k) for k in WALLET_KINDS)),
    )
    .order_by(LedgerAccount.id)
)


def _entry_columns() -> tuple[Label[Any], ...]:
    """A history row's columns of the entry itself, read in its account's index range."""
    return (
        LedgerEntry.id.label("id"),
        LedgerEntry.amount_minor.label("amount_minor"),
        LedgerEntry.currency.label("currency"),
        LedgerEntry.account_id.label("account_id"),
        LedgerEntry.transaction_id.label("transaction_id"),
    )


def _with_transactions(page: Subquery) -> Select[int, int, str, str, str, str, datetime]:
    """A page of ``_entry_columns`` rows, newest first, with their account's kind and their
    transaction's kind, description and time (the columns of a HistoryRow)."""
    return (
        select(
            page.c.id,
            page.c.amount_minor,
            page.c.currency,
            LedgerAccount.kind,
            LedgerTransaction.kind,
            LedgerTransaction.description,
            LedgerTransaction.created_at,
        )
        .join(LedgerAccount, LedgerAccount.id == page.c.account_id)
        .join(LedgerTransaction, LedgerTransaction.id == page.c.transaction_id)
        .order_by(page.c.id.desc())
    )


@functools.cache
def _history_page(accounts: int) -> Select[int, int, str, str, str, str, datetime]:
    """The page query for a user with ``accounts`` wallet accounts, built once (the page
    is read on every wallet view; building the statement costs more than running it).

    The page's entries come from each account's newest ``depth`` (offset + per_page)
    entries, an index range on (account_id, id) each, merged: the work is bounded by the
    page's depth, whatever the planner knows of the table and however old the user's
    entries are. "account_id IN (...) ORDER BY id DESC" instead either sorts all the user's
    entries or walks the whole table's primary key backwards looking for them. The entries'
    own columns are taken in that same range, not joined again by id afterwards: on
    PostgreSQL the table is partitioned by month, and a join on the id alone cannot be
    pruned, so it read every partition (the planner hashed the whole table).
    """
    newest = [
        select(*_entry_columns())
        .where(LedgerEntry.account_id == bindparam(f"account_{i}"))
        .order_by(LedgerEntry.id.desc())
        .limit(bindparam("depth"))
        .subquery()
        for i in range(accounts)
    ]
    merged = union_all(*(select(*q.c) for q in newest)).subquery()
    page = (
        select(*merged.c)
        .order_by(merged.c.id.desc())
        .limit(bindparam("per_page"))
        .offset(bindparam("offset"))
        .subquery()
    )
    return _with_transactions(page)


# The user's wallet accounts, without counting their entries (history_window, recent_history).
_WALLET_ACCOUNT_IDS = (
    select(LedgerAccount.id)
    .where(
        LedgerAccount.user_id == bindparam("user_id"),
        LedgerAccount.kind.in_(sorted(str(k) for k in WALLET_KINDS)),
    )
    .order_by(LedgerAccount.id)
)


def wallet_history(user: User, *, page: int = 1, per_page: int = 25) -> Page:
    """Entries on the user's wallets (cash, voucher, credit), newest first, one page."""
    page, per_page = max(1, page), min(max(1, per_page), 200)
    offset = (page - 1) * per_page
    counts = db.session.execute(_WALLET_ACCOUNTS, {"user_id": user.id}).all()
    total = sum(n for _, n in counts)
    if offset >= total:
        return Page([], page, per_page, total)
    items = _history_rows([aid for aid, n in counts if n], offset, per_page)
    return Page(items, page, per_page, total)


def history_window(user: User, *, page: int = 1, per_page: int = 25) -> Window:
    """A page of ``wallet_history`` without counting every entry (the count reads them all:
    1.3 ms for 10,000): whether an older page follows comes from reading one entry more.
    One statement on PostgreSQL; elsewhere (no LATERAL) the accounts, then their entries."""
    page, per_page = max(1, page), min(max(1, per_page), 200)
    offset = (page - 1) * per_page
    if db.engine.dialect.name == "postgresql":
        rows = _as_history(
            db.session.execute(
                _window_page(),
                {
                    "user_id": user.id,
                    "depth": offset + per_page + 1,
                    "per_page": per_page + 1,
                    "offset": offset,
                },
            ).all()
        )
    else:
        account_ids = list(db.session.scalars(_WALLET_ACCOUNT_IDS, {"user_id": user.id}))
        rows = _history_rows(account_ids, offset, per_page + 1) if account_ids else []
    return Window(rows[:per_page], page, per_page, len(rows) > per_page)


def _lateral_page(
    depth: BindParameter[int], per_page: BindParameter[int], offset: BindParameter[int] | None
) -> Select[int, int, str, str, str, str, datetime]:
    """The user's wallet accounts, each with its newest ``depth`` entries (a LATERAL index
    range on (account_id, id), as ``_history_page`` takes them), merged, cut to the page
    and joined to their transactions (PostgreSQL)."""
    wallet = aliased(LedgerAccount, name="wallet")
    newest = (
        select(*_entry_columns())
        .where(LedgerEntry.account_id == wallet.id)
        .order_by(LedgerEntry.id.desc())
        .limit(depth)
        .lateral("newest")
    )
    page = (
        select(*newest.c)
        .select_from(wallet)
        .join(newest, true())
        .where(
            wallet.user_id == bindparam("user_id"),
            wallet.kind.in_(sorted(str(k) for k in WALLET_KINDS)),
        )
        .order_by(newest.c.id.desc())
        .limit(per_page)
    )
    return _with_transactions((page if offset is None else page.offset(offset)).subquery())


@functools.cache
def _window_page() -> Select[int, int, str, str, str, str, datetime]:
    """history_window's page on PostgreSQL in one statement (``_lateral_page``). The depth
    and offset are bound, as ``_history_page`` binds them: they change with the page asked
    for, and the web server's prepared statement keeps one generic plan for all of them."""
    return _lateral_page(bindparam("depth"), bindparam("per_page"), bindparam("offset"))


@functools.cache
def _recent_page() -> Select[int, int, str, str, str, str, datetime]:
    """recent_history on PostgreSQL in one statement (``_lateral_page``): its newest
    ``limit`` entries. The limit is written into the SQL text, not bound: with it bound the
    planner cannot tell how few rows are read and plans the statement anew on every call
    (most of its time, on the partitioned entries); written in, the prepared statement keeps
    one generic plan."""
    limit = bindparam("limit", type_=Integer, literal_execute=True)
    return _lateral_page(limit, limit, None)


def recent_history(user: User, limit: int) -> list[HistoryRow]:
    """The newest ``limit`` entries on the user's wallets, newest first: the first page of
    ``wallet_history`` without counting every entry (the Overview shows no page count).
    One statement on PostgreSQL; elsewhere (no LATERAL) the accounts, then their entries."""
    if db.engine.dialect.name == "postgresql":
        rows = db.session.execute(_recent_page(), {"user_id": user.id, "limit": limit}).all()
        return _as_history(rows)
    account_ids = list(db.session.scalars(_WALLET_ACCOUNT_IDS, {"user_id": user.id}))
    return _history_rows(account_ids, 0, limit) if account_ids else []


def _history_rows(account_ids: list[int], offset: int, per_page: int) -> list[HistoryRow]:
    rows = db.session.execute(
        _history_page(len(account_ids)),
        {
            **{f"account_{i}": aid for i, aid in enumerate(account_ids)},
            "depth": offset + per_page,
            "per_page": per_page,
            "offset": offset,
        },
    ).all()
    return _as_history(rows)


def _as_history(
    rows: Sequence[Row[int, int, str, str, str, str, datetime]],
) -> list[HistoryRow]:
    return [
        HistoryRow(
            entry_id=r[0],
            amount=Money(r[1], r[2]),
            account_kind=r[3],
            transaction_kind=r[4],
            description=r[5],
            created_at=r[6],
        )
        for r in rows
    ]

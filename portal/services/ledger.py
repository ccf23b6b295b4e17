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
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, insert, select, text, union_all
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models import AccountKind, LedgerAccount, LedgerEntry, LedgerTransaction, User, utcnow
from ..models.ledger import USER_KINDS, WALLET_KINDS
from ..money import Money
from .errors import IdempotencyConflict, InsufficientFunds, ValidationFailed

Leg = tuple[LedgerAccount, int]  # (account, amount_minor: > 0 credits, < 0 debits)


def _dialect_insert(table):
    return (pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert)(table)


def system_account(kind: AccountKind, currency: str) -> LedgerAccount:
    if kind in USER_KINDS:
        raise ValueError(f"{kind} is a user account kind")
    return _get_or_create_account(None, kind, currency)


def user_account(user: User | int, kind: AccountKind, currency: str | None = None
                 ) -> LedgerAccount:
    if kind not in USER_KINDS:
        raise ValueError(f"{kind} is a system account kind")
    user_id = user if isinstance(user, int) else user.id
    if currency is None:
        currency = user.currency if isinstance(user, User) else db.session.get(User, user_id).currency
    return _get_or_create_account(user_id, kind, currency)


def open_user_accounts(user: User) -> None:
    """Create the user's wallet and receivable accounts in the user's currency."""
    for kind in (AccountKind.CASH, AccountKind.VOUCHER, AccountKind.CREDIT,
                 AccountKind.RECEIVABLE):
        _get_or_create_account(user.id, kind, user.currency)


def _get_or_create_account(user_id: int | None, kind: AccountKind, currency: str
                           ) -> LedgerAccount:
    query = select(LedgerAccount).where(
        LedgerAccount.kind == str(kind), LedgerAccount.currency == currency,
        LedgerAccount.user_id.is_(None) if user_id is None else LedgerAccount.user_id == user_id)
    account = db.session.scalar(query)
    if account is None:
        # Two transactions may create the same account at once: the unique index decides,
        # the loser reads the winner's row.
        db.session.execute(
            _dialect_insert(LedgerAccount.__table__).values(
                user_id=user_id, kind=str(kind), currency=currency,
                balance_minor=None if user_id is None else 0,
                created_at=utcnow(),
            ).on_conflict_do_nothing())
        account = db.session.scalar(query)
    return account


def lock_accounts(accounts: Iterable[LedgerAccount]) -> list[LedgerAccount]:
    """SELECT ... FOR UPDATE the cached (user) accounts, ordered by id, refreshing them.

    On SQLite FOR UPDATE is dropped by SQLAlchemy; there every transaction starts with
    BEGIN IMMEDIATE (see portal/__init__.py), which serializes writers instead.
    """
    ids = sorted({a.id for a in accounts if a.user_id is not None})
    if not ids:
        return []
    return list(db.session.scalars(
        select(LedgerAccount).where(LedgerAccount.id.in_(ids)).order_by(LedgerAccount.id)
        .with_for_update().execution_options(populate_existing=True)))


def _content_hash(kind: str, legs: dict[int, int], extra: dict | None) -> str:
    payload = {"kind": kind, "legs": sorted(legs.items()), "extra": extra or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def post_transaction(*, idempotency_key: str, kind: str, legs: Sequence[Leg],
                     description: str = "", user_id: int | None = None,
                     created_by_id: int | None = None, fingerprint: dict | None = None
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
        raise ValueError(f"unbalanced transaction {idempotency_key}: sums to "
                         f"{sum(merged.values())}")
    currency = currencies.pop()
    content_hash = _content_hash(kind, merged, fingerprint)

    locked = {a.id: a for a in lock_accounts(accounts[aid] for aid in merged)}

    existing = db.session.scalar(select(LedgerTransaction).where(
        LedgerTransaction.idempotency_key == idempotency_key))
    if existing is not None:
        return _same_or_conflict(existing, content_hash)

    for aid, account in locked.items():
        akind = AccountKind(account.kind)
        new_balance = account.balance_minor + akind.normal_sign * merged[aid]
        if akind in WALLET_KINDS and new_balance < 0:
            raise InsufficientFunds(
                f"the {akind} balance is {Money(account.balance_minor, currency)}, "
                f"which does not cover {Money(-merged[aid], currency)}")

    txn = LedgerTransaction(idempotency_key=idempotency_key, kind=kind,
                            content_hash=content_hash, user_id=user_id,
                            created_by_id=created_by_id, description=description[:500])
    try:
        with db.session.begin_nested():
            db.session.add(txn)
            db.session.flush()
    except IntegrityError:
        # The same key committed by a concurrent transaction since our look-up.
        existing = db.session.scalar(select(LedgerTransaction).where(
            LedgerTransaction.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return _same_or_conflict(existing, content_hash)

    db.session.execute(insert(LedgerEntry), [
        {"transaction_id": txn.id, "account_id": aid, "amount_minor": amt, "currency": currency}
        for aid, amt in sorted(merged.items())])
    for aid, account in locked.items():
        account.balance_minor += AccountKind(account.kind).normal_sign * merged[aid]
    db.session.flush()
    db.session.expire(txn, ["entries"])
    return txn


@dataclass(frozen=True)
class Posting:
    """One transaction for post_many: legs as (account id, account kind, amount_minor)."""
    idempotency_key: str
    kind: str
    user_id: int | None
    description: str
    currency: str
    legs: tuple[tuple[int, str, int], ...]


def post_many(postings: Sequence[Posting]) -> dict[str, int]:
    """Post many new transactions at once (bulk jobs such as an invoice run): the same
    invariants as post_transaction, set-based. Every key must be new; cached balances move
    under row locks taken in id order. Returns {idempotency_key: transaction id}."""
    if not postings:
        return {}
    deltas: dict[int, int] = defaultdict(int)
    kinds: dict[int, str] = {}
    rows = []
    for p in postings:
        if sum(amount for _, _, amount in p.legs) != 0:
            raise ValueError(f"unbalanced transaction {p.idempotency_key}")
        legs = {aid: amount for aid, _, amount in p.legs}
        rows.append({"idempotency_key": p.idempotency_key, "kind": p.kind, "user_id": p.user_id,
                     "description": p.description[:500], "created_at": utcnow(),
                     "content_hash": _content_hash(p.kind, legs, None)})
        for aid, akind, amount in p.legs:
            if not isinstance(amount, int) or isinstance(amount, bool) or amount == 0:
                raise TypeError("ledger amounts are non-zero ints of minor units")
            kinds[aid] = akind
            if AccountKind(akind) in USER_KINDS:
                deltas[aid] += AccountKind(akind).normal_sign * amount
    locked = {a.id: a for a in db.session.scalars(
        select(LedgerAccount).where(LedgerAccount.id.in_(sorted(deltas)))
        .order_by(LedgerAccount.id).with_for_update()
        .execution_options(populate_existing=True))} if deltas else {}
    for aid, delta in deltas.items():
        if AccountKind(kinds[aid]) in WALLET_KINDS and locked[aid].balance_minor + delta < 0:
            raise InsufficientFunds(f"account {aid} would go below zero")
    ids = {}
    for batch in range(0, len(rows), 2000):
        chunk = rows[batch:batch + 2000]
        for key, txn_id in db.session.execute(
                insert(LedgerTransaction).returning(LedgerTransaction.idempotency_key,
                                                    LedgerTransaction.id), chunk):
            ids[key] = txn_id
    db.session.execute(insert(LedgerEntry), [
        {"transaction_id": ids[p.idempotency_key], "account_id": aid, "amount_minor": amount,
         "currency": p.currency} for p in postings for aid, _, amount in p.legs])
    if deltas:
        # Relative updates under the locks above: never an absolute balance.
        db.session.execute(text("UPDATE ledger_accounts SET balance_minor = balance_minor + :delta "
                                "WHERE id = :id"),
                           [{"id": aid, "delta": delta} for aid, delta in sorted(deltas.items())])
        for aid in deltas:
            db.session.expire(locked[aid], ["balance_minor"])
    return ids


def _same_or_conflict(existing: LedgerTransaction, content_hash: str) -> LedgerTransaction:
    if existing.content_hash != content_hash:
        raise IdempotencyConflict(
            f"idempotency key {existing.idempotency_key!r} was already used for "
            "a different transaction")
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
    LedgerAccount.user_id == bindparam("user_id"),
    LedgerAccount.currency == bindparam("currency"))


def balances(user: User) -> Balances:
    """The user's balances from the cached columns (no scan of entries)."""
    rows = db.session.execute(_BALANCES, {"user_id": user.id, "currency": user.currency}).all()
    found = {kind: bal for kind, bal in rows}
    cur = user.currency
    return Balances(
        currency=cur,
        **{k: Money(found.get(k, 0) or 0, cur) for k in ("cash", "voucher", "credit", "receivable")})


@dataclass(frozen=True)
class HistoryRow:
    entry_id: int
    created_at: datetime
    account_kind: str
    transaction_kind: str
    description: str
    amount: Money  # signed on the wallet's side: + money in, - money out


@dataclass(frozen=True)
class Page:
    items: list
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def has_prev(self) -> bool:
        return self.page > 1


# The user's wallet accounts with the number of entries on each (an index-only count per
# account), in one round trip.
_WALLET_ACCOUNTS = select(
    LedgerAccount.id,
    select(func.count()).select_from(LedgerEntry)
    .where(LedgerEntry.account_id == LedgerAccount.id).correlate(LedgerAccount)
    .scalar_subquery(),
).where(LedgerAccount.user_id == bindparam("user_id"),
        LedgerAccount.kind.in_(sorted(str(k) for k in WALLET_KINDS))).order_by(LedgerAccount.id)


@functools.cache
def _history_page(accounts: int):
    """The page query for a user with ``accounts`` wallet accounts, built once (the page
    is read on every wallet view; building the statement costs more than running it).

    The page's entry ids come first, from each account's newest ``depth`` (offset +
    per_page) entries, an index range on (account_id, id) each, merged: the work is bounded
    by the page's depth, whatever the planner knows of the table and however old the user's
    entries are. "account_id IN (...) ORDER BY id DESC" instead either sorts all the user's
    entries or walks the whole table's primary key backwards looking for them.
    """
    newest = [select(LedgerEntry.id.label("id"))
              .where(LedgerEntry.account_id == bindparam(f"account_{i}"))
              .order_by(LedgerEntry.id.desc()).limit(bindparam("depth")).subquery()
              for i in range(accounts)]
    merged = union_all(*(select(q.c.id) for q in newest)).subquery()
    page_ids = (select(merged.c.id).order_by(merged.c.id.desc())
                .limit(bindparam("per_page")).offset(bindparam("offset")).subquery())
    return (select(LedgerEntry.id, LedgerEntry.amount_minor, LedgerEntry.currency,
                   LedgerAccount.kind, LedgerTransaction.kind, LedgerTransaction.description,
                   LedgerTransaction.created_at)
            .join(page_ids, page_ids.c.id == LedgerEntry.id)
            .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
            .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
            .order_by(LedgerEntry.id.desc()))


def wallet_history(user: User, *, page: int = 1, per_page: int = 25) -> Page:
    """Entries on the user's wallets (cash, voucher, credit), newest first, one page."""
    page, per_page = max(1, page), min(max(1, per_page), 200)
    offset = (page - 1) * per_page
    counts = db.session.execute(_WALLET_ACCOUNTS, {"user_id": user.id}).all()
    total = sum(n for _, n in counts)
    if offset >= total:
        return Page([], page, per_page, total)
    account_ids = [aid for aid, n in counts if n]
    rows = db.session.execute(_history_page(len(account_ids)), {
        **{f"account_{i}": aid for i, aid in enumerate(account_ids)},
        "depth": offset + per_page, "per_page": per_page, "offset": offset}).all()
    items = [HistoryRow(entry_id=r[0], amount=Money(r[1], r[2]), account_kind=r[3],
                        transaction_kind=r[4], description=r[5], created_at=r[6])
             for r in rows]
    return Page(items, page, per_page, total)

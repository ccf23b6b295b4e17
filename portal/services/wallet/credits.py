"""Admin credits: grants in lots with optional expiry, spent oldest expiry first."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import ColumnElement, SQLColumnExpression, bindparam, case, func, select
from sqlalchemy.orm import aliased

from ...errors import InsufficientFunds, ValidationFailed
from ...extensions import db
from ...models import AccountKind, CreditLot, LedgerAccount, LedgerTransaction, User, utcnow
from ...money import Money
from .. import audit, events
from . import ledger, settlement_requests

MAX_REASON = 500


def grant_credit(
    *,
    user: User,
    amount: Money,
    reason: str,
    idempotency_key: str,
    expires_at: datetime | None = None,
    granted_by: User | None = None,
    now: datetime | None = None,
    source: AccountKind = AccountKind.CREDIT_GRANTS,
) -> tuple[CreditLot, bool]:
    """Grant ``amount`` of credit to ``user``. The same key twice grants once.
    Returns the lot and whether this call created it."""
    now = now or utcnow()
    reason = (reason or "").strip()
    if amount.currency != user.currency:
        raise ValidationFailed.field("amount", f"must be in {user.currency}")
    if amount.amount_minor <= 0:
        raise ValidationFailed.field("amount", "must be greater than 0")
    if not reason:
        raise ValidationFailed.field("reason", "is required")
    if len(reason) > MAX_REASON:
        raise ValidationFailed.field("reason", f"must be at most {MAX_REASON} characters")
    if expires_at is not None and expires_at <= now:
        raise ValidationFailed.field("expires_at", "must be in the future")

    credit = ledger.user_account(user, AccountKind.CREDIT)
    source_account = ledger.system_account(source, user.currency)
    txn = ledger.post_transaction(
        idempotency_key=f"credit-grant:{idempotency_key}",
        kind="credit_grant",
        legs=[(source_account, -amount.amount_minor), (credit, amount.amount_minor)],
        description=reason,
        user_id=user.id,
        created_by_id=granted_by.id if granted_by else None,
        fingerprint={
            "reason": reason,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "user": user.id,
        },
    )
    lot = db.session.scalar(select(CreditLot).where(CreditLot.transaction_id == txn.id))
    if lot is not None:
        return lot, False
    lot = CreditLot(
        user_id=user.id,
        account_id=credit.id,
        currency=user.currency,
        amount_minor=amount.amount_minor,
        remaining_minor=amount.amount_minor,
        reason=reason,
        expires_at=expires_at,
        transaction_id=txn.id,
        granted_by_id=granted_by.id if granted_by else None,
    )
    db.session.add(lot)
    db.session.flush()
    events.record(
        "billing.credit.granted",
        f"credit:{lot.id}",
        {
            "user_id": user.id,
            "credit_id": lot.id,
            "amount": str(amount.amount),
            "amount_minor": amount.amount_minor,
            "currency": amount.currency,
            "reason": reason,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
        user.id,
    )
    settlement_requests.request_settlement(user.id)  # new money: pay what is pending
    settlement_requests.request_restore(user.id)
    if source == AccountKind.CREDIT_GRANTS:
        audit.record(
            "credit.granted",
            "credit_lot",
            lot.id,
            actor=granted_by,
            user_id=user.id,
            after={
                "amount": str(amount.amount),
                "currency": amount.currency,
                "reason": reason,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    return lot, True


def _open_lots_where(
    account_id: int | SQLColumnExpression[int], now: datetime | SQLColumnExpression[datetime]
) -> tuple[ColumnElement[bool], ...]:
    """The credit account's lots that can still be spent (values, columns or bound
    parameters alike, so statements built once share it)."""
    return (
        CreditLot.account_id == account_id,
        CreditLot.remaining_minor > 0,
        (CreditLot.expires_at.is_(None)) | (CreditLot.expires_at > now),
    )


def _open_lots(account: LedgerAccount, now: datetime) -> list[CreditLot]:
    # Oldest expiry first; lots that never expire last; then in grant order.
    return list(
        db.session.scalars(
            select(CreditLot)
            .where(*_open_lots_where(account.id, now))
            .order_by(CreditLot.expires_at.is_(None), CreditLot.expires_at, CreditLot.id)
            .execution_options(populate_existing=True)
        )
    )


def available_credit(user: User, now: datetime | None = None) -> Money:
    account = ledger.user_account(user, AccountKind.CREDIT)
    # Summed by the database: a user may hold hundreds of lots, and pages only need the sum.
    total = db.session.scalar(
        select(func.coalesce(func.sum(CreditLot.remaining_minor), 0)).where(
            *_open_lots_where(account.id, now or utcnow())
        )
    )
    return Money(int(total or 0), user.currency)


# The user's cached balances and, on the credit account's row, the sum of its open lots
# (available_credit): one round trip for spendable_balances.
_SPENDABLE = select(
    LedgerAccount.kind,
    LedgerAccount.balance_minor,
    case(
        (
            LedgerAccount.kind == str(AccountKind.CREDIT),
            select(func.coalesce(func.sum(CreditLot.remaining_minor), 0))
            .where(*_open_lots_where(LedgerAccount.id, bindparam("now")))
            .correlate(LedgerAccount)
            .scalar_subquery(),
        ),
    ),
).where(
    LedgerAccount.user_id == bindparam("user_id"), LedgerAccount.currency == bindparam("currency")
)


def available_credit_column(
    user_id: ColumnElement[int], currency: ColumnElement[str], now: ColumnElement[datetime]
) -> ColumnElement[int]:
    """``available_credit`` as a scalar subquery (on ix_credit_lots_account_open), for a page
    that reads it in a statement of its own; ``user_id``, ``currency`` and ``now`` are bound
    values or columns."""
    account = (
        select(LedgerAccount.id)
        .where(
            LedgerAccount.user_id == user_id,
            LedgerAccount.kind == str(AccountKind.CREDIT),
            LedgerAccount.currency == currency,
        )
        .scalar_subquery()
    )
    return (
        select(func.coalesce(func.sum(CreditLot.remaining_minor), 0))
        .where(*_open_lots_where(account, now))
        .scalar_subquery()
    )


def spendable_balances(user: User, now: datetime | None = None) -> ledger.Balances:
    """The balances a user can spend now: credit lots past their expiry no longer count,
    even before ``expire-credits`` books their expiry in the ledger. (``ledger.balances``
    with ``available_credit`` as the credit, read in one statement.)"""
    rows = db.session.execute(
        _SPENDABLE, {"user_id": user.id, "currency": user.currency, "now": now or utcnow()}
    ).all()
    found = {kind: balance or 0 for kind, balance, _ in rows}
    found["credit"] = next((int(lots or 0) for kind, _, lots in rows if kind == "credit"), 0)
    return ledger.Balances(
        currency=user.currency,
        **{
            k: Money(found.get(k, 0), user.currency)
            for k in ("cash", "voucher", "credit", "receivable")
        },
    )


def spend_credit(
    *,
    user: User,
    amount: Money,
    counter_account: LedgerAccount,
    idempotency_key: str,
    kind: str,
    description: str,
    now: datetime | None = None,
) -> LedgerTransaction:
    """Move ``amount`` out of the user's credit into ``counter_account``, drawing lots
    oldest expiry first. Raises InsufficientFunds when unexpired lots do not cover it."""
    now = now or utcnow()
    account = ledger.user_account(user, AccountKind.CREDIT)
    ledger.lock_accounts([account])  # lots are chosen under the account's lock
    existing = db.session.scalar(
        select(LedgerTransaction).where(LedgerTransaction.idempotency_key == idempotency_key)
    )
    if existing is None:
        needed = amount.amount_minor
        draws: list[tuple[CreditLot, int]] = []
        for lot in _open_lots(account, now):
            if needed == 0:
                break
            take = min(lot.remaining_minor, needed)
            draws.append((lot, take))
            needed -= take
        if needed:
            available = amount.amount_minor - needed
            raise InsufficientFunds(
                f"available credit is {Money(available, user.currency)}, "
                f"which does not cover {amount}"
            )
    txn = ledger.post_transaction(
        idempotency_key=idempotency_key,
        kind=kind,
        legs=[(account, -amount.amount_minor), (counter_account, amount.amount_minor)],
        description=description,
        user_id=user.id,
    )
    if existing is None:
        for lot, take in draws:
            lot.remaining_minor -= take
        db.session.flush()
    return txn


def expire_credits(now: datetime | None = None) -> int:
    """Return what is left of expired lots to the grant source. Safe to run any number of
    times, concurrently too (one ledger transaction per lot, keyed by the lot)."""
    now = now or utcnow()
    lot_ids = list(
        db.session.scalars(
            select(CreditLot.id).where(CreditLot.remaining_minor > 0, CreditLot.expires_at <= now)
        )
    )
    expired = 0
    for lot_id in lot_ids:
        lot = db.session.get_one(CreditLot, lot_id)
        account = db.session.get_one(LedgerAccount, lot.account_id)
        ledger.lock_accounts([account])
        db.session.refresh(lot)
        if lot.remaining_minor == 0:
            continue
        source = ledger.system_account(AccountKind.CREDIT_GRANTS, lot.currency)
        ledger.post_transaction(
            idempotency_key=f"credit-expiry:{lot.id}",
            kind="credit_expiry",
            legs=[(account, -lot.remaining_minor), (source, lot.remaining_minor)],
            description=f"Credit expired: {lot.reason}",
            user_id=lot.user_id,
        )
        left = Money(lot.remaining_minor, lot.currency)
        events.record(
            "billing.credit.expired",
            f"credit:{lot.id}",
            {
                "user_id": lot.user_id,
                "credit_id": lot.id,
                "amount": str(left.amount),
                "amount_minor": left.amount_minor,
                "currency": left.currency,
                "expired_at": (lot.expires_at or now).isoformat(),
            },
            lot.user_id,
        )
        lot.remaining_minor = 0
        lot.expired_at = now
        expired += 1
    db.session.flush()
    return expired


class ShownLot(NamedTuple):
    """A credit lot as a list shows it."""

    created_at: datetime
    reason: str
    amount_minor: int
    remaining_minor: int
    currency: str
    expires_at: datetime | None
    expired_at: datetime | None


# The lots' columns, not the lots as objects; how many lots there are comes from the user_id
# index alone (a window count over the lots read every lot's row first: twice as long for a
# thousand lots); built once.
_COUNTED = aliased(CreditLot)
_NEWEST_LOTS = (
    select(
        *(getattr(CreditLot, f) for f in ShownLot._fields),
        select(func.count())
        .select_from(_COUNTED)
        .where(_COUNTED.user_id == bindparam("user_id"))
        .scalar_subquery(),
    )
    .where(CreditLot.user_id == bindparam("user_id"))
    .order_by(CreditLot.id.desc())
    .limit(bindparam("limit"))
)


def newest_lots(user: User, limit: int) -> tuple[list[ShownLot], int]:
    """The user's ``limit`` newest credit lots, and how many they have in all."""
    rows = db.session.execute(_NEWEST_LOTS, {"user_id": user.id, "limit": limit}).all()
    return [ShownLot(*row[:-1]) for row in rows], (rows[0][-1] if rows else 0)


def list_lots(user: User) -> list[CreditLot]:
    return list(
        db.session.scalars(
            select(CreditLot).where(CreditLot.user_id == user.id).order_by(CreditLot.id.desc())
        )
    )

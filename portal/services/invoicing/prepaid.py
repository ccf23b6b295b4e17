"""Prepaid accounts: usage paid hour by hour from the funds, and the period's statement.

Charging. The transaction that meters a chunk's window (metering.rollups, through the
``after_metering`` hook registered here) also charges every prepaid user of the chunk whose
deployments ran in it: what the billing period's usage comes to so far, rounded exactly as
the period's statement will round it (one amount per deployment and resource, ROUND_HALF_UP,
by invoicing.lines), less what the period's earlier charges took. So sub-cent amounts are
never rounded hour by hour: an hour that adds 0.4 cent to a line charges nothing, and the
hour that takes the line's rounded amount up a cent charges that cent (the remainder is
carried in the exact rollups, not in the charges). The period's charges therefore add up to
the statement's total, to the cent.

The funds pay credits first (unexpired lots, oldest expiry first), then the voucher balance,
then the prepaid (cash) balance, as settlement does, into the prepaid_usage account, each
wallet's part one ledger transaction (``prepaid:<user>:<hour>:<tender>``). A prepaid_charges
row, UNIQUE per user and hour, is written first: a second metering of the hour, or a replay,
charges nothing more. What the funds cannot cover stays owed: a later hour takes it first
when money has arrived, and the statement bills what is left. The user's settlement lock
(their receivable account's row) is taken before the balances are read, as settlement takes
it, so the two never spend the same money.

The statement. When the period's invoice is issued (invoicing.run), the period's charges pay
it (one payment per wallet, from prepaid_usage): it is issued paid, and nothing is charged a
second time. Should the charges exceed it (usage corrected downwards after it was charged),
the difference goes back to the prepaid balance; should they fall short (funds ran out), the
rest is due like any invoice's.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime

from flask import current_app
from sqlalchemy import ColumnElement, func, or_, select, update

from ...db import dialect_insert
from ...extensions import db
from ...models import (
    AccountKind,
    BillingMode,
    DeploymentInterval,
    Invoice,
    InvoiceStatus,
    LedgerAccount,
    PaymentTender,
    PrepaidCharge,
    User,
    utcnow,
)
from ...money import Money
from .. import calendar
from ..metering import rollups
from ..wallet import credits, ledger
from .lines import build_lines
from .period_usage import period_usage

log = logging.getLogger(__name__)

TENDERS = (PaymentTender.CREDIT, PaymentTender.VOUCHER, PaymentTender.CASH)
CHARGE_KIND = "prepaid_charge"


def prepaid_clause() -> ColumnElement[bool]:
    """Users billed prepaid: their override, or the installation's mode when they have none."""
    mode = User.billing_mode
    if current_app.config["BILLING"].billing_mode == BillingMode.PREPAID:
        return or_(mode.is_(None), mode == str(BillingMode.PREPAID))
    return mode == str(BillingMode.PREPAID)


def is_prepaid(user: User) -> bool:
    mode = user.billing_mode or current_app.config["BILLING"].billing_mode
    return mode == BillingMode.PREPAID


def lock_user(user: User) -> None:
    """The user's settlement lock (the row of their receivable account), as settlement takes
    it: held to commit, it orders charges, settlement and standing changes of one user."""
    ledger.lock_accounts([ledger.user_account(user, AccountKind.RECEIVABLE)])


def owed_so_far(user: User, start: datetime, end: datetime) -> int:
    """The period's usage metered so far, in minor units, rounded as its statement rounds."""
    usage = period_usage(user.id, user.id + 1, start, end, [user.id]).get(user.id, {})
    return sum(line.amount_minor for line in build_lines(usage, {}, user.currency))


def charged_so_far(user_id: int, period_start: datetime) -> int:
    c = PrepaidCharge
    return int(
        db.session.scalar(
            select(
                func.coalesce(func.sum(c.credit_minor + c.voucher_minor + c.cash_minor), 0)
            ).where(c.user_id == user_id, c.period_start == period_start)
        )
        or 0
    )


def shortfall(user: User, now: datetime | None = None) -> int:
    """What the current period's usage metered so far owes beyond what was charged (the
    funds ran short), in minor units; 0 for a period already invoiced."""
    start, end = calendar.period_containing(now or utcnow(), calendar.invoice_day())
    invoiced = rollups.invoiced_through(user.id)
    if invoiced is not None and invoiced >= end:
        return 0
    return max(0, owed_so_far(user, start, end) - charged_so_far(user.id, start))


def available(user: User, now: datetime) -> dict[PaymentTender, int]:
    """What each wallet can pay now (unexpired credit lots only)."""
    balances = ledger.balances(user)
    return {
        PaymentTender.CREDIT: credits.available_credit(user, now).amount_minor,
        PaymentTender.VOUCHER: balances.voucher.amount_minor,
        PaymentTender.CASH: balances.cash.amount_minor,
    }


def funds(user: User, now: datetime) -> int:
    return sum(available(user, now).values())


def _split(due: int, wallets: dict[PaymentTender, int]) -> dict[PaymentTender, int]:
    parts = {}
    for tender in TENDERS:
        take = min(due, wallets[tender])
        if take > 0:
            parts[tender] = take
            due -= take
    return parts


def charge_user(
    user: User, period: tuple[datetime, datetime], through: datetime, now: datetime
) -> PrepaidCharge | None:
    """Charge what the period's usage metered through ``through`` owes beyond the period's
    earlier charges, as far as the funds reach. None when nothing was charged (nothing owed,
    no funds, or this hour was charged before). Flushes."""
    start, end = period
    lock_user(user)
    due = owed_so_far(user, start, end) - charged_so_far(user.id, start)
    if due <= 0:
        return None
    parts = _split(due, available(user, now))
    if not parts:
        log.info("prepaid: user %s owes %s and has no funds", user.id, Money(due, user.currency))
        return None
    charge_id = db.session.execute(
        dialect_insert(PrepaidCharge.__table__)
        .values(
            user_id=user.id,
            through=through,
            period_start=start,
            currency=user.currency,
            credit_minor=parts.get(PaymentTender.CREDIT, 0),
            voucher_minor=parts.get(PaymentTender.VOUCHER, 0),
            cash_minor=parts.get(PaymentTender.CASH, 0),
            created_at=utcnow(),
        )
        .on_conflict_do_nothing()
        .returning(PrepaidCharge.__table__.c.id)
    ).scalar()
    if charge_id is None:
        return None  # this hour was charged already
    usage_account = ledger.system_account(AccountKind.PREPAID_USAGE, user.currency)
    stamp = int(through.timestamp())
    description = f"Usage to {through:%Y-%m-%d %H:%M} UTC"
    for tender, amount in parts.items():
        key = f"prepaid:{user.id}:{stamp}:{tender}"
        if tender == PaymentTender.CREDIT:
            credits.spend_credit(
                user=user,
                amount=Money(amount, user.currency),
                counter_account=usage_account,
                idempotency_key=key,
                kind=CHARGE_KIND,
                description=description,
                now=now,
            )
        else:
            wallet = AccountKind.VOUCHER if tender == PaymentTender.VOUCHER else AccountKind.CASH
            ledger.post_transaction(
                idempotency_key=key,
                kind=CHARGE_KIND,
                user_id=user.id,
                description=description,
                legs=[(ledger.user_account(user, wallet), -amount), (usage_account, amount)],
            )
    db.session.flush()
    charge = db.session.get_one(PrepaidCharge, charge_id)
    log.info(
        "prepaid: user %s charged %s for usage through %s (%s owed)",
        user.id,
        Money(charge.total_minor, user.currency),
        through.isoformat(),
        Money(due, user.currency),
    )
    return charge


def _periods(since: datetime, upto: datetime) -> list[tuple[datetime, datetime]]:
    """The billing periods that overlap [since, upto)."""
    day = calendar.invoice_day()
    periods = [calendar.period_containing(since, day)]
    while periods[-1][1] < upto:
        periods.append(calendar.period_containing(periods[-1][1], day))
    return periods


def _invoiced_through(user_ids: list[int]) -> dict[int, datetime]:
    i = Invoice
    return {
        uid: end
        for uid, end in db.session.execute(
            select(i.user_id, func.max(i.period_end))
            .where(
                i.user_id.in_(user_ids),
                i.status != str(InvoiceStatus.VOID),
                i.kind == rollups.USAGE_INVOICE,
            )
            .group_by(i.user_id)
        ).all()
    }


def _with_funds(user_ids: list[int]) -> set[int]:
    """Of ``user_ids``, those whose wallets hold anything (read without locks: a first cut;
    whoever is charged is read again under the lock)."""
    a = LedgerAccount
    return set(
        db.session.scalars(
            select(a.user_id)
            .where(
                a.user_id.in_(user_ids),
                a.kind.in_(
                    [str(k) for k in (AccountKind.CASH, AccountKind.VOUCHER, AccountKind.CREDIT)]
                ),
                a.balance_minor > 0,
            )
            .distinct()
        )
    )


def _due(users: list[User], start: datetime, end: datetime) -> dict[int, int]:
    """Per user: the period's usage so far less its charges, for many users in two queries."""
    ids = [u.id for u in users]
    usage = period_usage(min(ids), max(ids) + 1, start, end, ids)
    c = PrepaidCharge
    charged = dict(
        db.session.execute(
            select(c.user_id, func.sum(c.credit_minor + c.voucher_minor + c.cash_minor))
            .where(c.user_id.in_(ids), c.period_start == start)
            .group_by(c.user_id)
        ).all()
    )
    return {
        u.id: sum(line.amount_minor for line in build_lines(usage.get(u.id, {}), {}, u.currency))
        - int(charged.get(u.id) or 0)
        for u in users
    }


@rollups.after_metering
def charge_window(chunk: int, since: datetime, upto: datetime) -> None:
    """The metering hook: charge the chunk's prepaid users whose deployments ran in
    [since, upto), for each billing period the window touches that is not invoiced yet.
    What each owes is worked out for all of them at once; only those who owe something and
    hold funds are charged, one by one under their lock (charge_user, which reads it all
    again)."""
    size = rollups.chunk_size()
    i = DeploymentInterval
    ran = (
        select(i.user_id)
        .where(
            i.user_id >= chunk * size,
            i.user_id < (chunk + 1) * size,
            i.start_epoch < rollups.epoch(upto),
            or_(i.end_epoch.is_(None), i.end_epoch > rollups.epoch(since)),
        )
        .distinct()
    )
    users = db.session.scalars(
        select(User).where(User.id.in_(ran), prepaid_clause()).order_by(User.id)
    ).all()
    if not users:
        return
    now = utcnow()
    invoiced = _invoiced_through([u.id for u in users])
    funded = _with_funds([u.id for u in users])
    for start, end in _periods(since, upto):
        open_users = [u for u in users if invoiced.get(u.id, start) < end]
        due = _due(open_users, start, end) if open_users else {}
        for user in open_users:
            if due[user.id] > 0 and user.id in funded:
                charge_user(user, (start, end), min(upto, end), now)


# -- the statement -------------------------------------------------------------------------


def uninvoiced_charges(user_ids: list[int], period_start: datetime) -> dict[int, dict[str, int]]:
    """Per user, per wallet: what the period's charges took and no statement holds yet."""
    c = PrepaidCharge
    out: dict[int, dict[str, int]] = defaultdict(dict)
    if not user_ids:
        return out
    for uid, cr, vo, ca in db.session.execute(
        select(
            c.user_id, func.sum(c.credit_minor), func.sum(c.voucher_minor), func.sum(c.cash_minor)
        )
        .where(c.user_id.in_(user_ids), c.period_start == period_start, c.invoice_id.is_(None))
        .group_by(c.user_id)
    ).all():
        out[uid] = {
            str(PaymentTender.CREDIT): int(cr or 0),
            str(PaymentTender.VOUCHER): int(vo or 0),
            str(PaymentTender.CASH): int(ca or 0),
        }
    return out


def statement_parts(charged: dict[str, int], total: int) -> tuple[dict[str, int], int]:
    """How the charges pay a statement of ``total``: per wallet, in the charging order, and
    what is left over (charged beyond the total, returned to the prepaid balance)."""
    parts: dict[str, int] = {}
    left = total
    for tender in TENDERS:
        take = min(left, charged.get(str(tender), 0))
        if take > 0:
            parts[str(tender)] = take
            left -= take
    return parts, sum(charged.values()) - sum(parts.values())


def attach_charges(
    user_ids: list[int], period_start: datetime, invoice_ids: dict[int, int]
) -> None:
    """The period's charges now belong to its statement."""
    for uid in user_ids:
        db.session.execute(
            update(PrepaidCharge)
            .where(
                PrepaidCharge.user_id == uid,
                PrepaidCharge.period_start == period_start,
                PrepaidCharge.invoice_id.is_(None),
            )
            .values(invoice_id=invoice_ids[uid])
        )


def prepaid_user_ids(in_chunk_clauses: list[ColumnElement[bool]], user_ids: list[int]) -> set[int]:
    """Which of ``user_ids`` are billed prepaid."""
    if not user_ids:
        return set()
    return set(
        db.session.scalars(
            select(User.id).where(*in_chunk_clauses, User.id.in_(user_ids), prepaid_clause())
        )
    )

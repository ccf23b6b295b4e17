"""Every account's billing status for the admin users list, its CSV and the API: balances
(the ledger's cached balances), amount owed, standing, plan, last invoice and the next
invoice's projection. One page is a fixed handful of queries however long it is: the page's
ids, their count, one aggregate query for the figures, last invoices and valid cards, the
grouped usage queries of the projection, and one for the runway (the last week's usage)."""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal

from sqlalchemy import BindParameter, Select, and_, bindparam, case, false, func, or_, select
from sqlalchemy.orm import aliased

from ...extensions import db
from ...models import (
    AccountKind,
    CurrencyPin,
    Invoice,
    InvoiceStatus,
    LedgerAccount,
    Plan,
    PlanVersion,
    Subscription,
    User,
)
from ...money import Money
from ..metering import projection
from ..standing import resources
from ..standing.account import card_expiry_limit
from ..standing.status import AT_RISK, GOOD, RUNWAY_AT_RISK_HOURS, STANDINGS, standing_of

SORTS = ("owed", "email", "newest")
# The plan of an account with no active subscription: it pays for what it uses.
PLAN = "usage"


@dataclass(frozen=True)
class UsersFilter:
    q: str = ""  # part of the email or name
    standing: str = ""  # one of STANDINGS, or any
    owes_more_than: Decimal | None = None  # major units of each account's currency
    sort: str = "owed"


@dataclass(frozen=True)
class LastInvoice:
    id: int
    number: str | None
    status: str
    total: Money
    period_start: datetime


@dataclass(frozen=True)
class AccountStatus:
    id: int
    email: str
    name: str
    is_admin: bool
    created_at: datetime
    currency: str
    cash: Money
    voucher: Money
    credit: Money
    owed: Money
    standing: str
    plan: str
    last_invoice: LastInvoice | None
    next_invoice: Money  # the current period's projected total
    # Hours the balances last at the last week's rate, for an account with no valid card
    # that used something (None otherwise): the list's "at risk" by runway.
    runway_hours: int | None = None

    @property
    def shown_standing(self) -> str:
        """The standing, at risk when good but the balances run out within 72 hours."""
        if self.standing == GOOD and self.runway_hours is not None:
            if self.runway_hours < RUNWAY_AT_RISK_HOURS:
                return AT_RISK
        return self.standing

    @property
    def spendable(self) -> Money:
        return self.cash + self.voucher + self.credit


def _receivable():
    return LedgerAccount.__table__.alias("receivable")


def _owes_more_than(owed, amount: Decimal):
    """owed > amount, in each currency's minor units (the currencies in use are pinned)."""
    conditions = []
    for code, digits in db.session.execute(select(CurrencyPin.code, CurrencyPin.digits)):
        # "more than 10.005" in USD: more than 1000 cents (1000.5 rounded down).
        limit = int((amount * 10**digits).to_integral_value(rounding=ROUND_FLOOR))
        conditions.append(and_(User.currency == code, owed > limit))
    return or_(*conditions) if conditions else false()


def _page_select(searched: bool, by_standing: bool, sort: str, owes: Decimal | None = None):
    """The matching accounts' ids (unordered) and the list's order: the search binds
    ``:like``, the standing ``:standing`` and ``:expiry_limit``."""
    r = _receivable()
    stmt = select(User.id).join(
        r,
        and_(
            r.c.user_id == User.id,
            r.c.kind == AccountKind.RECEIVABLE.value,
            r.c.currency == User.currency,
        ),
    )
    if searched:
        like: BindParameter[str] = bindparam("like")
        stmt = stmt.where(or_(User.email.like(like), func.lower(User.name).like(like)))
    if by_standing:
        standing = standing_of(User.id, expiry_limit=bindparam("expiry_limit"))
        stmt = stmt.where(standing == bindparam("standing"))
    if owes is not None:
        stmt = stmt.where(_owes_more_than(r.c.balance_minor, owes))
    order = {
        "owed": (r.c.balance_minor.desc(), r.c.user_id.desc()),
        "email": (User.email.asc(),),
        "newest": (User.id.desc(),),
    }[sort]
    return stmt, stmt.order_by(*order).limit(bindparam("limit")).offset(bindparam("offset"))


# Built once per shape: the list reads a page on every request.
_cached_page_select = functools.cache(_page_select)


def _page_query(f: UsersFilter, now: datetime) -> tuple[Select, Select, dict]:
    """(the matching ids, a page of them in the list's order, the parameters of both but
    ``:limit`` and ``:offset``). Built once per shape but with an amount owed (its
    condition reads the currencies' pins)."""
    shape = (bool(f.q), bool(f.standing), f.sort)
    if f.owes_more_than is None:
        matching, paged = _cached_page_select(*shape)
    else:
        matching, paged = _page_select(*shape, f.owes_more_than)
    params: dict = {}
    if f.q:
        params["like"] = f"%{f.q.strip().lower()}%"
    if f.standing:
        params["standing"] = f.standing
        params["expiry_limit"] = card_expiry_limit(now)
    return matching, paged, params


@functools.cache
def _unfiltered_count() -> Select:
    # Unfiltered: every account has exactly one receivable account, in its currency
    # (opened with the account), so counting those (an index-only scan) counts the accounts.
    return (
        select(func.count())
        .select_from(LedgerAccount)
        .where(
            LedgerAccount.kind == AccountKind.RECEIVABLE.value,
            LedgerAccount.user_id.is_not(None),
        )
    )


def _count(f: UsersFilter, stmt: Select, params: dict) -> int:
    if f.q or f.standing or f.owes_more_than is not None:
        return db.session.scalar(select(func.count()).select_from(stmt.subquery()), params) or 0
    return db.session.scalar(_unfiltered_count()) or 0


@dataclass(frozen=True)
class AccountsPage:
    items: list[AccountStatus]
    page: int
    per_page: int
    has_next: bool
    total: int | None  # None when not counted

    @property
    def has_prev(self) -> bool:
        return self.page > 1


def list_accounts(
    f: UsersFilter, *, page: int = 1, per_page: int = 25, now: datetime, count: bool = True
) -> AccountsPage:
    """One page of accounts. ``count=False`` skips counting every match (a scan of all the
    accounts); the page then only knows whether another follows."""
    matching, paged, params = _page_query(f, now)
    ids = list(
        db.session.scalars(
            paged, {**params, "limit": per_page + 1, "offset": (page - 1) * per_page}
        )
    )
    has_next = len(ids) > per_page
    ids = ids[:per_page]
    total = _count(f, matching, params) if count else None
    return AccountsPage(statuses(ids, now=now), page, per_page, has_next, total)


@functools.cache
def _statuses_query():
    """One statement for the accounts ``:ids``: their balances, standing, plan and last
    invoice; built once (building it cost more than running it)."""
    la = LedgerAccount

    def balance(kind: AccountKind):
        return func.coalesce(func.sum(case((la.kind == kind.value, la.balance_minor))), 0)

    last_invoice = (
        select(func.max(Invoice.id))
        .where(Invoice.user_id == User.id, Invoice.status != InvoiceStatus.DRAFT.value)
        .correlate(User)
        .scalar_subquery()
    )
    last = aliased(Invoice, name="last_invoice")
    plan = (  # one subscription per user at most
        select(Plan.code)
        .select_from(Subscription)
        .join(PlanVersion, PlanVersion.id == Subscription.plan_version_id)
        .join(Plan, Plan.id == PlanVersion.plan_id)
        .where(Subscription.user_id == User.id, Subscription.status == "active")
        .correlate(User)
        .scalar_subquery()
    )
    return (
        select(
            User.id,
            User.email,
            User.name,
            User.is_admin,
            User.created_at,
            User.currency,
            balance(AccountKind.CASH),
            balance(AccountKind.VOUCHER),
            balance(AccountKind.CREDIT),
            balance(AccountKind.RECEIVABLE),
            standing_of(User.id, expiry_limit=bindparam("expiry_limit")),
            last.id,
            last.number,
            last.status,
            last.total_minor,
            last.currency,
            last.period_start,
            plan,
            resources.carded_column(User.id, bindparam("month_now")),
        )
        .outerjoin(la, and_(la.user_id == User.id, la.currency == User.currency))
        .outerjoin(
            last,
            and_(
                last.user_id == User.id,
                last.user_id.in_(bindparam("ids", expanding=True)),
                last.id == last_invoice,
            ),
        )
        .where(User.id.in_(bindparam("ids", expanding=True)))
        .group_by(User.id, last.id)
    )


def statuses(ids: list[int], *, now: datetime) -> list[AccountStatus]:
    """The billing status of the accounts ``ids``, in that order."""
    if not ids:
        return []
    rows = db.session.execute(
        _statuses_query(),
        {
            "ids": ids,
            "expiry_limit": card_expiry_limit(now),
            "month_now": now.year * 12 + now.month,
        },
    ).all()
    invoices = {
        r[11]: LastInvoice(r[11], r[12], r[13], Money(r[14], r[15]), r[16])
        for r in rows
        if r[11] is not None
    }
    plans = {r[0]: r[17] for r in rows if r[17] is not None}
    projected = projection.by_user([(r[0], r[5]) for r in rows], now)
    runways = resources.runways(
        [(r[0], r[4], Money(int(r[6]) + int(r[7]) + int(r[8]), r[5])) for r in rows],
        now,
        carded={r[0] for r in rows if r[18]},
    )
    by_id = {}
    for (
        uid,
        email,
        name,
        admin,
        created,
        cur,
        cash,
        voucher,
        credit,
        owed,
        standing,
        inv,
        *_,
    ) in rows:
        by_id[uid] = AccountStatus(
            id=uid,
            email=email,
            name=name,
            is_admin=admin,
            created_at=created,
            currency=cur,
            cash=Money(int(cash), cur),
            voucher=Money(int(voucher), cur),
            credit=Money(int(credit), cur),
            owed=Money(int(owed), cur),
            standing=standing,
            plan=plans.get(uid, PLAN),
            last_invoice=invoices.get(inv),
            next_invoice=projected[uid].projected,
            runway_hours=runways[uid],
        )
    return [by_id[i] for i in ids if i in by_id]


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


CSV_COLUMNS = (
    "id",
    "email",
    "name",
    "currency",
    "cash",
    "voucher",
    "credit",
    "owed",
    "standing",
    "plan",
    "last_invoice",
    "last_invoice_status",
    "last_invoice_total",
    "next_invoice_projection",
)


def export_csv(f: UsersFilter, *, now: datetime, batch: int = 500) -> Iterator[str]:
    """Every matching account in the list's order, a page of ``batch`` at a time:
    UTF-8 with BOM, CRLF."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    buffer.write("\ufeff")
    writer.writerow(CSV_COLUMNS)
    _, paged, params = _page_query(f, now)
    offset = 0
    while True:
        ids = list(db.session.scalars(paged, {**params, "limit": batch, "offset": offset}))
        for a in statuses(ids, now=now):
            inv = a.last_invoice
            writer.writerow(
                [
                    str(x)
                    for x in (
                        a.id,
                        _cell(a.email),
                        _cell(a.name),
                        a.currency,
                        a.cash.amount,
                        a.voucher.amount,
                        a.credit.amount,
                        a.owed.amount,
                        a.standing,
                        a.plan,
                        inv.number if inv else "",
                        inv.status if inv else "",
                        inv.total.amount if inv else "",
                        a.next_invoice.amount,
                    )
                ]
            )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(ids) < batch:
            return
        offset += batch


__all__ = ["PLAN", "SORTS", "STANDINGS", "AccountStatus", "UsersFilter", "export_csv"]

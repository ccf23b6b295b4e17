"""The standing of an account, from worst to best: removing (deployments scheduled for
deletion), suspended (deployments suspended for an unpaid invoice), overdue (an overdue
invoice), at risk (the default card expires before the next invoice, or, for an account
living on its balances, they last less than 72 hours, or the period's spending reached a
budget cap set to stop deployments), good.

``standing_of`` is the SQL expression lists filter by (all but the runway and the budget,
which need the account's hourly cost and spending), ``count_by_standing`` counts the same
without reading every account; ``standing`` adds them for one account."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.orm import InstrumentedAttribute

from ...extensions import db
from ...models import (
    Deployment,
    DeploymentState,
    DunningStep,
    Invoice,
    InvoiceStatus,
    PaymentMethod,
    User,
    utcnow,
)
from ...money import Money
from . import prepaid
from .account import Account, card_expiry_limit, read_account

GOOD, AT_RISK, OVERDUE, SUSPENDED, REMOVING = "good", "at_risk", "overdue", "suspended", "removing"
STANDINGS = (GOOD, AT_RISK, OVERDUE, SUSPENDED, REMOVING)
RUNWAY_AT_RISK_HOURS = 72
REMOVING_FOR_INVOICE = "deployments are scheduled for removal for an unpaid invoice"


def standing_of(
    user_id: ColumnElement[Any] | InstrumentedAttribute[int] = User.id,
    now: datetime | None = None,
    *,
    expiry_limit: ColumnElement[int] | None = None,
) -> ColumnElement[str]:
    """The standing of the account whose id is ``user_id`` (a column of the outer query),
    without the runway. ``expiry_limit`` (a bound parameter for ``card_expiry_limit(now)``)
    lets a statement built once serve any ``now``."""
    removing = exists(
        select(Deployment.id).where(
            Deployment.user_id == user_id, Deployment.state == str(DeploymentState.REMOVING)
        )
    )
    suspended = exists(
        select(DunningStep.id)
        .join(Invoice, Invoice.id == DunningStep.invoice_id)
        .where(
            DunningStep.user_id == user_id,
            DunningStep.step == "suspended",
            Invoice.status == InvoiceStatus.OVERDUE.value,
        )
    )
    overdue = exists(
        select(Invoice.id).where(
            Invoice.user_id == user_id, Invoice.status == InvoiceStatus.OVERDUE.value
        )
    )
    expiring = exists(
        select(PaymentMethod.id).where(
            and_(
                PaymentMethod.user_id == user_id,
                PaymentMethod.is_default.is_(True),
                PaymentMethod.removed_at.is_(None),
                PaymentMethod.exp_year * 12 + PaymentMethod.exp_month
                < (card_expiry_limit(now or utcnow()) if expiry_limit is None else expiry_limit),
            )
        )
    )
    return case(
        (removing, REMOVING),
        (suspended, SUSPENDED),
        (overdue, OVERDUE),
        (expiring, AT_RISK),
        else_=GOOD,
    )


@functools.cache
def count_statement() -> CompoundSelect:
    """``(rank, count)`` rows: how many accounts not good have each rank (0 removing, 1
    suspended, 2 overdue, 3 at risk), each set read from an index (deployments being
    removed, suspensions, overdue invoices, expiring default cards), and every account with
    rank -1. Built once; ``:expiry_limit`` is ``card_expiry_limit(now)``."""
    ranked = union_all(
        select(Deployment.user_id, literal(0).label("rank")).where(
            Deployment.state == str(DeploymentState.REMOVING)
        ),
        select(DunningStep.user_id, literal(1))
        .join(Invoice, Invoice.id == DunningStep.invoice_id)
        .where(DunningStep.step == "suspended", Invoice.status == InvoiceStatus.OVERDUE.value),
        select(Invoice.user_id, literal(2)).where(Invoice.status == InvoiceStatus.OVERDUE.value),
        select(PaymentMethod.user_id, literal(3)).where(
            PaymentMethod.is_default.is_(True),
            PaymentMethod.removed_at.is_(None),
            PaymentMethod.exp_year * 12 + PaymentMethod.exp_month < bindparam("expiry_limit"),
        ),
    ).subquery()
    worst = select(func.min(ranked.c.rank).label("rank")).group_by(ranked.c.user_id).subquery()
    by_rank = select(worst.c.rank, func.count().label("n")).group_by(worst.c.rank)
    every = select(literal(-1), func.count()).select_from(User)  # with rank -1: all accounts
    return union_all(by_rank, every)


def counts_of(rows: Iterable[tuple[int, int]]) -> dict[str, int]:
    """The counts by standing from ``count_statement``'s rows."""
    counts = dict.fromkeys(STANDINGS, 0)
    total = 0
    for rank, n in rows:
        if rank < 0:
            total = n
        else:
            counts[(REMOVING, SUSPENDED, OVERDUE, AT_RISK)[rank]] = n
    counts[GOOD] = total - sum(counts.values())
    return counts


def count_by_standing(now: datetime | None = None) -> dict[str, int]:
    """How many accounts have each standing (as ``standing_of`` tells them), reading only
    the accounts that are not good; good is all the others."""
    rows = db.session.execute(
        count_statement(), {"expiry_limit": card_expiry_limit(now or utcnow())}
    )
    return counts_of((int(rank), int(n)) for rank, n in rows)


@dataclass(frozen=True)
class Standing:
    status: str
    reasons: tuple[str, ...]
    runway_hours: int | None  # None: nothing bills by the hour, or a valid card pays
    # A prepaid account whose funds ran out: when its deployments go, and what stops it.
    removal_at: datetime | None = None
    amount_needed: Money | None = None


def status_of(account: Account, runway_hours: int | None) -> tuple[str, tuple[str, ...]]:
    """The standing and why, worst first."""
    reasons = []
    if account.removing:
        reasons.append(REMOVING_FOR_INVOICE)
    if account.suspended:
        reasons.append("deployments are suspended for an unpaid invoice")
    if account.overdue:
        reasons.append("an invoice is overdue")
    if account.card_expiring:
        reasons.append("the default card expires before the next invoice")
    if runway_hours is not None and runway_hours < RUNWAY_AT_RISK_HOURS:
        reasons.append(f"the balances last about {runway_hours} hours at the current rate")
    if account.budget_reached and account.budget_stop:
        reasons.append(
            "spending reached the monthly budget cap: deployments stop until it is raised"
        )
    if account.removing:
        return REMOVING, tuple(reasons)
    if account.suspended:
        return SUSPENDED, tuple(reasons)
    if account.overdue:
        return OVERDUE, tuple(reasons)
    if reasons:
        return AT_RISK, tuple(reasons)
    return GOOD, ()


def standing(user: User, now: datetime | None = None) -> Standing:
    """One account's standing, the runway included (for accounts with no valid card)."""
    now = now or utcnow()
    account = read_account(user, now)
    runway = None
    if not account.valid_card and account.hourly_micros > 0:
        runway = int(account.funds_micros(user.currency) / account.hourly_micros)
    status, reasons = status_of(account, runway)
    countdown = prepaid.countdown(user, now)
    if countdown is None:
        return Standing(status, reasons, runway)
    why = (
        f"the prepaid funds ran out: add {countdown.needed.format()} before "
        f"{countdown.removal_at:%d %b %Y %H:%M} UTC or the deployments are removed then"
    )
    reasons = tuple(r for r in reasons if r != REMOVING_FOR_INVOICE)
    return Standing(REMOVING, (why, *reasons), runway, countdown.removal_at, countdown.needed)

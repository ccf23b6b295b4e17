"""The budget rules: setting a cap, and the check (the "check-budgets" job, every 15
minutes, and right after a user saves a budget).

- At 80 percent of the cap: ``billing.budget.warning`` and a mail; at 100:
  ``billing.budget.reached`` and a mail. Each once per user, budget (its revision) and
  billing period: a row of budget_notices, UNIQUE on them, inserted before anything else.
- At the cap with "stop at the cap": the user's active deployments are suspended
  (``billing.deployment.suspended``, reason "budget") and listed on the period's notice; ones
  that become active while the cap is still reached are suspended by the next check.
- Once the cap no longer stops them (raised, removed, set to only tell, or a new period
  began), what the budget suspended runs again (``billing.deployment.resumed``, reason
  "budget"); deployments suspended for other reasons (dunning, quotas) are never touched, and
  nothing resumes while the account is suspended for an unpaid invoice."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime

from flask import current_app
from sqlalchemy import exists, select, update

from ...db import dialect_insert, rowcount
from ...errors import ValidationFailed
from ...extensions import db
from ...models import (
    Budget,
    BudgetNotice,
    Deployment,
    DeploymentState,
    DunningStep,
    Invoice,
    InvoiceStatus,
    User,
    utcnow,
)
from ...money import Money
from .. import calendar, events, mail
from ..metering import deployments as deployment_service
from . import spending

log = logging.getLogger(__name__)

WARNING, REACHED = 80, 100
THRESHOLDS = (WARNING, REACHED)
BATCH = 500  # users whose spending is read together
S = DeploymentState


@dataclass(frozen=True)
class Status:
    """A user's budget as pages and the API show it."""

    cap: Money | None
    stop_at_cap: bool
    spent: Money
    period_start: datetime
    period_end: datetime

    @property
    def period_last_day(self) -> date:
        return calendar.last_day(self.period_end)

    @property
    def percent(self) -> int | None:
        if self.cap is None:
            return None
        return spending.percent(self.spent.amount_minor, self.cap.amount_minor)

    @property
    def reached(self) -> bool:
        return self.cap is not None and self.spent.amount_minor >= self.cap.amount_minor


def get_budget(user: User) -> Budget | None:
    return db.session.get(Budget, user.id)


def status(user: User, now: datetime | None = None) -> Status:
    now = now or utcnow()
    budget = get_budget(user)
    return status_of(
        user,
        budget.cap_minor if budget is not None else None,
        bool(budget and budget.stop_at_cap),
        spending.by_user([user], now)[user.id],
        now,
    )


def status_of(
    user: User, cap_minor: int | None, stop_at_cap: bool, spent_minor: int, now: datetime
) -> Status:
    """The Status from figures read elsewhere (standing's account read sums the same
    spending: ``spending.from_row``)."""
    start, end = calendar.period_containing(now, calendar.invoice_day())
    return Status(
        cap=None if cap_minor is None else Money(cap_minor, user.currency),
        stop_at_cap=stop_at_cap,
        spent=Money(spent_minor, user.currency),
        period_start=start,
        period_end=end,
    )


def set_budget(
    user: User, cap: Money | None, stop_at_cap: bool, now: datetime | None = None
) -> Budget:
    """Set (or with ``cap`` None, remove) the user's monthly cap, then check it at once: a
    lower cap may warn or stop now, a higher one lets what it stopped run again. Flushes."""
    now = now or utcnow()
    if cap is not None:
        if cap.currency != user.currency:
            raise ValidationFailed.field("cap", f"must be in {user.currency}")
        if cap.amount_minor <= 0:
            raise ValidationFailed.field("cap", "must be greater than 0")
    budget = get_budget(user)
    if budget is None:
        budget = Budget(user_id=user.id, currency=user.currency, revision=0)
        db.session.add(budget)
    cap_minor = None if cap is None else cap.amount_minor
    if budget.revision == 0 or (budget.cap_minor, budget.stop_at_cap) != (cap_minor, stop_at_cap):
        budget.revision += 1
    budget.cap_minor, budget.stop_at_cap, budget.updated_at = cap_minor, stop_at_cap, now
    db.session.flush()
    result = CheckResult()
    _check_user(user, budget, spending.by_user([user], now)[user.id], now, result)
    db.session.flush()
    return budget


# -- the check ------------------------------------------------------------------------------


@dataclass
class CheckResult:
    users: int = 0
    warnings: int = 0
    reached: int = 0
    suspended: int = 0
    resumed: int = 0

    def figures(self) -> dict[str, int]:
        return dict(self.__dict__)


def _open_suspensions():
    return select(BudgetNotice.user_id).where(
        BudgetNotice.threshold == REACHED, BudgetNotice.resumed_at.is_(None)
    )


def check(now: datetime | None = None, user_ids: range | None = None) -> CheckResult:
    """Every user with a cap, or with deployments a budget suspended (only those with ids
    in ``user_ids``: a metering chunk's). Flushes; safe to run twice or on two daemons at
    once."""
    now = now or utcnow()
    result = CheckResult()
    stmt = select(User, Budget).join(Budget, Budget.user_id == User.id)
    if user_ids is not None:
        stmt = stmt.where(Budget.user_id >= user_ids.start, Budget.user_id < user_ids.stop)
    rows = db.session.execute(
        stmt.where(Budget.cap_minor.is_not(None) | User.id.in_(_open_suspensions())).order_by(
            User.id
        )
    ).all()
    for i in range(0, len(rows), BATCH):
        batch = rows[i : i + BATCH]
        spent = spending.by_user([user for user, _ in batch], now)
        for user, budget in batch:
            result.users += 1
            _check_user(user, budget, spent[user.id], now, result)
    db.session.flush()
    if any(v for k, v in result.figures().items() if k != "users"):
        log.info("budgets: %s", result.figures())
    return result


def _check_user(user: User, budget: Budget, spent: int, now: datetime, result) -> None:
    start, end = calendar.period_containing(now, calendar.invoice_day())
    cap = budget.cap_minor
    if cap is not None:
        for threshold in THRESHOLDS:
            if spent * 100 >= threshold * cap:
                _notice(user, budget, threshold, spent, start, end, now, result)
    if cap is not None and budget.stop_at_cap and spent >= cap:
        result.suspended += _suspend(user, budget, start, now)
    else:
        result.resumed += _resume(user, now)


def _notice(
    user: User,
    budget: Budget,
    threshold: int,
    spent: int,
    start: datetime,
    end: datetime,
    now: datetime,
    result: CheckResult,
) -> None:
    assert budget.cap_minor is not None
    notice_id = db.session.execute(
        dialect_insert(BudgetNotice.__table__)
        .values(
            user_id=user.id,
            period_start=start,
            threshold=threshold,
            revision=budget.revision,
            cap_minor=budget.cap_minor,
            spent_minor=spent,
            currency=user.currency,
            stop_at_cap=budget.stop_at_cap,
            deployments=[],
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(BudgetNotice.__table__.c.id)
    ).scalar()
    if notice_id is None:  # noticed already this period
        return
    notice = db.session.get_one(BudgetNotice, notice_id)
    cap, spent_money = Money(budget.cap_minor, user.currency), Money(spent, user.currency)
    name = "billing.budget.warning" if threshold == WARNING else "billing.budget.reached"
    events.record(
        name,
        f"budget:{user.id}:{start.date().isoformat()}:{budget.revision}:{threshold}",
        {
            "user_id": user.id,
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
            **cap.to_json("cap"),
            **spent_money.to_json("spent"),
            "currency": user.currency,
            "threshold_percent": threshold,
            "stop": budget.stop_at_cap,
        },
        user.id,
    )
    message = mail.queue_email(
        to=user.email,
        subject=(
            f"You have spent {spending.percent(spent, budget.cap_minor)}% of your monthly budget"
            if threshold == WARNING
            else (
                "Budget reached: your deployments are suspended"
                if budget.stop_at_cap
                else "You have reached your monthly budget"
            )
        ),
        template="budget_warning" if threshold == WARNING else "budget_reached",
        user_id=user.id,
        user=user,
        cap=cap,
        spent=spent_money,
        percent=spending.percent(spent, budget.cap_minor),
        stop=budget.stop_at_cap,
        at=now,
        period_start=start,
        period_last_day=calendar.last_day(end),
        next_period=end,
        link=f"{current_app.config['PUBLIC_URL']}/account/budget",
    )
    notice.message_id = message.id if message is not None else None
    if threshold == WARNING:
        result.warnings += 1
    else:
        result.reached += 1
    log.info("budget %s%%: user %s spent %s of %s", threshold, user.id, spent, budget.cap_minor)


def _suspend(user: User, budget: Budget, start: datetime, now: datetime) -> int:
    """Suspend what runs and list it on this budget's reached notice for the period."""
    notice = db.session.scalar(
        select(BudgetNotice).where(
            BudgetNotice.user_id == user.id,
            BudgetNotice.period_start == start,
            BudgetNotice.threshold == REACHED,
            BudgetNotice.revision == budget.revision,
        )
    )
    assert notice is not None  # _notice inserted it, now or before
    if notice.resumed_at is not None:
        return 0
    active = db.session.scalars(
        select(Deployment)
        .where(Deployment.user_id == user.id, Deployment.state == str(S.ACTIVE))
        .order_by(Deployment.id)
    ).all()
    for dep in active:
        deployment_service.update_deployment(dep, state=str(S.SUSPENDED))
        events.record(
            "billing.deployment.suspended",
            f"budget:{notice.id}:suspended:{dep.external_id}",
            _deployment_data(user, dep, "suspended", now),
            user.id,
        )
    if active:
        notice.deployments = [*notice.deployments, *(d.external_id for d in active)]
    return len(active)


def _dunning_suspended(user_id: int) -> bool:
    return bool(
        db.session.scalar(
            select(
                exists().where(
                    DunningStep.user_id == user_id,
                    DunningStep.step == "suspended",
                    Invoice.id == DunningStep.invoice_id,
                    Invoice.status == InvoiceStatus.OVERDUE.value,
                )
            )
        )
    )


def _resume(user: User, now: datetime) -> int:
    """Let run again what the budget suspended (only that, and only while no unpaid invoice
    keeps the account suspended)."""
    notices = db.session.scalars(
        select(BudgetNotice)
        .where(
            BudgetNotice.user_id == user.id,
            BudgetNotice.threshold == REACHED,
            BudgetNotice.resumed_at.is_(None),
        )
        .order_by(BudgetNotice.id)
    ).all()
    if not notices or _dunning_suspended(user.id):
        return 0
    resumed = 0
    for notice in notices:
        # Claimed by one UPDATE: a second check racing this one waits on the row, then
        # finds it resumed and leaves it (one set of events, one mail).
        claimed = rowcount(
            db.session.execute(
                update(BudgetNotice)
                .where(BudgetNotice.id == notice.id, BudgetNotice.resumed_at.is_(None))
                .values(resumed_at=now)
                .execution_options(synchronize_session=False)
            )
        )
        if not claimed:
            continue
        db.session.refresh(notice)
        names = set(notice.deployments)
        deps = (
            db.session.scalars(
                select(Deployment)
                .where(
                    Deployment.user_id == user.id,
                    Deployment.external_id.in_(names),
                    Deployment.state == str(S.SUSPENDED),
                )
                .order_by(Deployment.id)
            ).all()
            if names
            else []
        )
        for dep in deps:
            deployment_service.update_deployment(dep, state=str(S.ACTIVE))
            events.record(
                "billing.deployment.resumed",
                f"budget:{notice.id}:resumed:{dep.external_id}",
                _deployment_data(user, dep, "active", now),
                user.id,
            )
        if deps:
            _resumed_mail(user, notice, [d.name or d.external_id for d in deps], now)
        resumed += len(deps)
    return resumed


def _resumed_mail(user: User, notice: BudgetNotice, names: list[str], now: datetime) -> None:
    mail.queue_email(
        to=user.email,
        subject="Your deployments run again: the budget no longer stops them",
        template="budget_resumed",
        user_id=user.id,
        dedupe_key=f"budget-resumed:{notice.id}",
        user=user,
        deployments=names,
        at=now,
        link=f"{current_app.config['PUBLIC_URL']}/account/budget",
    )


def _deployment_data(user: User, dep: Deployment, state: str, now: datetime) -> dict:
    return {
        "user_id": user.id,
        "external_id": dep.external_id,
        "state": state,
        "reason": "budget",
        "effective_at": now.isoformat(),
    }

"""Quotas: a plan's limits against what the user's deployments hold at once.

The allocation of a resource is the sum over the user's running deployments (pending or
active) of their size. ``check_quotas`` (the "check-quotas" job, every 15 minutes) records
``billing.quota.warning`` at alertThreshold percent and ``billing.quota.exceeded`` at 100 or
more, each once per user, resource and billing period (UNIQUE in the database), and mails
the user. With autoSuspendOnOverage, a user still over a quota gracePeriodDays after first
going over has the newest deployments that push them over suspended; they are resumed when
they fit again (after an upgrade, or when others stop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import func, select

from ...db import dialect_insert
from ...extensions import db
from ...models import (
    Deployment,
    DeploymentState,
    PlanVersion,
    QuotaAlert,
    QuotaBreach,
    QuotaSuspension,
    Subscription,
    SubscriptionStatus,
    User,
    utcnow,
)
from .. import calendar, events, mail
from ..invoicing.subscribed import RESOURCES, mode_of
from ..metering import deployments as deployment_service

log = logging.getLogger(__name__)

RUNNING = (str(DeploymentState.PENDING), str(DeploymentState.ACTIVE))
LABELS = {"cpu": "CPU cores", "memory": "memory (GB)", "storage": "storage (GB)"}
_COLUMNS = {
    "cpu": Deployment.cpu_milli,
    "memory": Deployment.memory_mgb,
    "storage": Deployment.storage_mgb,
}


def units(milli: int) -> str:
    """Thousandths as whole units, exactly: 8000 -> "8", 1500 -> "1.5"."""
    whole, frac = divmod(milli, 1000)
    return str(whole) if not frac else f"{whole}.{frac:03d}".rstrip("0")


def allocation(user_id: int) -> dict[str, int]:
    """What the user's running deployments hold now, per resource, in thousandths."""
    row = db.session.execute(
        select(*(func.coalesce(func.sum(c), 0) for c in _COLUMNS.values())).where(
            Deployment.user_id == user_id, Deployment.state.in_(RUNNING)
        )
    ).one()
    return {r: int(v) for r, v in zip(_COLUMNS, row, strict=True)}


@dataclass(frozen=True)
class Meter:
    """One quota as the page and the API show it."""

    resource: str
    limit_milli: int
    allocated_milli: int
    threshold: int  # percent

    @property
    def percent(self) -> int:
        if not self.limit_milli:
            return 100 if self.allocated_milli else 0
        return self.allocated_milli * 100 // self.limit_milli

    @property
    def level(self) -> str:
        if self.allocated_milli > self.limit_milli or (
            self.limit_milli and self.allocated_milli * 100 >= 100 * self.limit_milli
        ):
            return "exceeded"
        if self.allocated_milli * 100 >= self.threshold * self.limit_milli and self.allocated_milli:
            return "warning"
        return "ok"

    @property
    def label(self) -> str:
        return LABELS[self.resource]

    @property
    def limit(self) -> str:
        return units(self.limit_milli)

    @property
    def allocated(self) -> str:
        return units(self.allocated_milli)


def threshold() -> int:
    return current_app.config["BILLING"].alert_threshold


def meters(user_id: int, version: PlanVersion) -> list[Meter]:
    held = allocation(user_id)
    limits = version.limits()
    return [Meter(r, limits[r], held[r], threshold()) for r in RESOURCES]


def suspended_count(user_id: int) -> int:
    return int(
        db.session.scalar(
            select(func.count()).where(
                QuotaSuspension.user_id == user_id, QuotaSuspension.resumed_at.is_(None)
            )
        )
        or 0
    )


def refusal_for(user: User, version: PlanVersion) -> str | None:
    """Why the user cannot move down to ``version`` now: what runs exceeds its limits."""
    held = allocation(user.id)
    over = [
        f"{LABELS[r]} {units(held[r])} running, the plan allows {units(limit)}"
        for r, limit in version.limits().items()
        if held[r] > limit
    ]
    if not over:
        return None
    return (
        f"{version.name} allows less than what runs now ({'; '.join(over)}): "
        "stop or shrink deployments first"
    )


# -- the check-quotas job ----------------------------------------------------------------


@dataclass
class CheckResult:
    users: int = 0
    warnings: int = 0
    exceeded: int = 0
    suspended: int = 0
    resumed: int = 0

    def figures(self) -> dict[str, int]:
        return dict(self.__dict__)


def check_quotas(now: datetime | None = None) -> CheckResult:
    """Every subscriber's quotas: alerts once per period, breaches, suspensions and
    resumptions. Flushes; safe to run twice or on two daemons at once."""
    now = now or utcnow()
    result = CheckResult()
    rows = db.session.execute(
        select(Subscription, User)
        .join(User, User.id == Subscription.user_id)
        .where(Subscription.status == str(SubscriptionStatus.ACTIVE))
        .order_by(Subscription.user_id)
    ).all()
    for sub, user in rows:
        if not mode_of(user.billing_mode).plans:
            continue
        result.users += 1
        _check_user(user, sub.plan_version, now, result)
    # Suspended users whose subscription ended or moved to usage billing are resumed too.
    for user in db.session.scalars(
        select(User).where(
            User.id.in_(select(QuotaSuspension.user_id).where(QuotaSuspension.resumed_at.is_(None)))
        )
    ):
        result.resumed += resume_fitting(user, now)
    return result


def _check_user(user: User, version: PlanVersion, now: datetime, result: CheckResult) -> None:
    period_start, _ = calendar.period_containing(now, calendar.invoice_day())
    for meter in meters(user.id, version):
        if meter.level != "ok":
            _alert(user, meter, period_start, now, result)
        _track_breach(user, meter, now)
    settings = current_app.config["BILLING"]
    if settings.auto_suspend_on_overage:
        result.suspended += _suspend_over(user, version, now, settings.grace_period_days)
    result.resumed += resume_fitting(user, now)


def _alert(user: User, meter: Meter, period_start: datetime, now: datetime, result) -> None:
    inserted = db.session.execute(
        dialect_insert(QuotaAlert.__table__)
        .values(
            user_id=user.id,
            resource=meter.resource,
            level=meter.level,
            period_start=period_start,
            limit_milli=meter.limit_milli,
            allocated_milli=meter.allocated_milli,
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(QuotaAlert.__table__.c.id)
    ).scalar()
    if inserted is None:  # alerted already this period
        return
    name = f"billing.quota.{meter.level}"
    events.record(
        name,
        f"quota:{user.id}:{meter.resource}:{period_start.date().isoformat()}",
        {
            "user_id": user.id,
            "resource": meter.resource,
            "used": meter.allocated,
            "limit": meter.limit,
            "threshold_percent": meter.threshold if meter.level == "warning" else 100,
        },
        user.id,
    )
    mail.queue_email(
        to=user.email,
        subject=(
            f"You have reached {meter.percent}% of your {meter.label} quota"
            if meter.level == "warning"
            else f"You are over your {meter.label} quota"
        ),
        template=f"quota_{meter.level}",
        user_id=user.id,
        user=user,
        meter=meter,
        link=f"{current_app.config['PUBLIC_URL']}/subscription/",
    )
    if meter.level == "warning":
        result.warnings += 1
    else:
        result.exceeded += 1
    log.info(
        "quota %s: user %s %s %s of %s",
        meter.level,
        user.id,
        meter.resource,
        meter.allocated,
        meter.limit,
    )


def _track_breach(user: User, meter: Meter, now: datetime) -> None:
    over = meter.allocated_milli > meter.limit_milli
    if over:
        db.session.execute(
            dialect_insert(QuotaBreach.__table__)
            .values(user_id=user.id, resource=meter.resource, since=now)
            .on_conflict_do_nothing()
        )
    else:
        db.session.execute(
            QuotaBreach.__table__.update()
            .where(
                QuotaBreach.user_id == user.id,
                QuotaBreach.resource == meter.resource,
                QuotaBreach.resolved_at.is_(None),
            )
            .values(resolved_at=now)
        )


def _suspend_over(user: User, version: PlanVersion, now: datetime, grace_days: int) -> int:
    """Over a quota since longer than the grace period: suspend the newest running
    deployments until what remains fits."""
    due = db.session.scalars(
        select(QuotaBreach.resource).where(
            QuotaBreach.user_id == user.id,
            QuotaBreach.resolved_at.is_(None),
            QuotaBreach.since <= now - timedelta(days=grace_days),
        )
    ).all()
    if not due:
        return 0
    limits = version.limits()
    held = allocation(user.id)
    running = list(
        db.session.scalars(
            select(Deployment)
            .where(Deployment.user_id == user.id, Deployment.state == str(DeploymentState.ACTIVE))
            .order_by(Deployment.started_at.desc(), Deployment.id.desc())
        )
    )
    suspended = []
    for dep in running:
        over = [r for r in due if held[r] > limits[r]]
        if not over:
            break
        size = _size(dep)
        if not any(size[r] for r in over):
            continue
        deployment_service.update_deployment(dep, state=str(DeploymentState.SUSPENDED))
        row = QuotaSuspension(
            deployment_id=dep.id, user_id=user.id, resource=over[0], suspended_at=now
        )
        db.session.add(row)
        db.session.flush()
        for r in RESOURCES:
            held[r] -= size[r]
        events.record(
            "billing.deployment.suspended",
            f"quota-suspension:{row.id}",
            {
                "user_id": user.id,
                "external_id": dep.external_id,
                "state": "suspended",
                "reason": "quota",
                "effective_at": now.isoformat(),
            },
            user.id,
        )
        suspended.append((dep, over[0]))
    if suspended:
        mail.queue_email(
            to=user.email,
            subject="Deployments suspended: over your plan's quota",
            template="quota_suspended",
            user_id=user.id,
            user=user,
            suspended=[(d, LABELS[r]) for d, r in suspended],
            version=version,
            grace_days=grace_days,
            link=f"{current_app.config['PUBLIC_URL']}/subscription/",
        )
    return len(suspended)


def _size(dep: Deployment) -> dict[str, int]:
    return {"cpu": dep.cpu_milli, "memory": dep.memory_mgb, "storage": dep.storage_mgb}


def resume_fitting(user: User, now: datetime | None = None) -> int:
    """Resume the deployments suspended over a quota that fit again (oldest first), or all
    of them when the user no longer has plan limits."""
    now = now or utcnow()
    rows = list(
        db.session.scalars(
            select(QuotaSuspension)
            .where(QuotaSuspension.user_id == user.id, QuotaSuspension.resumed_at.is_(None))
            .order_by(QuotaSuspension.id)
        )
    )
    if not rows:
        return 0
    sub = db.session.scalar(select(Subscription).where(Subscription.user_id == user.id))
    limited = (
        sub is not None
        and sub.status == SubscriptionStatus.ACTIVE
        and mode_of(user.billing_mode).plans
    )
    limits = sub.plan_version.limits() if limited and sub is not None else None
    held = allocation(user.id)
    resumed = 0
    for row in rows:
        dep = db.session.get_one(Deployment, row.deployment_id)
        if dep.state != DeploymentState.SUSPENDED:
            row.resumed_at = now  # the platform moved it on meanwhile
            continue
        size = _size(dep)
        if limits is not None and any(held[r] + size[r] > limits[r] for r in RESOURCES):
            continue
        deployment_service.update_deployment(dep, state=str(DeploymentState.ACTIVE))
        row.resumed_at = now
        for r in RESOURCES:
            held[r] += size[r]
        events.record(
            "billing.deployment.resumed",
            f"quota-resumption:{row.id}",
            {
                "user_id": user.id,
                "external_id": dep.external_id,
                "state": "active",
                "reason": "quota",
                "effective_at": now.isoformat(),
            },
            user.id,
        )
        resumed += 1
    db.session.flush()
    return resumed

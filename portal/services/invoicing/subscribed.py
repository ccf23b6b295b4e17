"""What a period invoice bills subscribers: the plan fee for the next period, in advance,
and (hybrid) the overage of the period that ended, in arrears; and the renewal of the
subscriptions whose period ends with it (a scheduled downgrade or cancellation takes effect
then). Read from the subscription tables; the rules for changing plans live in
services/subscriptions, which builds on this package.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy import ColumnElement, SQLColumnExpression, func, select, update

from ...db import ids_in
from ...extensions import db
from ...models import (
    BillingMode,
    ChangeKind,
    ChangeStatus,
    DeploymentInterval,
    PlanVersion,
    Subscription,
    SubscriptionChange,
    SubscriptionStatus,
    User,
)
from .. import calendar, events
from ..metering import catalog
from ..metering.costs import Usage, month_ms
from .lines import LimitStep, LineDraft, Segment, excess_milli_seconds, fee_line, overage_line

RESOURCES = ("cpu", "memory", "storage")
HYBRID_USAGE = frozenset({"instance", "ip"})
UNLIMITED = 2**62


def installation_mode() -> BillingMode:
    return BillingMode(current_app.config["BILLING"].billing_mode)


def mode_of(override: str | None) -> BillingMode:
    """A user's billing mode: an admin's override, else the installation's billingMode."""
    return BillingMode(override) if override else installation_mode()


def period_after(end: datetime, interval: str) -> tuple[datetime, datetime]:
    """The subscription period that starts at ``end`` (an invoice-day boundary)."""
    if interval == "year":
        return end, end.replace(year=end.year + 1)
    return calendar.period_containing(end, end.day)


def subscription_period(at: datetime, interval: str) -> tuple[datetime, datetime]:
    """The period a subscription started at ``at`` runs in: the billing period containing
    it, or for an annual plan the twelve billing periods from that one's start."""
    start, end = calendar.period_containing(at, calendar.invoice_day())
    if interval == "year":
        end = start.replace(year=start.year + 1)
    return start, end


def period_label(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%d} to {calendar.last_day(end):%Y-%m-%d}"


@dataclass
class PlanBilling:
    """One chunk's subscribers for a period: their plan lines, and who bills no usage."""

    lines: dict[int, list[LineDraft]] = field(default_factory=dict)
    # Subscribers' usage resources still billed as usage lines: in hybrid mode what plans do
    # not limit (SKU instance-hours, public IPs); in subscription mode none.
    usage_kept: dict[int, frozenset[str]] = field(default_factory=dict)
    renew: list[Subscription] = field(default_factory=list)


def plan_billing(
    in_chunk: Callable[[SQLColumnExpression[int]], list[ColumnElement[bool]]],
    start: datetime,
    end: datetime,
    currencies: dict[int, str] | None = None,
) -> PlanBilling:
    """The plan lines of the chunk's subscribers for the period [start, end)."""
    out = PlanBilling()
    u = User.__table__.c
    subs = list(
        db.session.scalars(
            select(Subscription).where(
                *in_chunk(Subscription.user_id),
                Subscription.status == str(SubscriptionStatus.ACTIVE),
            )
        )
    )
    if not subs:
        return out
    overrides = dict(
        db.session.execute(
            select(u.id, u.billing_mode).where(u.id.in_([s.user_id for s in subs]))
        ).all()
    )
    billed = [s for s in subs if mode_of(overrides.get(s.user_id)).plans]
    hybrid = [s for s in billed if mode_of(overrides.get(s.user_id)) is BillingMode.HYBRID]
    steps = _limit_steps([s.user_id for s in billed], start, end)
    segments = _segments([s.user_id for s in billed], start, end)
    rates = _rates(start)
    for sub in billed:
        uid = sub.user_id
        lines: list[LineDraft] = []
        out.usage_kept[uid] = HYBRID_USAGE if sub in hybrid else frozenset()
        lines += _overage(
            sub, steps.get(uid, []), segments.get(uid, {}), start, end, rates, sub in hybrid
        )
        if sub.period_end == end and not sub.cancel_at_period_end:
            version = sub.scheduled_version or sub.plan_version
            if version.price_minor:
                nxt = period_after(end, version.interval)
                lines.append(
                    fee_line(
                        version.name,
                        version.price_minor,
                        version.interval,
                        period_label(*nxt),
                        version.currency,
                    )
                )
        if lines:
            out.lines[uid] = lines
    out.renew = [s for s in subs if s.period_end == end]
    return out


def keep_resources(usage: Usage, keep: frozenset[str]) -> Usage | None:
    """Only the ``keep`` resources of a deployment's usage (None when nothing is left)."""
    kept = Usage(
        instance_s=usage.instance_s if "instance" in keep else 0,
        instance_cost=usage.instance_cost if "instance" in keep else 0,
        ip_s=usage.ip_s if "ip" in keep else 0,
        ip_cost=usage.ip_cost if "ip" in keep else 0,
    )
    return kept if (kept.instance_s or kept.instance_cost or kept.ip_s or kept.ip_cost) else None


def chunks_with_subscribers(size: int) -> set[int]:
    """The chunks (of ``size`` user ids) holding a live subscription."""
    return {
        user_id // size
        for user_id in db.session.scalars(
            select(Subscription.user_id).where(
                Subscription.status == str(SubscriptionStatus.ACTIVE)
            )
        )
    }


def _rates(start: datetime) -> dict[str, tuple[int, int]]:
    """Overage rates: (micros per unit, seconds per unit) from the prices in force when the
    period began; storage per GB-month of the period's first month."""
    version = catalog.version_at(start)
    return {
        "cpu": (version.cpu_per_core_hour_micros, 3600),
        "memory": (version.memory_per_gb_hour_micros, 3600),
        "storage": (version.storage_per_gb_month_micros, month_ms(start.year, start.month) // 1000),
    }


Held = list[tuple[int, PlanVersion | None]]


def _limit_steps(user_ids: list[int], start: datetime, end: datetime) -> dict[int, Held]:
    """Per user: the plan versions held over time, from the applied changes (none held
    before the first one)."""
    out: dict[int, Held] = defaultdict(list)
    if not user_ids:
        return out
    for change in db.session.scalars(
        select(SubscriptionChange)
        .where(
            ids_in(SubscriptionChange.user_id, user_ids),
            SubscriptionChange.status == str(ChangeStatus.APPLIED),
            SubscriptionChange.effective_at < end,
        )
        .order_by(
            SubscriptionChange.user_id, SubscriptionChange.effective_at, SubscriptionChange.id
        )
    ):
        at = int(change.effective_at.timestamp()) if change.effective_at else 0
        held = None if change.kind == ChangeKind.CANCEL else change.to_version
        out[change.user_id].append((at, held))
    return out


def _segments(
    user_ids: list[int], start: datetime, end: datetime
) -> dict[int, dict[str, list[Segment]]]:
    """Per user and resource: each interval's allocation over the period."""
    out: dict[int, dict[str, list[Segment]]] = defaultdict(lambda: defaultdict(list))
    if not user_ids:
        return out
    lo, hi = int(start.timestamp()), int(end.timestamp())
    i = DeploymentInterval.__table__.c
    for uid, s, e, cpu, memory, storage in db.session.execute(
        select(
            i.user_id, i.start_epoch, i.end_epoch, i.cpu_milli, i.memory_mgb, i.storage_mgb
        ).where(
            ids_in(i.user_id, user_ids),
            i.start_epoch < hi,
            (i.end_epoch.is_(None)) | (i.end_epoch > lo),
        )
    ).all():
        e = hi if e is None else e
        per = out[uid]
        per["cpu"].append((s, e, cpu))
        per["memory"].append((s, e, memory))
        per["storage"].append((s, e, storage))
    return out


def _overage(
    sub: Subscription,
    held: list[tuple[int, PlanVersion | None]],
    segments: dict[str, list[Segment]],
    start: datetime,
    end: datetime,
    rates: dict[str, tuple[int, int]],
    hybrid: bool,
) -> list[LineDraft]:
    """Allocation above the plan's limits, at the usage rates. Before the subscription
    began nothing was included (the usage is billed); in subscription mode, time on a plan
    is not billed beyond the fee (its limits are quotas instead)."""
    lo, hi = int(start.timestamp()), int(end.timestamp())
    lines = []
    for resource in RESOURCES:
        steps: list[LimitStep] = [(0, 0)]
        for at, version in held:
            if version is None:
                limit = 0
            elif hybrid:
                limit = version.limits()[resource]
            else:
                limit = UNLIMITED
            steps.append((at, limit))
        excess = excess_milli_seconds(segments.get(resource, []), steps, lo, hi)
        rate, unit_seconds = rates[resource]
        line = overage_line(resource, excess, rate, unit_seconds, sub.plan_version.currency)
        if line is not None:
            lines.append(line)
    return lines


def renew(subs: list[Subscription], end: datetime) -> None:
    """The subscriptions whose period ends at ``end`` start their next one: a scheduled
    downgrade takes effect, a cancellation ends the subscription. Set-based (one UPDATE per
    outcome), conditional on the period end, so a second run changes nothing."""
    if not subs:
        return
    changed: list[tuple[str, str, dict[str, object], int | None]] = []
    groups: dict[tuple[str, datetime, datetime], list[int]] = defaultdict(list)
    for sub in subs:
        version = sub.scheduled_version or sub.plan_version
        nxt_start, nxt_end = period_after(end, version.interval)
        canceled = sub.cancel_at_period_end
        groups[("canceled" if canceled else sub.status, nxt_start, nxt_end)].append(sub.id)
        if canceled or sub.scheduled_version_id:
            changed.append(
                (
                    "billing.subscription.changed",
                    f"subscription:{sub.id}:renewal:{end.isoformat()}",
                    {
                        "user_id": sub.user_id,
                        "plan": None if canceled else version.code,
                        "previous_plan": sub.plan_version.code,
                        "effective_at": end.astimezone(UTC).isoformat(),
                    },
                    sub.user_id,
                )
            )
    s = Subscription.__table__.c
    for (status, nxt_start, nxt_end), ids in groups.items():
        db.session.execute(
            update(Subscription.__table__)
            .where(ids_in(s.id, ids), s.period_end == end)
            .values(
                plan_version_id=func.coalesce(s.scheduled_version_id, s.plan_version_id),
                scheduled_version_id=None,
                status=status,
                period_start=nxt_start,
                period_end=nxt_end,
                canceled_at=end if status == SubscriptionStatus.CANCELED else None,
                cancel_at_period_end=False,
                revision=s.revision + 1,
            )
        )
    c = SubscriptionChange.__table__.c
    db.session.execute(
        update(SubscriptionChange.__table__)
        .where(
            ids_in(c.subscription_id, [sub.id for sub in subs]),
            c.status == str(ChangeStatus.SCHEDULED),
        )
        .values(status=str(ChangeStatus.APPLIED), effective_at=end)
    )
    for sub in subs:
        db.session.expire(sub)
    events.record_many(changed)

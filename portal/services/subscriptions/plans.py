"""Plans: from the ``subscriptionPlans`` setting and the admin page, versioned like prices.

A change of price or limits is a new version from a date; subscribers keep the version they
hold until they change plan. A retired plan is offered to no one new. The setting's plans
are created, or given a new version from now when the setting changes, the first time plans
are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ...config import PLAN_ID_CHARS, PLAN_INTERVALS, PlanSetting
from ...errors import Conflict, NotFound, ValidationFailed
from ...extensions import db
from ...models import Plan, PlanVersion, User, utcnow
from ...money import AmountError, Money
from .. import audit
from ..metering.catalog import BEGINNING, to_milli

MAX_NAME = 100


@dataclass(frozen=True)
class PlanInput:
    """What an admin gives for a plan or a new version (exact decimals, whole units)."""

    name: str
    price: Decimal | str
    interval: str
    cpu_limit: Decimal | str
    memory_limit: Decimal | str
    storage_limit: Decimal | str


def _setting_json(p: PlanSetting) -> dict[str, str]:
    return {
        "name": p.name,
        "price": str(p.price),
        "interval": p.interval,
        "cpu_limit": str(p.cpu_limit),
        "memory_limit": str(p.memory_limit),
        "storage_limit": str(p.storage_limit),
    }


def ensure_plans(now: datetime | None = None) -> None:
    """The setting's plans exist, each with a version matching what the setting says."""
    settings = current_app.config["BILLING"].subscription_plans
    if not settings:
        return
    now = now or utcnow()
    try:
        with db.session.begin_nested():
            _sync(settings, now)
    except IntegrityError:
        # Another transaction wrote the same plans first (two processes, the first read of
        # plans after a start): theirs are the ones, once it has committed.
        db.session.expire_all()
        with db.session.begin_nested():
            _sync(settings, now)


def _sync(settings: tuple[PlanSetting, ...], now: datetime) -> None:
    existing = {p.code: p for p in db.session.scalars(select(Plan))}
    for position, setting in enumerate(settings):
        wanted = _setting_json(setting)
        plan = existing.get(setting.id)
        if plan is not None and plan.settings == wanted:
            continue
        values = _values(PlanInput(**{k: v for k, v in wanted.items()}))
        if plan is None:
            plan = Plan(code=setting.id, position=position, settings=wanted)
            db.session.add(plan)
            db.session.flush()
            _add_version(plan, values, BEGINNING, None)
        else:
            plan.settings = wanted
            _add_version(plan, values, now, None)
    db.session.flush()


def _values(data: PlanInput) -> dict:
    name = (data.name or "").strip()
    if not name:
        raise ValidationFailed.field("name", "is required")
    if len(name) > MAX_NAME:
        raise ValidationFailed.field("name", f"must be at most {MAX_NAME} characters")
    if data.interval not in PLAN_INTERVALS:
        raise ValidationFailed.field("interval", "must be month or year")
    currency = current_app.config["CURRENCY"]
    try:
        price = Money.from_decimal(data.price, currency)
    except (AmountError, TypeError) as exc:
        raise ValidationFailed.field("price", str(exc)) from None
    if price.amount_minor < 0:
        raise ValidationFailed.field("price", "must not be negative")
    if price.amount_minor > 100_000_000_000:
        raise ValidationFailed.field("price", "must be at most 1000000000")
    limits = {}
    for field in ("cpu_limit", "memory_limit", "storage_limit"):
        limits[field] = to_milli(getattr(data, field), field)
        if limits[field] > 1_000_000_000:
            raise ValidationFailed.field(field, "must be at most 1000000")
    return {
        "name": name,
        "currency": currency,
        "price_minor": price.amount_minor,
        "interval": data.interval,
        "cpu_limit_milli": limits["cpu_limit"],
        "memory_limit_mgb": limits["memory_limit"],
        "storage_limit_mgb": limits["storage_limit"],
    }


def _add_version(
    plan: Plan, values: dict, effective_from: datetime, by: User | None
) -> PlanVersion:
    last = db.session.scalar(
        select(func.max(PlanVersion.version)).where(PlanVersion.plan_id == plan.id)
    )
    version = PlanVersion(
        plan_id=plan.id,
        version=(last or 0) + 1,
        effective_from=effective_from,
        created_by_id=by.id if by else None,
        **values,
    )
    db.session.add(version)
    db.session.flush()
    db.session.expire(plan, ["versions"])
    return version


def version_at(plan: Plan, at: datetime) -> PlanVersion | None:
    """The plan's version in force at ``at``."""
    return db.session.scalar(
        select(PlanVersion)
        .where(PlanVersion.plan_id == plan.id, PlanVersion.effective_from <= at)
        .order_by(PlanVersion.effective_from.desc())
        .limit(1)
    )


@dataclass(frozen=True)
class Offer:
    plan: Plan
    version: PlanVersion  # in force now
    scheduled: PlanVersion | None  # a later version already decided


def list_plans(*, include_retired: bool = False, now: datetime | None = None) -> list[Offer]:
    """The plans with the version in force now, cheapest first."""
    ensure_plans(now)
    now = now or utcnow()
    query = select(Plan).order_by(Plan.position, Plan.id)
    if not include_retired:
        query = query.where(Plan.retired_at.is_(None))
    offers = []
    for plan in db.session.scalars(query):
        version = version_at(plan, now)
        if version is None:
            continue
        later = [v for v in plan.versions if v.effective_from > now]
        offers.append(Offer(plan, version, later[0] if later else None))
    offers.sort(key=lambda o: (o.version.price_minor, o.plan.position, o.plan.id))
    return offers


def get_plan(code: object, *, field: str = "plan_id", offered: bool = True) -> Plan:
    """A plan by its id ("pro"); unknown (or, when ``offered``, retired) plans are refused
    on ``field``."""
    ensure_plans()
    plan = (
        db.session.scalar(select(Plan).where(Plan.code == str(code)))
        if isinstance(code, str)
        else None
    )
    if plan is None or (offered and plan.retired_at is not None):
        raise ValidationFailed.field(field, "is not a plan on offer")
    return plan


def find_plan(code: str) -> Plan:
    """A plan by its id, retired ones too; NotFound otherwise (a path names it)."""
    ensure_plans()
    plan = db.session.scalar(select(Plan).where(Plan.code == code))
    if plan is None:
        raise NotFound("no such plan")
    return plan


def _check_code(code: object) -> str:
    if not isinstance(code, str) or not 1 <= len(code) <= 40 or not set(code) <= PLAN_ID_CHARS:
        raise ValidationFailed.field("plan_id", "must be 1 to 40 of a-z, 0-9, - and _")
    return code


def create_plan(code: object, data: PlanInput, *, created_by: User | None = None) -> Plan:
    """A new plan, in force from now."""
    ensure_plans()
    code = _check_code(code)
    values = _values(data)
    if db.session.scalar(select(Plan).where(Plan.code == code)) is not None:
        raise Conflict("a plan with this id exists", fields={"plan_id": "is taken"})
    position = (db.session.scalar(select(func.max(Plan.position))) or 0) + 1
    plan = Plan(code=code, position=position)
    db.session.add(plan)
    db.session.flush()
    version = _add_version(plan, values, utcnow(), created_by)
    audit.record(
        "plan.created",
        "plan",
        plan.id,
        actor=created_by,
        after={"plan_id": code, **_audit_values(version)},
    )
    return plan


def add_version(
    plan: Plan, data: PlanInput, effective_from: datetime, *, created_by: User | None = None
) -> PlanVersion:
    """A new version of the plan from ``effective_from`` (now or later, never earlier)."""
    values = _values(data)
    if effective_from.tzinfo is None:
        effective_from = effective_from.replace(tzinfo=UTC)
    now = utcnow()
    if effective_from < now.replace(hour=0, minute=0, second=0, microsecond=0):
        raise ValidationFailed.field("effective_from", "must not be in the past")
    effective_from = max(effective_from, now)
    if any(v.effective_from == effective_from for v in plan.versions):
        raise Conflict("a version starts then", fields={"effective_from": "is taken"})
    before = version_at(plan, now)
    version = _add_version(plan, values, effective_from, created_by)
    audit.record(
        "plan.versioned",
        "plan",
        plan.id,
        actor=created_by,
        before=_audit_values(before) if before else None,
        after={"effective_from": effective_from.isoformat(), **_audit_values(version)},
    )
    return version


def retire_plan(plan: Plan, *, retired_by: User | None = None) -> Plan:
    """Offered to no one new; its subscribers keep it until they change plan."""
    if plan.retired_at is None:
        plan.retired_at = utcnow()
        audit.record(
            "plan.retired", "plan", plan.id, actor=retired_by, after={"plan_id": plan.code}
        )
        db.session.flush()
    return plan


def _audit_values(v: PlanVersion) -> dict:
    return {
        "version": v.version,
        "name": v.name,
        "price_minor": v.price_minor,
        "currency": v.currency,
        "interval": v.interval,
        "cpu_limit_milli": v.cpu_limit_milli,
        "memory_limit_mgb": v.memory_limit_mgb,
        "storage_limit_mgb": v.storage_limit_mgb,
    }

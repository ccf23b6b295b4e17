"""Deployments as the platform reports them: create, resize, change state, delete, heartbeat.

Every change closes the open interval at its effective time and opens the next one with
the quantities the new state bills, at the rates of the deployment's own price version.
A change that takes effect before the chunk's metered-through mark has its already-metered
days metered again by a job after the change commits (rollups.backfill_later), so a
report dated in the past costs the request no more than one in the present.

External ids are 1 to 128 ASCII letters, digits and ``. _ : -`` starting with a letter or
digit: every id can be put in a URL path segment as it is, so every deployment can be
read, changed and ended through the API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import lazyload

from ...errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from ...extensions import db
from ...models import (
    Deployment,
    DeploymentInterval,
    DeploymentKind,
    DeploymentState,
    PriceVersion,
    User,
    utcnow,
)
from . import catalog, rollups, totals

S = DeploymentState
TRANSITIONS: dict[S, frozenset[S]] = {
    S.PENDING: frozenset({S.ACTIVE, S.FAILED, S.TERMINATED}),
    S.ACTIVE: frozenset({S.SUSPENDED, S.REMOVING, S.TERMINATED}),
    S.SUSPENDED: frozenset({S.ACTIVE, S.REMOVING, S.TERMINATED}),
    S.REMOVING: frozenset({S.ACTIVE, S.REMOVED, S.TERMINATED}),
    S.FAILED: frozenset({S.TERMINATED}),
    S.REMOVED: frozenset(),
    S.TERMINATED: frozenset(),
}
# What each state bills: everything while running; the disk while stopped or awaiting
# deletion; nothing before it starts or after it is gone.
BILLS_ALL = frozenset({S.ACTIVE})
BILLS_STORAGE = frozenset({S.SUSPENDED, S.REMOVING})
MAX_CLOCK_SKEW = timedelta(minutes=5)
EXTERNAL_ID_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
LABEL_KEY_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,62}$")
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_NAME = 200
# Sizes: the largest keep a day's exact cost numerator (seconds x thousandths x micros)
# inside a 64-bit integer at rates up to 1.00 a unit-hour.
MAX_SIZE = {"cpu_cores": 1024, "memory_gb": 65536, "storage_gb": 100_000}


@dataclass(frozen=True)
class Spec:
    cpu_milli: int
    memory_mgb: int
    storage_mgb: int
    public_ip: bool
    sku_code: str | None = None


def _now() -> datetime:
    return utcnow().replace(microsecond=0)


def _when(value: datetime | None, field: str, now: datetime) -> datetime:
    if value is None:
        return now
    value = value.replace(microsecond=0)
    if value > now + MAX_CLOCK_SKEW:
        raise ValidationFailed.field(field, "must not be in the future")
    return value


def _within_backdate(
    value: datetime, field: str, now: datetime, max_backdate: timedelta | None
) -> None:
    """With ``max_backdate`` (what the platform may report through the API), a change may
    reach no further back than that. A repeat of a recorded change is checked before this,
    so a retry answers the same later too."""
    if max_backdate is not None and value < now - max_backdate:
        raise ValidationFailed.field(
            field, f"must not be more than {max_backdate.days} days in the past"
        )


def _milli(value: object, field: str) -> int:
    milli = catalog.to_milli(value, field)
    if milli > MAX_SIZE[field] * 1000:
        raise ValidationFailed.field(field, f"must be at most {MAX_SIZE[field]}")
    return milli


def check_external_id(external_id: object) -> str:
    if not isinstance(external_id, str) or not EXTERNAL_ID_RULE.fullmatch(external_id):
        raise ValidationFailed.field(
            "external_id",
            "must be 1 to 128 letters, digits and . _ : - starting with a letter or digit",
        )
    return external_id


def check_labels(labels: object) -> dict[str, str]:
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValidationFailed.field("labels", "must be an object of strings")
    if len(labels) > MAX_LABELS:
        raise ValidationFailed.field("labels", f"must have at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY_RULE.fullmatch(key):
            raise ValidationFailed.field(
                "labels",
                "keys must be 1 to 63 letters, digits and "
                ". _ / - : starting with a letter or digit",
            )
        if len(value) > MAX_LABEL_VALUE:
            raise ValidationFailed.field(
                "labels", f"{key} must be at most {MAX_LABEL_VALUE} characters"
            )
    return labels


def get_for_owner(owner: User | None, external_id: str) -> Deployment:
    """The one owner-scoped deployment lookup, by the platform's id: ``owner``'s deployment
    (None: any, for the platform and admins); another user's is NotFound."""
    query = select(Deployment).where(Deployment.external_id == external_id)
    if owner is not None:
        query = query.where(Deployment.user_id == owner.id)
    deployment = db.session.scalar(query)
    if deployment is None:
        raise NotFound(f"no deployment {external_id!r}")
    return deployment


def resolve_spec(
    version: PriceVersion,
    *,
    kind: str,
    sku: str | None,
    cpu_cores=None,
    memory_gb=None,
    storage_gb=None,
    public_ip=None,
) -> Spec:
    if sku:
        price = version.sku(sku)
        if price is None:
            raise ValidationFailed.field("sku", f"unknown SKU {sku!r}")
        if kind != price.kind and kind != DeploymentKind.SESSION:
            raise ValidationFailed.field("sku", f"{sku} is a {price.kind} size, not {kind}")
        return Spec(price.cpu_milli, price.memory_mgb, price.storage_mgb, price.public_ip, sku)
    if cpu_cores is None and memory_gb is None and storage_gb is None:
        raise ValidationFailed(
            "give a sku or cpu_cores/memory_gb/storage_gb",
            fields={"sku": "or cpu_cores, memory_gb, storage_gb is required"},
        )
    return Spec(
        _milli(cpu_cores or 0, "cpu_cores"),
        _milli(memory_gb or 0, "memory_gb"),
        _milli(storage_gb or 0, "storage_gb"),
        bool(public_ip),
        None,
    )


def _interval_values(deployment: Deployment, state: S, version: PriceVersion) -> dict:
    """The billable shape of ``state`` at the deployment's snapshotted prices."""
    values = dict(
        state=str(state),
        cpu_milli=0,
        memory_mgb=0,
        storage_mgb=0,
        instances=0,
        public_ips=0,
        cpu_rate_micros=0,
        memory_rate_micros=0,
        storage_rate_micros=version.storage_per_gb_month_micros,
        instance_rate_micros=0,
        ip_rate_micros=0,
    )
    if state in BILLS_ALL:
        if deployment.sku_code:
            price = version.sku(deployment.sku_code)
            if price is None:  # it was resolved in this version when the deployment was made
                raise ValueError(
                    f"deployment {deployment.id}: SKU {deployment.sku_code} is not in "
                    f"price version {version.id}"
                )
            values.update(instances=1, instance_rate_micros=price.hourly_micros)
        else:
            values.update(
                cpu_milli=deployment.cpu_milli,
                memory_mgb=deployment.memory_mgb,
                storage_mgb=deployment.storage_mgb,
                public_ips=1 if deployment.public_ip else 0,
                cpu_rate_micros=version.cpu_per_core_hour_micros,
                memory_rate_micros=version.memory_per_gb_hour_micros,
                ip_rate_micros=version.public_ip_per_hour_micros,
            )
    elif state in BILLS_STORAGE:
        values.update(storage_mgb=deployment.storage_mgb)
    return values


def _open_interval(deployment: Deployment) -> DeploymentInterval | None:
    return db.session.scalar(
        select(DeploymentInterval).where(
            DeploymentInterval.deployment_id == deployment.id,
            DeploymentInterval.end_epoch.is_(None),
        )
    )


def _last_change(deployment: Deployment) -> datetime | None:
    start = db.session.scalar(
        select(DeploymentInterval.start_epoch)
        .where(DeploymentInterval.deployment_id == deployment.id)
        .order_by(DeploymentInterval.start_epoch.desc())
        .limit(1)
    )
    return None if start is None else rollups.from_epoch(start)


def _reshape(deployment: Deployment, at: datetime, state: S) -> None:
    """Close the open interval at ``at`` and open one for ``state`` (if it bills)."""
    version = db.session.get_one(PriceVersion, deployment.price_version_id)
    at_epoch = rollups.epoch(at)
    # One lock order per chunk: its mark, then its running costs' row. backfill_later locks
    # the mark anyway; taking it first means no transaction holds the row while it waits
    # for the mark, so none can deadlock with one that holds the mark (a metering run).
    chunk = rollups.chunk_of(deployment.user_id)
    rollups.lock_mark(chunk)
    change = dict.fromkeys(totals.HOURLY, 0)
    current = _open_interval(deployment)
    if current is not None:
        for column, cost in totals.hourly(current).items():
            change[column] -= cost
        if current.start_epoch == at_epoch:
            db.session.delete(current)  # superseded at the instant it began
        else:
            current.end_epoch = at_epoch
        db.session.flush()
    if state in BILLS_ALL or state in BILLS_STORAGE:
        interval = DeploymentInterval(
            deployment_id=deployment.id,
            user_id=deployment.user_id,
            start_epoch=at_epoch,
            end_epoch=None,
            **_interval_values(deployment, state, version),
        )
        db.session.add(interval)
        for column, cost in totals.hourly(interval).items():
            change[column] += cost
    totals.add_running(deployment.user_id, chunk, change)
    deployment.state = str(state)
    deployment.updated_at = utcnow()


def _check_not_before_last_change(deployment: Deployment, at: datetime, field: str) -> None:
    last = _last_change(deployment)
    if last is not None and at < last:
        raise ValidationFailed.field(
            field, f"must not be before the deployment's last change ({last:%Y-%m-%dT%H:%M:%SZ})"
        )
    if deployment.started_at is not None and at < deployment.started_at:
        raise ValidationFailed.field(field, "must not be before the deployment started")


def _content(deployment: Deployment) -> dict:
    return {
        "user_id": deployment.user_id,
        "kind": deployment.kind,
        "sku": deployment.sku_code,
        "cpu_milli": deployment.cpu_milli,
        "memory_mgb": deployment.memory_mgb,
        "storage_mgb": deployment.storage_mgb,
        "public_ip": deployment.public_ip,
        "name": deployment.name,
        "labels": deployment.labels or {},
    }


def create_deployment(
    *,
    external_id: str,
    user: User,
    kind: str,
    sku: str | None = None,
    cpu_cores=None,
    memory_gb=None,
    storage_gb=None,
    public_ip=None,
    name: str = "",
    labels: dict | None = None,
    state: str = "active",
    started_at: datetime | None = None,
    max_backdate: timedelta | None = None,
) -> tuple[Deployment, bool]:
    """Record a deployment (idempotent by external id). Returns (deployment, created).
    ``max_backdate`` bounds how far back ``started_at`` may be."""
    check_external_id(external_id)
    name = (name or "").strip()
    if len(name) > MAX_NAME:
        raise ValidationFailed.field("name", f"must be at most {MAX_NAME} characters")
    try:
        kind = DeploymentKind(kind)
    except ValueError:
        raise ValidationFailed.field("kind", "must be vm, k8s or session") from None
    if state not in (S.PENDING, S.ACTIVE):
        raise ValidationFailed.field("state", "must be pending or active")
    labels = check_labels(labels or {})
    now = _now()
    start = _when(started_at, "started_at", now)
    version = catalog.version_at(start)
    spec = resolve_spec(
        version,
        kind=kind,
        sku=sku,
        cpu_cores=cpu_cores,
        memory_gb=memory_gb,
        storage_gb=storage_gb,
        public_ip=public_ip,
    )

    existing = db.session.scalar(select(Deployment).where(Deployment.external_id == external_id))
    wanted = {
        "user_id": user.id,
        "kind": str(kind),
        "sku": spec.sku_code,
        "cpu_milli": spec.cpu_milli,
        "memory_mgb": spec.memory_mgb,
        "storage_mgb": spec.storage_mgb,
        "public_ip": spec.public_ip,
        "name": name,
        "labels": labels,
    }
    if existing is not None:
        if _content(existing) != wanted or (
            started_at is not None and existing.started_at != start
        ):
            raise Conflict(f"deployment {external_id!r} exists with different content")
        return existing, False
    _within_backdate(start, "started_at", now, max_backdate)

    deployment = Deployment(
        external_id=external_id,
        user_id=user.id,
        kind=str(kind),
        name=wanted["name"],
        labels=labels,
        state=str(S.PENDING),
        price_version_id=version.id,
        sku_code=spec.sku_code,
        cpu_milli=spec.cpu_milli,
        memory_mgb=spec.memory_mgb,
        storage_mgb=spec.storage_mgb,
        public_ip=spec.public_ip,
        started_at=start,
    )
    db.session.add(deployment)
    db.session.flush()
    rollups.ensure_mark(user.id, start)
    if state == S.ACTIVE:
        _reshape(deployment, start, S.ACTIVE)
        rollups.backfill_later(deployment, start)
    return deployment, True


def update_deployment(
    deployment: Deployment,
    *,
    cpu_cores=None,
    memory_gb=None,
    storage_gb=None,
    sku: str | None = None,
    state: str | None = None,
    effective_at: datetime | None = None,
    max_backdate: timedelta | None = None,
) -> Deployment:
    """Resize and/or change state at ``effective_at`` (default now), at the deployment's
    own price version."""
    now = _now()
    at = _when(effective_at, "effective_at", now)
    current = S(deployment.state)
    target = current
    if state is not None:
        try:
            target = S(state)
        except ValueError:
            raise ValidationFailed.field("state", "is not a deployment state") from None
        if target != current and target not in TRANSITIONS[current]:
            raise InvalidTransition(
                f"a {current} deployment cannot become {target}",
                fields={"state": f"cannot go from {current} to {target}"},
            )
    resize = any(v is not None for v in (cpu_cores, memory_gb, storage_gb, sku))
    if resize and current in (S.FAILED, S.REMOVED, S.TERMINATED):
        raise InvalidTransition(f"a {current} deployment cannot be resized")
    if not resize and target == current:
        return deployment  # nothing to change
    _within_backdate(at, "effective_at", now, max_backdate)
    _check_not_before_last_change(deployment, at, "effective_at")
    invoiced = rollups.invoiced_through(deployment.user_id)
    if invoiced is not None and at < invoiced:
        raise ValidationFailed.field(
            "effective_at", f"is inside an invoiced period (invoiced through {invoiced:%Y-%m-%d})"
        )
    if resize:
        _apply_resize(
            deployment, sku=sku, cpu_cores=cpu_cores, memory_gb=memory_gb, storage_gb=storage_gb
        )
    _reshape(deployment, at, target)
    if target in (S.REMOVED, S.TERMINATED, S.FAILED):
        deployment.ended_at = at
    rollups.backfill_later(deployment, at)
    return deployment


def _apply_resize(deployment: Deployment, *, sku, cpu_cores, memory_gb, storage_gb) -> None:
    """A new size at the deployment's own price version (never the current catalog's)."""
    version = db.session.get_one(PriceVersion, deployment.price_version_id)
    if sku is not None:
        spec = resolve_spec(version, kind=deployment.kind, sku=sku)
    elif deployment.sku_code:
        raise ValidationFailed.field("sku", "a deployment sized by SKU is resized to another sku")
    else:

        def milli(value, current: int, field: str) -> int:
            return current if value is None else _milli(value, field)

        spec = Spec(
            milli(cpu_cores, deployment.cpu_milli, "cpu_cores"),
            milli(memory_gb, deployment.memory_mgb, "memory_gb"),
            milli(storage_gb, deployment.storage_mgb, "storage_gb"),
            deployment.public_ip,
        )
    deployment.cpu_milli, deployment.memory_mgb = spec.cpu_milli, spec.memory_mgb
    deployment.storage_mgb, deployment.sku_code = spec.storage_mgb, spec.sku_code


def delete_deployment(
    deployment: Deployment,
    *,
    ended_at: datetime | None = None,
    max_backdate: timedelta | None = None,
) -> Deployment:
    """The platform deleted it. Billed up to ``ended_at``; kept as history. Idempotent."""
    now = _now()
    at = _when(ended_at, "ended_at", now)
    if deployment.state == S.TERMINATED:
        if ended_at is not None and deployment.ended_at != at:
            raise Conflict(
                "the deployment was already deleted at another time",
                fields={"ended_at": "differs from the recorded deletion"},
            )
        return deployment
    if deployment.state == S.REMOVED:
        return deployment
    _within_backdate(at, "ended_at", now, max_backdate)
    _check_not_before_last_change(deployment, at, "ended_at")
    _reshape(deployment, at, S.TERMINATED)
    deployment.ended_at = at
    rollups.backfill_later(deployment, at)
    return deployment


def heartbeat(deployment: Deployment) -> Deployment:
    if deployment.state in (S.TERMINATED, S.REMOVED, S.FAILED):
        raise InvalidTransition(f"a {deployment.state} deployment sends no heartbeats")
    deployment.last_heartbeat_at = _now()
    return deployment


def end_silent_sessions(timeout: timedelta, now: datetime | None = None) -> int:
    """Sessions that stopped sending heartbeats are over: end them at their last heartbeat."""
    now = now or _now()
    silent = list(
        db.session.scalars(
            select(Deployment).where(
                Deployment.kind == DeploymentKind.SESSION,
                Deployment.state.in_([S.ACTIVE, S.SUSPENDED]),
                Deployment.last_heartbeat_at.is_not(None),
                Deployment.last_heartbeat_at < now - timeout,
            )
        )
    )
    for deployment in silent:
        heartbeat = deployment.last_heartbeat_at
        if heartbeat is None:  # (the query selects deployments with one)
            continue
        delete_deployment(
            deployment, ended_at=max(heartbeat, _last_change(deployment) or heartbeat)
        )
    return len(silent)


def list_deployments(user: User, *, include_ended: bool = True) -> list[Deployment]:
    """The user's deployments, newest first, without their intervals (``intervals`` loads
    on access only): what lists and usage reports show."""
    query = (
        select(Deployment)
        .where(Deployment.user_id == user.id)
        .options(lazyload(Deployment.intervals))
    )
    if not include_ended:
        query = query.where(Deployment.state.not_in([S.TERMINATED, S.REMOVED, S.FAILED]))
    return list(
        db.session.scalars(query.order_by(Deployment.created_at.desc(), Deployment.id.desc()))
    )

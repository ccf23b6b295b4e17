"""The price catalog: which rates and SKUs are in force, and price changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.orm import lazyload

from ...errors import NotFound, ValidationFailed
from ...extensions import db
from ...models import PriceVersion, SkuPrice, User, utcnow
from ...money import AmountError, decimal_to_micros
from .. import audit

# The first version is in force from the start of time, so any past instant has a price.
BEGINNING = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SkuSpec:
    code: str
    kind: str
    name: str
    cpu_cores: str
    memory_gb: str
    storage_gb: str
    public_ip: bool
    hourly: str  # major units per hour


def _sizes(kind: str, label: str, specs) -> list[SkuSpec]:
    out = []
    for size, cpu, mem, disk, price, ip_price in specs:
        out.append(SkuSpec(f"{kind}-{size}", kind, f"{label} {size}", cpu, mem, disk, False, price))
        out.append(
            SkuSpec(
                f"{kind}-{size}-ip",
                kind,
                f"{label} {size} + public IP",
                cpu,
                mem,
                disk,
                True,
                ip_price,
            )
        )
    return out


# Twelve sizes: VM and Kubernetes small/medium/large, with and without a public IP. Prices
# follow the default resource rates (0.05/core-hour, 0.01/GB-hour, storage, IP 0.005/hour).
DEFAULT_SKUS: tuple[SkuSpec, ...] = tuple(
    _sizes(
        "vm",
        "VM",
        [
            ("small", "1", "2", "20", "0.0730", "0.0780"),
            ("medium", "2", "4", "40", "0.1460", "0.1510"),
            ("large", "4", "8", "80", "0.2920", "0.2970"),
        ],
    )
    + _sizes(
        "k8s",
        "Kubernetes",
        [
            ("small", "2", "4", "20", "0.1430", "0.1480"),
            ("medium", "4", "8", "50", "0.2870", "0.2920"),
            ("large", "8", "16", "100", "0.5740", "0.5790"),
        ],
    )
)

DEFAULT_IP_PER_HOUR = Decimal("0.005")


def to_milli(value: object, field: str) -> int:
    """A quantity in whole units (cores, GB) as integer thousandths, exactly."""
    if isinstance(value, bool) or value is None:
        raise ValidationFailed.field(field, "must be a number")
    try:
        amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
        if isinstance(value, float):
            raise TypeError
    except Exception:
        raise ValidationFailed.field(field, "must be a number") from None
    if not amount.is_finite():
        raise ValidationFailed.field(field, "must be a number")
    if amount < 0:
        raise ValidationFailed.field(field, "must not be negative")
    milli = amount.scaleb(3)
    if milli != milli.to_integral_value():
        raise ValidationFailed.field(field, "must have at most 3 decimal places")
    return int(milli)


def _rate_micros(value: object, field: str) -> int:
    try:
        micros = decimal_to_micros(value)
    except (AmountError, TypeError):
        raise ValidationFailed.field(
            field, "must be a number with at most 6 decimal places"
        ) from None
    if micros < 0:
        raise ValidationFailed.field(field, "must not be negative")
    return micros


def ensure_catalog() -> PriceVersion:
    """Version 1 from the configured computeRates and the default SKUs, if there is none."""
    existing = db.session.scalar(select(PriceVersion).order_by(PriceVersion.version))
    if existing is not None:
        return existing
    rates = current_app.config["BILLING"].compute_rates
    version = PriceVersion(
        version=1,
        effective_from=BEGINNING,
        currency=current_app.config["CURRENCY"],
        cpu_per_core_hour_micros=decimal_to_micros(rates["cpu_per_core_hour"]),
        memory_per_gb_hour_micros=decimal_to_micros(rates["memory_per_gb_hour"]),
        storage_per_gb_month_micros=decimal_to_micros(rates["storage_per_gb_month"]),
        public_ip_per_hour_micros=decimal_to_micros(DEFAULT_IP_PER_HOUR),
        note="Initial prices from the configuration",
    )
    for position, spec in enumerate(DEFAULT_SKUS):
        version.skus.append(
            SkuPrice(
                code=spec.code,
                kind=spec.kind,
                name=spec.name,
                position=position,
                cpu_milli=to_milli(spec.cpu_cores, "cpu"),
                memory_mgb=to_milli(spec.memory_gb, "mem"),
                storage_mgb=to_milli(spec.storage_gb, "disk"),
                public_ip=spec.public_ip,
                hourly_micros=decimal_to_micros(spec.hourly),
            )
        )
    db.session.add(version)
    db.session.flush()
    return version


def version_at(at: datetime, *, skus: bool = True) -> PriceVersion:
    """The price version in force at ``at``. ``skus=False``: its SKUs are loaded only if
    read (one query fewer for a caller pricing by cores, memory and storage)."""
    stmt = (
        select(PriceVersion)
        .where(PriceVersion.effective_from <= at)
        .order_by(PriceVersion.effective_from.desc())
        .limit(1)
    )
    if not skus:
        stmt = stmt.options(lazyload(PriceVersion.skus))
    version = db.session.scalar(stmt)
    return version or ensure_catalog()


def list_versions() -> list[PriceVersion]:
    return list(db.session.scalars(select(PriceVersion).order_by(PriceVersion.version.desc())))


def get_version(version_id: int) -> PriceVersion:
    version = db.session.get(PriceVersion, version_id)
    if version is None:
        raise NotFound("no such price version")
    return version


@dataclass(frozen=True)
class PriceChange:
    effective_from: datetime
    cpu_per_core_hour: object
    memory_per_gb_hour: object
    storage_per_gb_month: object
    public_ip_per_hour: object
    sku_hourly: dict[str, object]  # code -> hourly price (major units)
    note: str = ""


def create_version(
    change: PriceChange, *, created_by: User | None = None, now: datetime | None = None
) -> PriceVersion:
    """A new price version from ``effective_from`` on; earlier versions stay as they are.
    SKUs not named in ``sku_hourly`` keep their current price."""
    now = now or utcnow()
    if change.effective_from < now.replace(microsecond=0):
        raise ValidationFailed.field("effective_from", "must not be in the past")
    latest = db.session.scalar(select(PriceVersion).order_by(PriceVersion.version.desc()).limit(1))
    if latest is None:
        latest = ensure_catalog()
    if change.effective_from <= latest.effective_from:
        raise ValidationFailed.field(
            "effective_from",
            f"must be after the latest version's start "
            f"({latest.effective_from:%Y-%m-%d %H:%M} UTC)",
        )
    base = version_at(change.effective_from)
    version = PriceVersion(
        version=(db.session.scalar(select(func.max(PriceVersion.version))) or 0) + 1,
        effective_from=change.effective_from.replace(microsecond=0),
        currency=base.currency,
        cpu_per_core_hour_micros=_rate_micros(change.cpu_per_core_hour, "cpu_per_core_hour"),
        memory_per_gb_hour_micros=_rate_micros(change.memory_per_gb_hour, "memory_per_gb_hour"),
        storage_per_gb_month_micros=_rate_micros(
            change.storage_per_gb_month, "storage_per_gb_month"
        ),
        public_ip_per_hour_micros=_rate_micros(change.public_ip_per_hour, "public_ip_per_hour"),
        note=(change.note or "").strip()[:500],
        created_by_id=created_by.id if created_by else None,
    )
    unknown = set(change.sku_hourly) - {s.code for s in base.skus}
    if unknown:
        raise ValidationFailed.field("sku", f"unknown SKU {sorted(unknown)[0]}")
    for sku in base.skus:
        hourly = (
            _rate_micros(change.sku_hourly[sku.code], f"sku_{sku.code}")
            if sku.code in change.sku_hourly
            else sku.hourly_micros
        )
        version.skus.append(
            SkuPrice(
                code=sku.code,
                kind=sku.kind,
                name=sku.name,
                position=sku.position,
                cpu_milli=sku.cpu_milli,
                memory_mgb=sku.memory_mgb,
                storage_mgb=sku.storage_mgb,
                public_ip=sku.public_ip,
                hourly_micros=hourly,
            )
        )
    db.session.add(version)
    db.session.flush()
    audit.record(
        "price_version.created",
        "price_version",
        version.version,
        actor=created_by,
        before={"version": base.version},
        after={
            "version": version.version,
            "effective_from": version.effective_from.isoformat(),
            "currency": version.currency,
            "cpu_per_core_hour_micros": version.cpu_per_core_hour_micros,
            "memory_per_gb_hour_micros": version.memory_per_gb_hour_micros,
            "storage_per_gb_month_micros": version.storage_per_gb_month_micros,
            "public_ip_per_hour_micros": version.public_ip_per_hour_micros,
            "sku_hourly_micros": {s.code: s.hourly_micros for s in version.skus},
            "note": version.note,
        },
    )
    return version

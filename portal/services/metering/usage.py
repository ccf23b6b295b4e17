"""Reading usage: what a user's deployments cost in a billing period, from the rollups.

Costs stay exact until a line is rounded: one line per deployment and resource, from the
same summed columns and the same integer rounding as the invoice's lines (metering.costs).
Every total here is the integer sum of those lines, so the breakdowns by resource and by
deployment add up to the period total, and a closed period's total is its invoice subtotal.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from sqlalchemy import func, select

from ...extensions import db
from ...models import (
    Deployment,
    DeploymentInterval,
    Invoice,
    MeterMark,
    UsageAdjustment,
    UsageDaily,
    User,
    utcnow,
)
from ...money import Money, currency_digits
from . import rollups
from .costs import Usage, micros_to_minor, round_ratio
from .deployments import list_deployments

RESOURCES = ("cpu", "memory", "storage", "instance", "ip")
UNITS = {
    "cpu": "core-hours",
    "memory": "gb-hours",
    "storage": "gb-months",
    "instance": "instance-hours",
    "ip": "ip-hours",
}
LABELS = {
    "cpu": "CPU",
    "memory": "Memory",
    "storage": "Storage",
    "instance": "Instances",
    "ip": "Public IPs",
}


# -- exact costs -----------------------------------------------------------------------------


def month_seconds(day: date) -> int:
    return calendar.monthrange(day.year, day.month)[1] * 86400


def row_costs(row) -> dict[str, Fraction]:
    """Exact micro-unit costs of one rollup row, per resource."""
    return {
        "cpu": Fraction(row.cpu_cost, 3_600_000),
        "memory": Fraction(row.memory_cost, 3_600_000),
        "storage": Fraction(row.storage_cost, 1000 * month_seconds(row.day)),
        "instance": Fraction(row.instance_cost, 3600),
        "ip": Fraction(row.ip_cost, 3600),
    }


def row_quantities(row) -> dict[str, Fraction]:
    """Quantities in their units: core-hours, GB-hours, GB-months, instance-hours, IP-hours."""
    return {
        "cpu": Fraction(row.cpu_ms, 3_600_000),
        "memory": Fraction(row.memory_ms, 3_600_000),
        "storage": Fraction(row.storage_ms, 1000 * month_seconds(row.day)),
        "instance": Fraction(row.instance_s, 3600),
        "ip": Fraction(row.ip_s, 3600),
    }


def round_micros(micros: Fraction, currency: str) -> Money:
    """Exact micro-units to minor units, once, ROUND_HALF_UP, in integers (as invoices)."""
    return Money(micros_to_minor(micros, currency), currency)


def to_decimal(value: Fraction, places: int = 6) -> Decimal:
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


# -- the report ------------------------------------------------------------------------------


@dataclass
class ResourceItem:
    resource_type: str
    quantity: Decimal
    unit: str
    unit_price: Decimal  # per unit, in major units, up to 6 decimals
    total_cost: Money

    @property
    def label(self) -> str:
        return LABELS[self.resource_type]

    @property
    def quantity_text(self) -> str:
        """At most two decimals, with thousands separators: 1,234.57 GB-months."""
        rounded = self.quantity.quantize(Decimal("0.01"))
        if rounded == 0 and self.quantity:
            return f"< 0.01 {self.unit}"
        text = f"{rounded:,.2f}".rstrip("0").rstrip(".")
        return f"{text} {self.unit}"

    @property
    def blended(self) -> bool:
        """Several prices were in force (sizes, price changes): the unit price is an
        average, shown rounded and said to be one."""
        return self.unit_price != self.unit_price.quantize(Decimal("0.0001"))

    @property
    def unit_price_shown(self) -> Decimal:
        return self.unit_price.quantize(Decimal("0.0001")) if self.blended else self.unit_price


@dataclass
class DeploymentCost:
    deployment: Deployment
    total_cost: Money
    lines: dict[str, Money] = field(default_factory=dict)


@dataclass
class UsageReport:
    user: User
    period_start: datetime
    period_end: datetime
    currency: str
    metered_through: datetime | None
    total_cost: Money
    projected_total: Money
    items: list[ResourceItem]
    deployments: list[DeploymentCost]
    daily: list[tuple[date, Money]]

    @property
    def is_current(self) -> bool:
        return self.period_start <= utcnow() < self.period_end

    @property
    def period_last_day(self) -> date:
        return (self.period_end - timedelta(days=1)).date()


def usage_report(
    user: User,
    period_start: datetime,
    period_end: datetime,
    now: datetime | None = None,
    *,
    deployments: Sequence[Deployment] | None = None,
) -> UsageReport:
    """The period's usage from the rollups. ``deployments``: every one of the user's
    deployments, when the caller has them already (else read here, without their
    intervals)."""
    now = now or utcnow()
    currency = user.currency
    rows = list(
        db.session.execute(
            select(UsageDaily).where(
                UsageDaily.user_id == user.id,
                UsageDaily.day >= period_start.date(),
                UsageDaily.day < period_end.date(),
            )
        ).scalars()
    )
    summed: dict[int, Usage] = defaultdict(Usage)
    daily_exact: dict[date, Fraction] = defaultdict(Fraction)
    for row in rows:
        summed[row.deployment_id].add_row(row)
        daily_exact[row.day] += sum(row_costs(row).values(), Fraction(0))
    # Per deployment and resource: (quantity, exact cost in micros, the line in minor units),
    # each line rounded once by the invoice's own arithmetic.
    digits = currency_digits(currency)
    by_deployment: dict[int, dict[str, tuple[Fraction, Fraction, int]]] = {
        dep_id: {
            r: (Fraction(qn, qd), Fraction(cn, cd), round_ratio(cn, cd, digits))
            for r, qn, qd, cn, cd in used.resources()
            if qn or cn
        }
        for dep_id, used in summed.items()
    }
    quantities: dict[str, Fraction] = defaultdict(Fraction)

    if deployments is None:
        deployments = list_deployments(user)
    by_id = {d.id: d for d in deployments}
    costs: list[DeploymentCost] = []
    resource_totals: dict[str, Money] = {r: Money.zero(currency) for r in RESOURCES}
    resource_exact: dict[str, Fraction] = defaultdict(Fraction)
    for dep_id, per_resource in by_deployment.items():
        lines = {r: Money(m, currency) for r, (_, c, m) in per_resource.items() if c}
        for r, (qty, exact, _) in per_resource.items():
            quantities[r] += qty
            resource_exact[r] += exact
        for r, money in lines.items():
            resource_totals[r] += money
        costs.append(
            DeploymentCost(by_id[dep_id], sum(lines.values(), Money.zero(currency)), lines)
        )
    costs.sort(key=lambda c: (-c.total_cost.amount_minor, c.deployment.external_id))
    # In the current period, running deployments with nothing metered yet show too.
    if period_start <= now < period_end:
        listed = {c.deployment.id for c in costs}
        for dep in deployments:
            if dep.id not in listed and dep.state in ("active", "suspended", "pending", "removing"):
                costs.append(DeploymentCost(dep, Money.zero(currency)))

    items = []
    for r in RESOURCES:
        if quantities[r] or resource_exact[r]:
            unit_price = (
                to_decimal(resource_exact[r] / quantities[r] / 1_000_000)
                if quantities[r]
                else Decimal(0)
            )
            items.append(
                ResourceItem(r, to_decimal(quantities[r]), UNITS[r], unit_price, resource_totals[r])
            )
    total = sum((c.total_cost for c in costs), Money.zero(currency))

    days, day = [], period_start.date()
    while day < period_end.date():
        days.append((day, round_micros(daily_exact.get(day, Fraction(0)), currency)))
        day += timedelta(days=1)

    projected = total
    if period_start <= now < period_end:
        mark, burn = _mark_and_burn(user, period_end)
        from_instant = max(mark or now, period_start)
        remaining_hours = Fraction(int((period_end - from_instant).total_seconds()), 3600)
        projected = round_micros(
            sum((c for per in by_deployment.values() for _, c, _ in per.values()), Fraction(0))
            + burn * remaining_hours,
            currency,
        )
    else:
        mark = rollups.metered_through(user.id)
    return UsageReport(
        user, period_start, period_end, currency, mark, total, projected, items, costs, days
    )


@dataclass(frozen=True)
class Carried:
    """Usage of the period reported after it was invoiced, carried to a later invoice (or
    waiting for the next one: ``invoice_id`` None)."""

    invoice_id: int | None
    invoice_number: str | None
    days: int
    amount: Money


def carried_usage(user: User, period_start: datetime, period_end: datetime) -> list[Carried]:
    """The period's late usage and the invoice that carries it."""
    rows = db.session.scalars(
        select(UsageAdjustment).where(
            UsageAdjustment.user_id == user.id,
            UsageAdjustment.day >= period_start.date(),
            UsageAdjustment.day < period_end.date(),
        )
    ).all()
    grouped: dict[int | None, tuple[set[date], Fraction]] = {}
    for row in rows:
        days, exact = grouped.get(row.invoice_id, (set(), Fraction(0)))
        days.add(row.day)
        grouped[row.invoice_id] = (days, exact + sum(row_costs(row).values(), Fraction(0)))
    carrying = [k for k in grouped if k is not None]
    numbers = (
        dict(db.session.execute(select(Invoice.id, Invoice.number).where(Invoice.id.in_(carrying))))
        if carrying
        else {}
    )
    return [
        Carried(
            invoice_id,
            numbers.get(invoice_id) if invoice_id else None,
            len(days),
            round_micros(exact, user.currency),
        )
        for invoice_id, (days, exact) in sorted(grouped.items(), key=lambda kv: kv[0] or 0)
    ]


def _mark_and_burn(user: User, at: datetime) -> tuple[datetime | None, Fraction]:
    """The user's metered-through mark and ``hourly_burn_micros(user, at)``, in one
    statement: the open intervals' costs summed by the database (integers, so exact)."""
    i = DeploymentInterval
    mark = (
        select(MeterMark.metered_through)
        .where(MeterMark.chunk == rollups.chunk_of(user.id))
        .scalar_subquery()
    )
    row = db.session.execute(
        select(
            mark,
            func.sum(i.cpu_milli * i.cpu_rate_micros + i.memory_mgb * i.memory_rate_micros),
            func.sum(i.storage_mgb * i.storage_rate_micros),
            func.sum(i.instances * i.instance_rate_micros + i.public_ips * i.ip_rate_micros),
        ).where(i.user_id == user.id, i.end_epoch.is_(None))
    ).one()
    hours_in_month = Fraction(month_seconds(at.date() - timedelta(days=1)), 3600)
    compute, storage, fixed = (int(v or 0) for v in row[1:])
    return row[0], Fraction(compute, 1000) + Fraction(storage, 1000) / hours_in_month + fixed


def hourly_burn_micros(user: User, at: datetime) -> Fraction:
    """What the user's running deployments cost per hour now (exact micro-units)."""
    hours_in_month = Fraction(month_seconds(at.date() - timedelta(days=1)), 3600)
    burn = Fraction(0)
    for i in db.session.scalars(
        select(DeploymentInterval).where(
            DeploymentInterval.user_id == user.id, DeploymentInterval.end_epoch.is_(None)
        )
    ):
        burn += Fraction(
            i.cpu_milli * i.cpu_rate_micros + i.memory_mgb * i.memory_rate_micros, 1000
        )
        burn += Fraction(i.storage_mgb * i.storage_rate_micros, 1000) / hours_in_month
        burn += i.instances * i.instance_rate_micros + i.public_ips * i.ip_rate_micros
    return burn


@dataclass(frozen=True)
class Bar:
    day: date
    amount: Money
    x: int
    y: int
    height: int


def daily_chart(
    daily: list[tuple[date, Money]], height: int = 120, bar: int = 14, gap: int = 4
) -> dict:
    """Plain numbers for the server-rendered SVG bar chart of the period's days: the bars,
    an amount axis (0, half and the highest day) and a date axis (every 7th day)."""
    top = max((m.amount_minor for _, m in daily), default=0)
    left, bottom, head = 64, 20, 8  # room for the amount labels, the dates, the top label
    bars = []
    for n, (day, money) in enumerate(daily):
        h = (
            0
            if top == 0
            else max(1 if money.amount_minor else 0, money.amount_minor * height // top)
        )
        bars.append(Bar(day, money, left + n * (bar + gap), head + height - h, h))
    currency = daily[0][1].currency if daily else "USD"
    y_ticks = [
        (head + height - height * part // 2, Money(top * part // 2, currency)) for part in (0, 1, 2)
    ]
    x_ticks = [(b.x + bar // 2, b.day.strftime("%b %-d")) for n, b in enumerate(bars) if n % 7 == 0]
    return {
        "bars": bars,
        "width": left + max(1, len(daily) * (bar + gap) - gap),
        "height": head + height + bottom,
        "plot_top": head,
        "plot_bottom": head + height,
        "left": left,
        "bar": bar,
        "y_ticks": y_ticks,
        "x_ticks": x_ticks,
        "max": Money(top, currency) if daily else None,
    }

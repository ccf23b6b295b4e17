"""Admin usage reports: one row per deployment and day, filtered, streamed."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import func, select

from ...errors import ValidationFailed
from ...extensions import db
from ...models import Deployment, PriceVersion, UsageDaily, User
from ...models.usage import USAGE_COLUMNS
from .usage import RESOURCES, month_seconds

COLUMNS = [
    "date",
    "user",
    "deployment",
    "name",
    "kind",
    "labels",
    "cpu_core_hours",
    "memory_gb_hours",
    "storage_gb_months",
    "instance_hours",
    "ip_hours",
    "cost",
    "currency",
]


@dataclass(frozen=True)
class ReportFilter:
    day_from: date
    day_to: date  # inclusive
    user: User | None = None
    kind: str | None = None
    label: tuple[str, str] | None = None


def parse_label(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    for sep in ("=", ":"):
        if sep in value:
            key, _, wanted = value.partition(sep)
            if key.strip():
                return key.strip(), wanted.strip()
    raise ValidationFailed.field("label", "must look like key=value")


def _query(f: ReportFilter):
    if f.day_to < f.day_from:
        raise ValidationFailed.field("to", "must not be before from")
    query = (
        # Columns, not entities: no identity map, no relationship loading, per row.
        select(
            UsageDaily.day,
            *(getattr(UsageDaily, c) for c in USAGE_COLUMNS),
            Deployment.external_id,
            Deployment.name,
            Deployment.kind,
            Deployment.labels,
            User.email,
            PriceVersion.currency,
        )
        .join(Deployment, Deployment.id == UsageDaily.deployment_id)
        .join(User, User.id == UsageDaily.user_id)
        .join(PriceVersion, PriceVersion.id == Deployment.price_version_id)
        .where(UsageDaily.day >= f.day_from, UsageDaily.day <= f.day_to)
    )
    if f.user is not None:
        query = query.where(UsageDaily.user_id == f.user.id)
    if f.kind:
        query = query.where(Deployment.kind == f.kind)
    if f.label:
        query = query.where(Deployment.labels[f.label[0]].as_string() == f.label[1])
    # The order of ix_usage_daily_day_user_id_deployment_id: the first rows of a range come
    # from an index scan that stops after them, whatever the number of rows in the range (an
    # order by email or external id would sort every row of the range first). A user's rows
    # of a day stay together; the CSV lists the rows in this same order.
    return query.order_by(UsageDaily.day, UsageDaily.user_id, UsageDaily.deployment_id)


def count_rows(f: ReportFilter) -> int:
    """How many rows the report has (counted by the database, none read here)."""
    counted = _query(f).order_by(None).subquery()  # (the order counts nothing)
    return db.session.scalar(select(func.count()).select_from(counted)) or 0


def report_rows(f: ReportFilter, limit: int | None = None, offset: int = 0) -> Iterator[dict]:
    """Rows with quantities in their units and the cost in major units to 6 decimals, in
    the order (day, user, deployment); ``limit`` of them from ``offset`` if given."""
    query = _query(f)
    if limit is None:  # every row (the CSV): fetched a thousand at a time
        query = query.offset(offset).execution_options(yield_per=1000)
    else:  # a page: in one round trip (a server-side cursor would take four)
        query = query.limit(limit).offset(offset)
    result = db.session.execute(query)
    for row in result:
        # The quantities and costs of usage.row_quantities and row_costs, each as a quotient
        # of integers: Decimal division rounds the exact quotient, so the result is the same
        # as to_decimal's of the Fractions (and their sum), at a fraction of the time.
        month_ms = 1000 * month_seconds(row.day)
        cost = (
            row.cpu_cost + row.memory_cost + 1000 * (row.instance_cost + row.ip_cost)
        ) * month_ms + row.storage_cost * 3_600_000
        yield {
            "date": row.day.isoformat(),
            "user": row.email,
            "deployment": row.external_id,
            "name": row.name,
            "kind": row.kind,
            "labels": ";".join(f"{k}={v}" for k, v in sorted((row.labels or {}).items())),
            "cpu_core_hours": _decimal(row.cpu_ms, 3_600_000),
            "memory_gb_hours": _decimal(row.memory_ms, 3_600_000),
            "storage_gb_months": _decimal(row.storage_ms, month_ms),
            "instance_hours": _decimal(row.instance_s, 3600),
            "ip_hours": _decimal(row.ip_s, 3600),
            "cost": _decimal(cost, 3_600_000 * month_ms * 1_000_000),
            "currency": row.currency,
        }


_PLACES = Decimal(1).scaleb(-6)


def _decimal(numerator: int, denominator: int) -> Decimal:
    """numerator / denominator to 6 decimals, as usage.to_decimal rounds a Fraction."""
    return (Decimal(numerator) / Decimal(denominator)).quantize(_PLACES, rounding=ROUND_HALF_UP)


def _safe_cell(value) -> str:
    text = str(value)
    # A spreadsheet would run a cell starting with = + - @ as a formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_lines(f: ReportFilter) -> Iterator[str]:
    """The report as CSV text, a few lines at a time (UTF-8 with BOM, CRLF: spreadsheets
    open it cleanly)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    buffer.write("\ufeff")
    writer.writerow(COLUMNS)
    for n, row in enumerate(report_rows(f), 1):
        writer.writerow(
            [
                _safe_cell(row[c]) if c in ("user", "deployment", "name", "labels") else row[c]
                for c in COLUMNS
            ]
        )
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


__all__ = [
    "COLUMNS",
    "RESOURCES",
    "ReportFilter",
    "count_rows",
    "csv_lines",
    "parse_label",
    "report_rows",
]

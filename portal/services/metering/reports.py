"""Admin usage reports: one row per deployment and day, filtered, streamed."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from fractions import Fraction

from sqlalchemy import select

from ...errors import ValidationFailed
from ...extensions import db
from ...models import Deployment, PriceVersion, UsageDaily, User
from .usage import RESOURCES, row_costs, row_quantities, to_decimal

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
        select(UsageDaily, Deployment, User.email)
        .join(Deployment, Deployment.id == UsageDaily.deployment_id)
        .join(User, User.id == UsageDaily.user_id)
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


def report_rows(f: ReportFilter, limit: int | None = None) -> Iterator[dict]:
    """Rows with quantities in their units and the cost in major units to 6 decimals, in
    the order (day, user, deployment); the first ``limit`` of them if given."""
    query = _query(f)
    if limit is not None:
        query = query.limit(limit)
    result = db.session.execute(query.execution_options(yield_per=1000))
    for daily, dep, email in result:
        qty = row_quantities(daily)
        cost = sum(row_costs(daily).values(), Fraction(0)) / 1_000_000
        yield {
            "date": daily.day.isoformat(),
            "user": email,
            "deployment": dep.external_id,
            "name": dep.name,
            "kind": dep.kind,
            "labels": ";".join(f"{k}={v}" for k, v in sorted((dep.labels or {}).items())),
            "cpu_core_hours": to_decimal(qty["cpu"]),
            "memory_gb_hours": to_decimal(qty["memory"]),
            "storage_gb_months": to_decimal(qty["storage"]),
            "instance_hours": to_decimal(qty["instance"]),
            "ip_hours": to_decimal(qty["ip"]),
            "cost": to_decimal(cost),
            "currency": dep_currency(dep),
        }


def dep_currency(dep: Deployment) -> str:

    version = db.session.get_one(PriceVersion, dep.price_version_id)  # identity-mapped: cheap
    return version.currency


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


__all__ = ["COLUMNS", "RESOURCES", "ReportFilter", "csv_lines", "parse_label", "report_rows"]

"""Billing periods: a period runs from the invoice day of one month to the invoice day of
the next, [start, end), in UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from flask import current_app

from ..models import utcnow


def period_starting(year: int, month: int, invoice_day: int) -> tuple[datetime, datetime]:
    """The billing period that starts in ``year``-``month`` on the invoice day: [start, end)."""
    start = datetime(year, month, invoice_day, tzinfo=UTC)
    nxt = (year + (month == 12), 1 if month == 12 else month + 1)
    return start, datetime(nxt[0], nxt[1], invoice_day, tzinfo=UTC)


def period_containing(at: datetime, invoice_day: int) -> tuple[datetime, datetime]:
    year, month = at.year, at.month
    if at.day < invoice_day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return period_starting(year, month, invoice_day)


def parse_period(value: str, invoice_day: int) -> tuple[datetime, datetime]:
    try:
        year, month = (int(p) for p in value.split("-"))
        return period_starting(year, month, invoice_day)
    except (ValueError, TypeError):
        raise ValueError("period must look like 2026-11") from None


def last_day(end: datetime) -> date:
    """The last day of a half-open period ending at ``end`` (shown inclusively)."""
    return (end - timedelta(days=1)).date()


def invoice_day() -> int:
    return current_app.config["BILLING"].invoice_day


def last_complete_period(now: datetime | None = None) -> tuple[datetime, datetime]:
    """The latest billing period that has ended."""
    current_start, _ = period_containing(now or utcnow(), invoice_day())
    return period_containing(current_start - timedelta(days=1), invoice_day())


def period_name(start: datetime) -> str:
    """A period as pages and the API name it: the YYYY-MM of its start."""
    return f"{start.year:04d}-{start.month:02d}"


def recent_periods(count: int, now: datetime | None = None) -> list[tuple[str, datetime]]:
    """The current period and the ``count - 1`` before it, newest first, as (YYYY-MM, start)."""
    day = invoice_day()
    start, _ = period_containing(now or utcnow(), day)
    out = []
    for _ in range(count):
        out.append((period_name(start), start))
        start, _ = period_containing(start - timedelta(days=1), day)
    return out

"""Billing periods: the usage page's period list comes from services.calendar."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from portal.services import calendar


@pytest.mark.parametrize(
    ("day", "now", "names"),
    [
        (1, datetime(2026, 2, 14, tzinfo=UTC), ["2026-02", "2026-01", "2025-12", "2025-11"]),
        (15, datetime(2026, 2, 14, tzinfo=UTC), ["2026-01", "2025-12", "2025-11", "2025-10"]),
        (15, datetime(2026, 2, 15, tzinfo=UTC), ["2026-02", "2026-01", "2025-12", "2025-11"]),
    ],
)
def test_recent_periods_newest_first_from_the_invoice_day(ctx, day, now, names):
    original = ctx.config["BILLING"]
    ctx.config["BILLING"] = dataclasses.replace(original, invoice_day=day)
    try:
        periods = calendar.recent_periods(4, now)
    finally:
        ctx.config["BILLING"] = original
    assert [name for name, _ in periods] == names
    assert all(start.day == day and start.tzinfo is UTC for _, start in periods)
    assert periods[0][1] <= now

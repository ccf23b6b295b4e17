"""The Usage page: the period's cost so far, the projection, breakdowns and a daily chart."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, abort, current_app, render_template
from flask_login import current_user, login_required

from .. import htmx as hx
from ..services import calendar
from ..services.metering import deployments, usage
from .helpers import billing_period, query_arg

bp = Blueprint("usage", __name__, url_prefix="/usage")

PERIODS_SHOWN = 12


def _periods(invoice_day: int) -> list[tuple[str, datetime]]:
    """The current period and the eleven before it, as (YYYY-MM, start)."""
    start, _ = calendar.period_containing(datetime.now(UTC), invoice_day)
    out = []
    year, month = start.year, start.month
    for _ in range(PERIODS_SHOWN):
        out.append((f"{year:04d}-{month:02d}", datetime(year, month, invoice_day, tzinfo=UTC)))
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return out


@bp.get("/")
@login_required
def index():
    invoice_day = current_app.config["BILLING"].invoice_day
    periods = _periods(invoice_day)
    selected = query_arg("period", 20) or periods[0][0]
    try:
        start, end = billing_period(selected)
    except ValueError:
        abort(404)
    report = usage.usage_report(current_user, start, end)
    context = {
        "report": report,
        "periods": periods,
        "selected": selected,
        "chart": usage.daily_chart(report.daily),
    }
    if hx.is_fragment_request("usage-report"):
        return render_template("usage/_report.html", **context)
    return render_template(
        "usage/index.html", **context, deployments=deployments.list_deployments(current_user)
    )

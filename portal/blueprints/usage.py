"""The Usage page: the period's cost so far, the projection, breakdowns and a daily chart."""

from __future__ import annotations

from flask import Blueprint, abort, render_template
from flask_login import current_user, login_required

from .. import htmx as hx
from ..services import calendar
from ..services.metering import deployments, usage
from .helpers import billing_period, query_arg

bp = Blueprint("usage", __name__, url_prefix="/usage")

PERIODS_SHOWN = 12  # the current billing period and the eleven before it


@bp.get("/")
@login_required
def index():
    periods = calendar.recent_periods(PERIODS_SHOWN)
    selected = query_arg("period", 20) or periods[0][0]
    try:
        start, end = billing_period(selected)
    except ValueError:
        abort(404)
    # The full page lists the user's deployments: the report names them from that list.
    listed = (
        None
        if hx.is_fragment_request("usage-report")
        else deployments.list_deployments(current_user)
    )
    report = usage.usage_report(current_user, start, end, deployments=listed)
    context = {
        "report": report,
        "periods": periods,
        "selected": selected,
        "chart": usage.daily_chart(report.daily),
        "carried": usage.carried_usage(current_user, start, end),
    }
    if hx.is_fragment_request("usage-report"):
        return render_template("usage/_report.html", **context)
    return render_template("usage/index.html", **context, deployments=listed)

"""The prices page (at /subscription/, where the seed plugin's Subscription page was): there
are no plans, you pay for what you use, at the prices in force."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, render_template
from flask_login import login_required

from ..services.metering import catalog

bp = Blueprint("subscription", __name__, url_prefix="/subscription")


@bp.get("/")
@login_required
def index():
    now = datetime.now(UTC)
    current = catalog.version_at(now)
    scheduled = [v for v in reversed(catalog.list_versions()) if v.effective_from > now]
    return render_template("subscription/index.html", current=current, scheduled=scheduled)

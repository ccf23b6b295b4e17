"""The Subscription page: the billing mode and the plans in force."""

from flask import Blueprint, current_app, render_template
from flask_login import login_required

bp = Blueprint("subscription", __name__, url_prefix="/subscription")


@bp.get("/")
@login_required
def index():
    settings = current_app.config["BILLING"]
    return render_template(
        "subscription/index.html", settings=settings, plans=settings.subscription_plans
    )

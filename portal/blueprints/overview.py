"""The Overview page, where users land after logging in: what is due, the next invoice,
balances, standing, what needs them and what happened lately."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user, login_required

from ..services import overview as overviews
from ..services.payments import cards
from .invoices import PayForm

bp = Blueprint("overview", __name__, url_prefix="/overview")


@bp.get("/")
@login_required
def index():
    return render_template(
        "overview/index.html",
        o=overviews.overview(current_user),
        pay_form=PayForm(),
        cards_enabled=cards.cards_enabled(),
    )

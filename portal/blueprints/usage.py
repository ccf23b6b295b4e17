"""The Usage page (metering fills it in)."""
from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("usage", __name__, url_prefix="/usage")


@bp.get("/")
@login_required
def index():
    return render_template("usage/index.html")

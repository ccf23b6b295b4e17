"""The Payment methods page (payments fill it in)."""
from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("payment_methods", __name__, url_prefix="/payment-methods")


@bp.get("/")
@login_required
def index():
    return render_template("payment_methods/index.html")

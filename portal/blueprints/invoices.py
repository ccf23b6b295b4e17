"""The Invoices page (invoicing fills it in)."""
from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("invoices", __name__, url_prefix="/invoices")


@bp.get("/")
@login_required
def index():
    return render_template("invoices/index.html")

"""The admin area (admins only): its front page; each area's views in a module of its own."""

from flask import Blueprint, render_template

from ...services import accounts, mail
from .. import helpers

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
@helpers.admin_required
def _require_admin():
    return None


@bp.get("/")
def index():
    recent = accounts.list_users(page=1, per_page=10)
    return render_template(
        "admin/index.html", users=recent, outbox=mail.list_outbox(page=1, per_page=5)
    )


from . import audit, catalog, invoices, jobs, outbox, users, vouchers  # noqa: E402,F401

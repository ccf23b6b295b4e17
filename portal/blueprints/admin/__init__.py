"""The admin area (admins only): its front page, the overview; each area's views in a
module of its own."""

from flask import Blueprint, render_template

from ...models import utcnow
from ...services.admin import overview as admin_overview
from .. import helpers

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
@helpers.admin_required
def _require_admin():
    return None


@bp.get("/")
def index():
    return render_template("admin/index.html", o=admin_overview.overview(utcnow()))


@bp.get("/payments/failed")
def failed_payments():
    now = utcnow()
    page = admin_overview.failed_payments(now, page=helpers.page_arg())
    return render_template(
        "admin/failed_payments.html", payments=page, days=admin_overview.FAILED_PAYMENTS_DAYS
    )


from . import (  # noqa: E402,F401
    accounts,
    audit,
    catalog,
    invoices,
    jobs,
    outbox,
    plans,
    users,
    vouchers,
    webhooks,
)

"""The Invoices pages: the user's invoices (filtered by status, paged; the table swaps with
htmx), one invoice with its lines, payments and PDF, the PDF download and the widget that
waits for it. Users cannot delete invoices."""
from flask import Blueprint, abort, render_template, request
from flask_login import current_user, login_required

from .. import htmx as hx
from ..services import invoice_documents, invoicing
from .helpers import page_arg, pdf_response

bp = Blueprint("invoices", __name__, url_prefix="/invoices")

# The status filter, as users see statuses ("open" is shown as "sent"); empty means all.
STATUS_FILTERS = ("sent", "paid", "overdue", "void")


@bp.get("/")
@login_required
def index():
    status = request.args.get("status", "")
    if status and status not in STATUS_FILTERS:
        abort(404)
    invoices = invoicing.list_invoices(user=current_user, status=status or None, page=page_arg())
    context = {"invoices": invoices, "status": status, "statuses": STATUS_FILTERS}
    if hx.is_fragment_request("invoice-table"):
        return render_template("invoices/_table.html", **context)
    return render_template("invoices/index.html", **context)


@bp.get("/<int:invoice_id>")
@login_required
def show(invoice_id: int):
    invoice = invoicing.get_invoice(invoice_id, user=current_user)  # another user's: 404
    return render_template("invoices/show.html", invoice=invoice)


def _owner():
    """Whose invoices the viewer may see: their own, or any for admins (None)."""
    return None if current_user.is_admin else current_user


@bp.get("/<int:invoice_id>/pdf")
@login_required
def pdf(invoice_id: int):
    invoice, document = invoice_documents.get_invoice_pdf(invoice_id, user=_owner())
    return pdf_response(invoice, document)


@bp.get("/<int:invoice_id>/pdf-status")
@login_required
def pdf_status(invoice_id: int):
    """The PDF widget alone: polled by itself while the PDF is being made."""
    invoice = invoice_documents.get_invoice(invoice_id, user=_owner())
    return render_template("invoices/_pdf_status.html", invoice=invoice)

"""The Invoices page (invoicing fills it in), an invoice's PDF and the widget that waits for it."""
from flask import Blueprint, render_template
from flask_login import current_user, login_required

from ..services import invoice_documents
from .helpers import pdf_response

bp = Blueprint("invoices", __name__, url_prefix="/invoices")


@bp.get("/")
@login_required
def index():
    return render_template("invoices/index.html")


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

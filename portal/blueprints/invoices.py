"""The Invoices pages: the user's invoices (filtered by status, paged; the table swaps with
htmx), one invoice with its lines, payments and PDF, the PDF download and the widget that
waits for it. Users cannot delete invoices."""

from flask import Blueprint, abort, flash, redirect, render_template, request
from flask_login import current_user, login_required
from flask_wtf import FlaskForm

from .. import htmx as hx
from ..gateways import GatewayError
from ..models import USER_INVOICE_STATUS_LABELS, AttemptStatus
from ..services.invoicing import documents
from ..services.invoicing import invoices as invoicing
from ..services.payments import card_charges, settlement
from ..services.payments.pay import Outcome, pay_invoice
from ..web import discard_changes
from .helpers import page_arg, pdf_response, public_url, see_other

bp = Blueprint("invoices", __name__, url_prefix="/invoices")


@bp.get("/")
@login_required
def index():
    status = request.args.get("status", "")
    if status and status not in USER_INVOICE_STATUS_LABELS:
        abort(404)
    invoices = invoicing.list_invoices(user=current_user, status=status or None, page=page_arg())
    context = {"invoices": invoices, "status": status, "statuses": USER_INVOICE_STATUS_LABELS}
    if hx.is_fragment_request("invoice-table"):
        return render_template("invoices/_table.html", **context)
    return render_template("invoices/index.html", **context)


class PayForm(FlaskForm):
    """The "Pay now" and "Complete payment" buttons: CSRF only."""


def _payment_context(invoice) -> dict:
    unpaid = invoice.invoice_status in invoicing.UNPAID
    return {
        "pay_form": PayForm(),
        "preview": settlement.preview(invoice, current_user) if unpaid else None,
        "waiting": card_charges.open_attempt_for(current_user, invoice) if unpaid else None,
        "tender_labels": settlement.TENDER_LABELS,
    }


@bp.get("/<int:invoice_id>")
@login_required
def show(invoice_id: int):
    invoice = invoicing.get_for_owner(current_user, invoice_id)  # another user's: 404
    return render_template("invoices/show.html", invoice=invoice, **_payment_context(invoice))


# What the invoice page says after Pay now, by outcome.
PAY_FLASHES = {
    Outcome.PAID: ("The invoice is paid.", "success"),
    Outcome.REQUIRES_ACTION: (
        "Your bank asks you to confirm the card payment: press “Complete payment”.",
        "info",
    ),
    Outcome.PROCESSING: ("A card payment for this invoice is being processed.", "info"),
    Outcome.FAILED: (
        "No payment method could pay the rest of this invoice. Add money to your "
        "balance, redeem a voucher or add a card.",
        "error",
    ),
    Outcome.PARTIAL: ("Part of the invoice is paid; the rest is still due.", "info"),
    Outcome.UNPAID: (
        "Nothing could pay this invoice: add money to your balance, redeem a voucher "
        "or add a card.",
        "error",
    ),
}


@bp.post("/<int:invoice_id>/pay")
@login_required
def pay(invoice_id: int):
    """Pay now: credits, vouchers, prepaid balance, then the cards, as the preview showed."""
    invoicing.get_for_owner(current_user, invoice_id)
    if not PayForm().validate_on_submit():
        abort(400)
    outcome = pay_invoice(current_user, invoice_id)
    if outcome.kind is Outcome.NOTHING_TO_PAY:
        label = outcome.invoice.display_status.lower()
        flash(f"This invoice is {label}: there is nothing to pay.", "info")
    else:
        flash(*PAY_FLASHES[outcome.kind])
    return see_other("invoices.show", invoice_id=invoice_id)


@bp.post("/<int:invoice_id>/complete-payment")
@login_required
def complete_payment(invoice_id: int):
    """A card payment waiting for 3-D Secure: off to the bank's page, back to ``confirmed``."""
    invoice = invoicing.get_for_owner(current_user, invoice_id)
    if not PayForm().validate_on_submit():
        abort(400)
    attempt = card_charges.open_attempt_for(current_user, invoice)
    if attempt is None or attempt.status != AttemptStatus.REQUIRES_ACTION:
        flash("No card payment is waiting for you to confirm it.", "info")
        return see_other("invoices.show", invoice_id=invoice_id)
    try:
        url = card_charges.start_authentication(
            current_user,
            attempt,
            return_url=public_url("invoices.confirmed", invoice_id=invoice_id),
        )
    except GatewayError as exc:
        discard_changes()
        flash(f"The card processor did not answer: {exc.message}", "error")
        return see_other("invoices.show", invoice_id=invoice_id)
    if url:
        return redirect(url, code=303)
    return see_other("invoices.show", invoice_id=invoice_id)


@bp.get("/<int:invoice_id>/confirmed")
@login_required
def confirmed(invoice_id: int):
    """Back from the bank's page: record the payment's state now."""
    invoicing.get_for_owner(current_user, invoice_id)
    try:
        attempt = card_charges.refresh(current_user, request.args.get("payment_intent", ""))
    except GatewayError as exc:
        discard_changes()
        flash(f"We could not check the payment yet: {exc.message}", "error")
        return see_other("invoices.show", invoice_id=invoice_id)
    if attempt.status == AttemptStatus.SUCCEEDED:
        flash("Thank you: the card payment went through.", "success")
    elif attempt.status == AttemptStatus.FAILED:
        flash("The card payment was not completed.", "error")
    return see_other("invoices.show", invoice_id=invoice_id)


def _owner():
    """Whose invoices the viewer may see: their own, or any for admins (None)."""
    return None if current_user.is_admin else current_user


@bp.get("/<int:invoice_id>/pdf")
@login_required
def pdf(invoice_id: int):
    invoice, document = documents.get_invoice_pdf(invoice_id, user=_owner())
    return pdf_response(invoice, document)


@bp.get("/<int:invoice_id>/pdf-status")
@login_required
def pdf_status(invoice_id: int):
    """The PDF widget alone: polled by itself while the PDF is being made."""
    invoice = invoicing.get_for_owner(_owner(), invoice_id)
    return render_template("invoices/_pdf_status.html", invoice=invoice)

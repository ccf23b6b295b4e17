"""The Invoices pages: the user's invoices (filtered by status, paged; the table swaps with
htmx), one invoice with its lines, payments and PDF, the PDF download and the widget that
waits for it. Users cannot delete invoices."""

import secrets

from flask import Blueprint, abort, flash, redirect, render_template, request
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField
from wtforms.validators import Length

from .. import htmx as hx
from ..errors import ServiceError
from ..gateways import GatewayError
from ..models import USER_INVOICE_STATUS_LABELS, AttemptStatus
from ..money import Money
from ..services.invoicing import documents
from ..services.invoicing import invoices as invoicing
from ..services.payments import card_charges, cards, invoice_checkout, outcomes, settlement
from ..services.payments.pay import Outcome, pay_invoice
from ..web import discard_changes
from .helpers import page_arg, pdf_response, public_url, query_arg, see_other

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


class CardCheckoutForm(FlaskForm):
    """ "Pay by card" on the card processor's checkout page, optionally keeping the card."""

    save_card = BooleanField("Save this card for future payments")
    # One per rendered form: sent twice, it opens the same checkout page.
    nonce = HiddenField(validators=[Length(max=64)])

    def fill(self) -> "CardCheckoutForm":
        if not self.nonce.data:
            self.nonce.data = secrets.token_urlsafe(16)
        return self


def _payment_context(invoice) -> dict:
    unpaid = invoice.invoice_status in invoicing.UNPAID
    return {
        "pay_form": PayForm(),
        "checkout_form": CardCheckoutForm().fill() if unpaid and cards.cards_enabled() else None,
        "amount_due": invoice_checkout.amount_due(invoice),
        "preview": settlement.preview(invoice, current_user) if unpaid else None,
        "waiting": card_charges.open_attempt_for(current_user, invoice) if unpaid else None,
        "tender_labels": settlement.TENDER_LABELS,
        "attempts": outcomes.card_attempts(invoice),
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
    elif outcome.kind is Outcome.FAILED and outcome.card:
        flash(
            f"{outcome.card} was declined: {outcome.reason}. Pay by card on the secure page "
            "with another card, add money to your balance or redeem a voucher.",
            "error",
        )
    else:
        flash(*PAY_FLASHES[outcome.kind])
    return see_other("invoices.show", invoice_id=invoice_id)


@bp.post("/<int:invoice_id>/pay-by-card")
@login_required
def pay_by_card(invoice_id: int):
    """What the invoice owes, paid on the card processor's checkout page (full page load)."""
    invoicing.get_for_owner(current_user, invoice_id)  # another user's: 404
    form = CardCheckoutForm()
    if not form.validate_on_submit():
        abort(400)
    if not cards.cards_enabled():
        flash("Card payments are not set up on this portal.", "error")
        return see_other("invoices.show", invoice_id=invoice_id)
    try:
        session = invoice_checkout.start(
            current_user,
            invoice_id,
            save_card=bool(form.save_card.data),
            success_url=public_url("invoices.card_paid", invoice_id=invoice_id)
            + "?session_id={CHECKOUT_SESSION_ID}",
            cancel_url=public_url("invoices.show", invoice_id=invoice_id),
            idempotency_key=form.nonce.data or None,
        )
    except ServiceError as exc:
        discard_changes()
        flash(str(exc), "error")
        return see_other("invoices.show", invoice_id=invoice_id)
    except GatewayError as exc:
        discard_changes()
        flash(f"The card processor did not answer ({exc.message}). Try again in a minute.", "error")
        return see_other("invoices.show", invoice_id=invoice_id)
    return redirect(session.url, code=303)


@bp.get("/<int:invoice_id>/card-paid")
@login_required
def card_paid(invoice_id: int):
    """Back from the checkout page: the payment is booked now unless the webhook was first."""
    invoicing.get_for_owner(current_user, invoice_id)
    try:
        paid = invoice_checkout.return_from_checkout(current_user, query_arg("session_id", 255))
    except GatewayError as exc:
        discard_changes()
        flash(f"We could not check the payment yet ({exc.message}). Reload in a minute.", "error")
        return see_other("invoices.show", invoice_id=invoice_id)
    if paid.invoice is None or paid.invoice.id != invoice_id:
        abort(404)
    if paid.paid:
        amount = Money(paid.session.amount_minor or 0, paid.session.currency)
        flash(f"Thank you: {paid.card} paid {amount.format()} of {paid.invoice.number}.", "success")
        if paid.saved is not None and paid.saved.message:
            flash(
                paid.saved.message
                if paid.saved.card is None
                else f"{paid.saved.card.label} is saved for future payments.",
                "info",
            )
    else:
        flash("The card payment was not completed; nothing was charged.", "error")
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
    return pdf_response(documents.get_invoice_pdf(invoice_id, user=_owner()))


@bp.get("/<int:invoice_id>/pdf-status")
@login_required
def pdf_status(invoice_id: int):
    """The PDF widget alone: polled by itself while the PDF is being made."""
    invoice = invoicing.get_for_owner(_owner(), invoice_id)
    return render_template("invoices/_pdf_status.html", invoice=invoice)

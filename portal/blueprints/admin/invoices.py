"""Admin: every user's invoices (filtered by user, status and period), one invoice with its
void and offline-payment forms, and generating a user's invoice for a period by hand."""

from __future__ import annotations

import uuid

from flask import flash, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import HiddenField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length

from ...errors import NotFound, ServiceError
from ...forms import AmountField
from ...models import INVOICE_STATUS_LABELS, Invoice
from ...money import AmountError, Money
from ...services.admin import waiting
from ...services.invoicing import invoices as invoicing
from ...services.invoicing import run
from ...services.payments import settlement
from ...web import discard_changes
from .. import helpers
from . import bp

PERIOD_FIELDS = {"period_start": "period", "period_end": "period", "user_id": "email"}


class GenerateInvoiceForm(FlaskForm):
    email = StringField("User email", validators=[DataRequired(), Length(max=254)])
    period = StringField("Billing period (YYYY-MM)", validators=[DataRequired(), Length(max=7)])


class VoidInvoiceForm(FlaskForm):
    reason = TextAreaField("Reason", validators=[DataRequired(), Length(max=500)])


class OfflinePaymentForm(FlaskForm):
    amount = AmountField("Amount")
    reference = StringField("Reference", validators=[DataRequired(), Length(max=200)])
    # One payment per rendered form, however often it is submitted.
    request_id = HiddenField(validators=[Length(max=64)])


class Filters:
    """The list's query arguments, parsed: the user by email, a status, a period YYYY-MM."""

    def __init__(self):
        self.email = helpers.query_arg("user", 254)
        self.status = helpers.query_arg("status", 20)
        self.period = helpers.query_arg("period", 20)
        self.user = self.period_start = self.error = None
        if self.status not in ("", *INVOICE_STATUS_LABELS):
            self.error, self.status = f"Unknown status {self.status!r}.", ""
        if self.period:
            try:
                self.period_start, _ = helpers.billing_period(self.period)
            except ValueError as exc:
                self.error = f"The {exc}."
        if self.email:
            try:
                self.user = helpers.find_user(self.email)
            except NotFound:
                self.error = f"No user with the email {self.email}."

    def query(self) -> dict:
        return {
            "user": self.email or None,
            "status": self.status or None,
            "period": self.period or None,
        }


def _place_errors(form: FlaskForm, exc: ServiceError) -> None:
    """A service's field errors on this form's fields (period_start -> period, ...)."""
    exc.fields = {PERIOD_FIELDS.get(name, name): problem for name, problem in exc.fields.items()}
    helpers.form_errors_from(form, exc)


def _render_list(form: GenerateInvoiceForm, status: int = 200):
    f = Filters()
    invoices = None
    if f.error is None:
        invoices = invoicing.admin_list(
            user=f.user,
            status=f.status or None,
            period_start=f.period_start,
            page=helpers.page_arg(),
        )
    return render_template(
        "admin/invoices.html", f=f, invoices=invoices, form=form, statuses=INVOICE_STATUS_LABELS
    ), status


def _render_invoice(
    invoice: Invoice,
    *,
    void_form: VoidInvoiceForm | None = None,
    payment_form: OfflinePaymentForm | None = None,
    status: int = 200,
):
    payment_form = payment_form or OfflinePaymentForm(formdata=None)
    if not payment_form.request_id.data:
        payment_form.request_id.data = uuid.uuid4().hex
    return render_template(
        "admin/invoice.html",
        invoice=invoice,
        void_form=void_form or VoidInvoiceForm(formdata=None),
        payment_form=payment_form,
        tender_labels=settlement.TENDER_LABELS,
        waiting=waiting.for_invoice(invoice.id),
    ), status


@bp.get("/invoices")
def invoices():
    return _render_list(GenerateInvoiceForm(formdata=None))


@bp.post("/invoices")
def generate_invoice():
    form = GenerateInvoiceForm()
    if not form.validate_on_submit():
        return _render_list(form, 422)
    try:
        start, end = helpers.billing_period(form.period.data)
    except ValueError as exc:
        form.period.errors.append(f"The {exc}.")
        return _render_list(form, 422)
    try:
        user = helpers.find_user(form.email.data)
        invoice, created = run.generate_for_user(user, start, end, created_by=current_user)
    except NotFound:
        form.email.errors.append("No user has this email.")
        return _render_list(form, 422)
    except ServiceError as exc:
        discard_changes()
        _place_errors(form, exc)
        return _render_list(form, exc.http_status)
    flash(
        f"Issued invoice {invoice.number} to {user.email}."
        if created
        else f"{user.email} already has invoice {invoice.number} for this period.",
        "success",
    )
    return helpers.see_other("admin.invoice", invoice_id=invoice.id)


@bp.get("/invoices/<int:invoice_id>")
def invoice(invoice_id: int):
    return _render_invoice(invoicing.get_for_admin(invoice_id))


@bp.get("/invoices/<int:invoice_id>/void")
def confirm_void(invoice_id: int):
    """Void: are you sure? The reason typed on the invoice page comes along."""
    invoice = invoicing.get_for_owner(None, invoice_id)
    form = VoidInvoiceForm(formdata=request.args, meta={"csrf": False})
    return render_template(
        "confirm.html",
        title=f"Void invoice {invoice.number or invoice.id}?",
        message=(
            f"{invoice.number or 'The draft'} ({invoice.total.format()}) will no longer be owed; "
            "the user is told by mail. This cannot be undone."
        ),
        action=url_for("admin.void_invoice", invoice_id=invoice.id),
        form_field=form.reason,
        confirm="Void invoice",
        cancel=url_for("admin.invoice", invoice_id=invoice.id),
        danger=True,
    )


@bp.post("/invoices/<int:invoice_id>/void")
def void_invoice(invoice_id: int):
    invoice = invoicing.get_for_owner(None, invoice_id)
    form = VoidInvoiceForm()
    if not form.validate_on_submit():
        return _render_invoice(invoice, void_form=form, status=422)
    try:
        invoicing.void_invoice(invoice, reason=form.reason.data, voided_by=current_user)
    except ServiceError as exc:
        discard_changes()
        helpers.form_errors_from(form, exc)
        return _render_invoice(
            invoicing.get_for_owner(None, invoice_id), void_form=form, status=exc.http_status
        )
    flash(f"Voided invoice {invoice.number}.", "success")
    return helpers.see_other("admin.invoice", invoice_id=invoice_id)


@bp.post("/invoices/<int:invoice_id>/payments")
def record_payment(invoice_id: int):
    invoice = invoicing.get_for_owner(None, invoice_id)
    form = OfflinePaymentForm()
    if not form.validate_on_submit():
        return _render_invoice(invoice, payment_form=form, status=422)
    try:
        amount = Money.from_decimal(form.amount.decimal, invoice.currency)
        invoicing.record_offline_payment(
            invoice,
            amount=amount,
            reference=form.reference.data,
            recorded_by=current_user,
            idempotency_key=f"form:{form.request_id.data}" if form.request_id.data else None,
        )
    except AmountError as exc:
        form.amount.errors.append(f"The amount {exc}.")
        return _render_invoice(invoice, payment_form=form, status=422)
    except ServiceError as exc:
        discard_changes()
        helpers.form_errors_from(form, exc)
        return _render_invoice(
            invoicing.get_for_owner(None, invoice_id), payment_form=form, status=exc.http_status
        )
    flash(f"Recorded a payment of {amount.format()} on {invoice.number}.", "success")
    return helpers.see_other("admin.invoice", invoice_id=invoice_id)

"""The signed-in user's own account: billing details, the monthly budget cap, password and
API tokens."""

from __future__ import annotations

from flask import Blueprint, flash, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import (
    PasswordField,
    RadioField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, EqualTo, Length

from ..errors import ServiceError
from ..forms import AmountField
from ..money import AmountError, Money
from ..services import accounts
from ..services.budgets import rules as budgets
from ..web import discard_changes
from .helpers import form_errors_from, see_other

bp = Blueprint("account", __name__, url_prefix="/account")


@bp.before_request
@login_required
def _require_login():
    return None


class PasswordForm(FlaskForm):
    current_password = PasswordField("Current password", validators=[DataRequired()])
    password = PasswordField("New password", validators=[DataRequired(), Length(min=10, max=256)])
    confirm = PasswordField(
        "Repeat new password", validators=[DataRequired(), EqualTo("password", "Passwords differ.")]
    )


class TokenForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    scope = SelectField("Scope", choices=[SelectChoice("user", "user: my own data")])


class RevokeForm(FlaskForm):
    pass


class BillingForm(FlaskForm):
    company = StringField("Company name", validators=[Length(max=200)])
    address = TextAreaField("Address", validators=[Length(max=500)])
    tax_id = StringField("Tax id (VAT number)", validators=[Length(max=64)])


@bp.route("/billing", methods=["GET", "POST"])
def billing():
    """Billing details that the next invoices print under "Bill to"."""
    form = BillingForm(
        data={
            "company": current_user.billing_company or "",
            "address": current_user.billing_address or "",
            "tax_id": current_user.billing_tax_id or "",
        }
    )
    if form.is_submitted():
        form = BillingForm()
        if form.validate():
            accounts.set_billing_details(
                current_user,
                company=form.company.data or "",
                address=form.address.data or "",
                tax_id=form.tax_id.data or "",
            )
            flash("Billing details saved. Your next invoices show them.", "success")
            return see_other("account.billing")
        return render_template("account/billing.html", form=form), 422
    return render_template("account/billing.html", form=form)


class BudgetForm(FlaskForm):
    cap = AmountField("Monthly cap", noun="cap", required=False)
    when_reached = RadioField(
        "When spending reaches the cap",
        choices=[
            SelectChoice("tell", "Only tell me"),
            SelectChoice("stop", "Suspend my deployments until I raise the cap or the month ends"),
        ],
        default="tell",
        validators=[DataRequired()],
    )


@bp.route("/budget", methods=["GET", "POST"])
def budget():
    """The monthly budget cap: warned at 80%, told (or stopped) at 100%."""
    status = budgets.status(current_user)
    form = BudgetForm(
        data={
            "cap": str(status.cap.amount) if status.cap is not None else "",
            "when_reached": "stop" if status.stop_at_cap else "tell",
        }
    )
    if form.is_submitted():
        form = BudgetForm()
        if form.validate():
            try:
                cap = form.cap.decimal
                budgets.set_budget(
                    current_user,
                    None if cap is None else Money.from_decimal(cap, current_user.currency),
                    form.when_reached.data == "stop",
                )
            except AmountError as exc:
                form.cap.errors.append(f"The cap {exc}.")
            except ServiceError as exc:
                discard_changes()
                form_errors_from(form, exc)
            else:
                flash(
                    "Budget saved." if form.cap.decimal is not None else "Budget cap removed.",
                    "success",
                )
                return see_other("account.budget")
        return render_template("account/budget.html", form=form, status=status), 422
    return render_template("account/budget.html", form=form, status=status)


@bp.route("/password", methods=["GET", "POST"])
def password():
    form = PasswordForm()
    if form.validate_on_submit():
        try:
            accounts.change_password(current_user, form.current_password.data, form.password.data)
        except ServiceError as exc:
            discard_changes()
            form_errors_from(form, exc)
        else:
            flash("Password changed. Other sessions have been signed out.", "success")
            return see_other("account.password")
    return render_template("account/password.html", form=form)


def _token_form() -> TokenForm:
    form = TokenForm()
    if current_user.is_admin:
        form.scope.choices += [
            SelectChoice("admin", "admin: everything"),
            SelectChoice("platform", "platform: users and deployments"),
        ]
    return form


@bp.route("/tokens", methods=["GET", "POST"])
def tokens():
    form, new_token = _token_form(), None
    if form.validate_on_submit():
        try:
            _, new_token = accounts.create_api_token(
                current_user, name=form.name.data, scope=form.scope.data
            )
        except ServiceError as exc:
            discard_changes()
            form_errors_from(form, exc)
        else:
            form = _token_form()
            form.name.data = ""
    return render_template(
        "account/tokens.html",
        form=form,
        new_token=new_token,
        tokens=accounts.list_tokens(current_user),
        revoke_form=RevokeForm(),
    )


@bp.get("/tokens/<int:token_id>/revoke")
def confirm_revoke(token_id: int):
    """Revoke: are you sure? (another user's token: 404)"""
    token = accounts.get_token_for_owner(current_user, token_id)
    return render_template(
        "confirm.html",
        title=f"Revoke the token “{token.name}”?",
        message="Programs that use it stop working at once. This cannot be undone.",
        action=url_for("account.revoke_token", token_id=token.id),
        confirm="Revoke token",
        cancel=url_for("account.tokens"),
        danger=True,
    )


@bp.post("/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int):
    if RevokeForm().validate_on_submit():
        accounts.revoke_token(current_user, token_id)  # NotFound -> 404 for others' tokens
        flash("Token revoked.", "success")
    return see_other("account.tokens")

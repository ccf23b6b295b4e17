"""The signed-in user's own account: password and API tokens."""

from __future__ import annotations

from flask import Blueprint, flash, render_template
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import PasswordField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from ..errors import ServiceError
from ..services import accounts
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


@bp.post("/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int):
    if RevokeForm().validate_on_submit():
        accounts.revoke_token(current_user, token_id)  # NotFound -> 404 for others' tokens
        flash("Token revoked.", "success")
    return see_other("account.tokens")

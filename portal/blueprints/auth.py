"""Register, log in, log out, forgot and reset password."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, g, redirect, render_template, session, url_for
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from ..errors import ServiceError
from ..extensions import limiter
from ..models import User
from ..services import accounts
from ..web import discard_changes
from .helpers import form_errors_from, safe_next, see_other

bp = Blueprint("auth", __name__, url_prefix="/auth")


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


class RegisterForm(FlaskForm):
    """Name and address only: the password is set from the link mailed to the address."""

    name = StringField("Name", validators=[Length(max=200)])
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])


class ForgotForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired()])


class ResetForm(FlaskForm):
    password = PasswordField("New password", validators=[DataRequired(), Length(min=10, max=256)])
    confirm = PasswordField(
        "Repeat new password", validators=[DataRequired(), EqualTo("password", "Passwords differ.")]
    )


REGISTER_SENT = (
    "Thank you. We have sent a message to {email}: follow it to go on. "
    "Nothing arrived? Look in the spam folder, or ask again later."
)


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def _registration_limit() -> str:
    return current_app.config["REGISTRATION_RATE_LIMIT"]


def _log_in(user: User) -> None:
    """Start a login in this browser: a new session row, and a new CSRF token, so a token
    seen before logging in (a shared computer, a page an attacker loaded) is refused after."""
    field = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
    session.pop(field, None)  # Flask-WTF's raw token; the next form gets a fresh one
    g.pop(field, None)
    accounts.start_session(user)
    login_user(user)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("overview.index"))
    form = LoginForm()
    if form.validate_on_submit():
        user = accounts.authenticate(form.email.data, form.password.data)
        if user is not None:
            _log_in(user)  # a rehashed password is saved too, if the parameters moved on
            return redirect(safe_next(url_for("overview.index")), code=303)
        form.password.errors.append("Email or password is incorrect.")
    return render_template("auth/login.html", form=form)


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit(_registration_limit, methods=["POST"])
def register():
    if not current_app.config.get("REGISTRATION_OPEN", True):
        flash("Registration is closed; ask an administrator for an account.", "info")
        return redirect(url_for("auth.login"))
    form = RegisterForm()
    if form.validate_on_submit():
        # The same answer whether the address is new or registered; the mail tells the
        # address's owner which it is.
        try:
            email = accounts.request_registration(email=form.email.data, name=form.name.data)
        except ServiceError as exc:
            discard_changes()
            form_errors_from(form, exc)
        else:
            flash(REGISTER_SENT.format(email=email), "info")
            return see_other("auth.login")
    return render_template("auth/register.html", form=form)


@bp.post("/logout")
def logout():
    if current_user.is_authenticated:
        accounts.end_session(current_user)  # a saved copy of the cookie is refused from now on
    session.clear()  # the CSRF token too
    logout_user()
    flash("You are logged out.", "info")
    return see_other("auth.login")


@bp.route("/forgot", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
def forgot():
    form = ForgotForm()
    if form.validate_on_submit():
        accounts.request_password_reset(form.email.data)
        flash(
            "If an account uses that address, a link to set a new password is on its way.", "info"
        )
        return see_other("auth.login")
    return render_template("auth/forgot.html", form=form)


@bp.route("/reset/<token>", methods=["GET", "POST"])
def reset_password(token: str):
    try:
        user = accounts.user_for_password_token(token)
    except ServiceError as exc:
        flash(f"This link {exc.fields.get('token', 'is not valid')}.", "error")
        return see_other("auth.forgot")
    form = ResetForm()
    if form.validate_on_submit():
        try:
            accounts.set_password(user, form.password.data)  # ends every other login
        except ServiceError as exc:
            discard_changes()
            form_errors_from(form, exc)
        else:
            _log_in(user)
            flash("Your password is set.", "success")
            return see_other("overview.index")
    return render_template("auth/reset.html", form=form, user=user)

"""Admin › Users › a user: their wallet, granting a credit, taking the admin role away (the
list is in accounts.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta

from flask import abort, flash, render_template
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import DateField, HiddenField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional

from ...errors import ServiceError
from ...extensions import db
from ...forms import AmountField, PlausibleDate
from ...models import User
from ...money import AmountError, Money
from ...services import accounts
from ...services.admin import account as account_detail
from ...services.admin import waiting
from ...services.subscriptions import changes
from ...services.wallet import credits, ledger
from ...web import discard_changes
from .. import helpers
from . import bp
from . import plans as plans_admin


class GrantCreditForm(FlaskForm):
    amount = AmountField("Amount")
    reason = TextAreaField("Reason", validators=[DataRequired(), Length(max=500)])
    expires_on = DateField("Valid through (optional)", validators=[Optional(), PlausibleDate()])
    # One grant per rendered form, however often it is submitted.
    request_id = HiddenField(validators=[Length(max=64)])


class RevokeAdminForm(FlaskForm):
    pass


LOTS_SHOWN = 25  # the newest; every grant is in the wallet history too


def _user_or_404(user_id: int) -> User:
    return db.session.get(User, user_id) or abort(404)


def _render_user(user: User, form: GrantCreditForm, status: int = 200):
    if not form.request_id.data:
        form.request_id.data = uuid.uuid4().hex
    lots, lots_total = credits.newest_lots(user, LOTS_SHOWN)
    figures = account_detail.money_figures(user)
    return render_template(
        "admin/user.html",
        user=user,
        form=form,
        revoke_admin_form=RevokeAdminForm(),
        balances=figures.balances,
        lots=lots,
        lots_total=lots_total,
        history=ledger.history_window(user, page=helpers.page_arg()),
        detail=account_detail.account_detail(user),
        waiting=waiting.for_user(user),
        subscription=changes.describe(user),
        budget=figures.budget,
        modes=plans_admin.MODES,
        forecast=figures.forecast,
    ), status


@bp.get("/users/<int:user_id>")
def user(user_id: int):
    return _render_user(_user_or_404(user_id), GrantCreditForm(formdata=None))


@bp.post("/users/<int:user_id>/credits")
def grant_credit(user_id: int):
    user = _user_or_404(user_id)
    form = GrantCreditForm()
    if not form.validate_on_submit():
        return _render_user(user, form, 422)
    expires_at = None
    if form.expires_on.data:  # valid through that whole day (UTC)
        expires_at = datetime.combine(form.expires_on.data + timedelta(days=1), time(), UTC)
    try:
        amount = Money.from_decimal(form.amount.decimal, user.currency)
        credits.grant_credit(
            user=user,
            amount=amount,
            reason=form.reason.data,
            expires_at=expires_at,
            granted_by=current_user,
            idempotency_key=f"form:{form.request_id.data}",
        )
    except AmountError as exc:
        form.amount.errors.append(f"The amount {exc}.")
        return _render_user(user, form, 422)
    except ServiceError as exc:
        discard_changes()
        helpers.form_errors_from(form, exc)
        return _render_user(user, form, 422)
    flash(f"Granted {amount.format()} of credit to {user.email}.", "success")
    return helpers.see_other("admin.user", user_id=user.id)


@bp.post("/users/<int:user_id>/revoke-admin")
def revoke_admin(user_id: int):
    """Take the admin role away; the user's admin and platform tokens are revoked with it."""
    user = _user_or_404(user_id)
    if not RevokeAdminForm().validate_on_submit():
        abort(400)
    try:
        revoked = accounts.revoke_admin(user, by=current_user)
    except ServiceError as exc:
        discard_changes()
        flash(f"Not done: {exc.message}.", "error")
    else:
        flash(
            f"{user.email} is no longer an admin; {revoked} admin or platform "
            f"token{'' if revoked == 1 else 's'} revoked.",
            "success",
        )
    return helpers.see_other("admin.user", user_id=user_id)

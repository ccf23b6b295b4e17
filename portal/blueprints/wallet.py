"""The Wallet page: balances, history, voucher redemption and voucher requests."""
from __future__ import annotations

from flask import Blueprint, current_app, flash, render_template
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import StringField, TextAreaField
from wtforms.validators import DataRequired, Length

from .. import htmx as hx
from ..extensions import db, limiter
from ..money import AmountError, Money
from ..services import ledger, vouchers
from ..services.errors import ServiceError
from .helpers import form_errors_from, page_arg, see_other

bp = Blueprint("wallet", __name__, url_prefix="/wallet")


class RedeemForm(FlaskForm):
    code = StringField("Voucher code", validators=[DataRequired(), Length(max=64)])


class RequestForm(FlaskForm):
    amount = StringField("Amount", validators=[DataRequired(), Length(max=32)])
    reason = TextAreaField("Why you need it", validators=[DataRequired(), Length(max=1000)])


def voucher_limit() -> str:
    return current_app.config["VOUCHER_RATE_LIMIT"]


def per_user() -> str:
    return f"user:{current_user.get_id()}"


def _render(redeem_form=None, request_form=None, status: int = 200):
    history = ledger.wallet_history(current_user, page=page_arg())
    context = {"balances": ledger.balances(current_user), "history": history}
    if hx.is_fragment_request("wallet-panel"):
        return render_template("wallet/_panel.html", **context)
    return render_template("wallet/index.html", **context,
                           redeem_form=redeem_form or RedeemForm(formdata=None),
                           request_form=request_form or RequestForm(formdata=None),
                           requests=vouchers.list_requests(status=None, user=current_user)), status


@bp.get("/")
@login_required
def index():
    return _render()


@bp.post("/vouchers")
@login_required
@limiter.limit(voucher_limit, key_func=per_user)
def redeem():
    form = RedeemForm()
    if form.validate_on_submit():
        try:
            value = vouchers.redeem(current_user, form.code.data)
        except ServiceError as exc:
            db.session.rollback()
            form.code.errors = [exc.message[:1].upper() + exc.message[1:] + "."]
        else:
            db.session.commit()
            flash(f"{value.format()} added to your voucher balance.", "success")
            return see_other("wallet.index")
    return _render(redeem_form=form, status=422)


@bp.post("/voucher-requests")
@login_required
def request_voucher():
    form = RequestForm()
    if form.validate_on_submit():
        try:
            amount = Money.from_decimal(form.amount.data, current_user.currency)
            vouchers.request_voucher(current_user, amount=amount, reason=form.reason.data)
        except AmountError as exc:
            form.amount.errors.append(f"The amount {exc}.")
        except ServiceError as exc:
            db.session.rollback()
            form_errors_from(form, exc)
        else:
            db.session.commit()
            flash("Your request was sent; you will get an email with the answer.", "success")
            return see_other("wallet.index")
    return _render(request_form=form, status=422)

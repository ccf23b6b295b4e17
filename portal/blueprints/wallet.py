"""The Wallet page: balances, history, top-ups (checkout page or a saved card), voucher
redemption and voucher requests."""

from __future__ import annotations

import secrets

from flask import Blueprint, flash, redirect, render_template
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import HiddenField, RadioField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length

from .. import htmx as hx
from ..errors import ServiceError
from ..forms import AmountField
from ..gateways import GatewayError
from ..models import AttemptStatus
from ..money import AmountError, Money
from ..services.payments import card_charges, cards, outcomes, pay, topups
from ..services.wallet import credits, ledger, vouchers
from ..web import discard_changes
from .helpers import form_errors_from, page_arg, public_url, query_arg, see_other
from .limits import voucher_redeem_limit

bp = Blueprint("wallet", __name__, url_prefix="/wallet")


class RedeemForm(FlaskForm):
    code = StringField("Voucher code", validators=[DataRequired(), Length(max=64)])


class TopUpForm(FlaskForm):
    amount = AmountField("Amount")
    method = RadioField("Pay with", default=pay.CHECKOUT, validators=[DataRequired()])
    # One per rendered form: a double submit charges once.
    nonce = HiddenField(validators=[Length(max=64)])

    def fill(self, user) -> TopUpForm:
        self.method.choices = [(pay.CHECKOUT, "Card on the secure checkout page")] + [
            (f"card:{c.id}", f"Saved card {c.label}") for c in cards.list_cards(user)
        ]
        if not self.nonce.data:
            self.nonce.data = secrets.token_urlsafe(16)
        return self


class RequestForm(FlaskForm):
    amount = AmountField("Amount")
    reason = TextAreaField("Why you need it", validators=[DataRequired(), Length(max=1000)])


def _render(redeem_form=None, request_form=None, topup_form=None, status: int = 200):
    history = ledger.wallet_history(current_user, page=page_arg())
    context = {"balances": credits.spendable_balances(current_user), "history": history}
    if hx.is_fragment_request("wallet-panel"):
        return render_template("wallet/_panel.html", **context)
    enabled = cards.cards_enabled()
    return render_template(
        "wallet/index.html",
        **context,
        redeem_form=redeem_form or RedeemForm(formdata=None),
        request_form=request_form or RequestForm(formdata=None),
        topup_form=(topup_form or TopUpForm(formdata=None)).fill(current_user) if enabled else None,
        requests=vouchers.list_requests(status=None, user=current_user),
    ), status


@bp.get("/")
@login_required
def index():
    return _render()


@bp.post("/vouchers")
@login_required
@voucher_redeem_limit
def redeem():
    form = RedeemForm()
    if form.validate_on_submit():
        marker = outcomes.payments_marker(current_user)
        try:
            value = vouchers.redeem(current_user, form.code.data)
        except ServiceError as exc:
            discard_changes()
            form.code.errors = [exc.message[:1].upper() + exc.message[1:] + "."]
        else:
            paid = outcomes.describe(outcomes.settle_wallets(current_user, marker))
            flash(f"{value.format()} added to your voucher balance. {paid}".strip(), "success")
            return see_other("wallet.index")
    return _render(redeem_form=form, status=422)


@bp.post("/voucher-requests")
@login_required
def request_voucher():
    form = RequestForm()
    if form.validate_on_submit():
        try:
            amount = Money.from_decimal(form.amount.decimal, current_user.currency)
            vouchers.request_voucher(current_user, amount=amount, reason=form.reason.data)
        except AmountError as exc:
            form.amount.errors.append(f"The amount {exc}.")
        except ServiceError as exc:
            discard_changes()
            form_errors_from(form, exc)
        else:
            flash("Your request was sent; you will get an email with the answer.", "success")
            return see_other("wallet.index")
    return _render(request_form=form, status=422)


@bp.post("/top-up")
@login_required
def top_up():
    """Add to the prepaid balance: on the card processor's checkout page, or from a saved
    card. The balance grows when the processor confirms the payment."""
    if not cards.cards_enabled():
        flash("Card payments are not set up on this portal.", "error")
        return see_other("wallet.index")
    form = TopUpForm().fill(current_user)
    if not form.validate_on_submit():
        return _render(topup_form=form, status=422)
    marker = outcomes.payments_marker(current_user)
    try:
        amount = Money.from_decimal(form.amount.decimal, current_user.currency)
        started = pay.top_up(
            current_user,
            amount,
            method=form.method.data,
            nonce=form.nonce.data,
            success_url=public_url("wallet.top_up_done") + "?session_id={CHECKOUT_SESSION_ID}",
            cancel_url=public_url("wallet.index"),
            return_url=public_url("wallet.top_up_card_return"),
        )
    except AmountError as exc:
        form.amount.errors.append(f"The amount {exc}.")
    except ServiceError as exc:
        discard_changes()
        form_errors_from(form, exc)
    except GatewayError as exc:
        discard_changes()
        flash(f"The card processor did not take the payment: {exc.message}", "error")
    else:
        if started.redirect_url:
            return redirect(started.redirect_url, code=303)
        _flash_attempt(started.attempt, marker)
        return see_other("wallet.index")
    return _render(topup_form=form, status=422)


def _flash_attempt(attempt, marker: int) -> None:
    status = AttemptStatus(attempt.status)
    if status is AttemptStatus.SUCCEEDED:
        paid = outcomes.describe(outcomes.settle_wallets(current_user, marker))
        flash(f"{attempt.amount.format()} added to your prepaid balance. {paid}".strip(), "success")
    elif status is AttemptStatus.FAILED:
        reason = outcomes.decline_reason(attempt.decline_code, attempt.message)
        flash(
            f"{attempt.payment_method.label} was declined: {reason}. Nothing was charged; "
            "try another card or the checkout page.",
            "error",
        )
    else:
        flash("The payment is being confirmed; your balance grows when it is.", "info")


@bp.get("/top-up/done")
@login_required
def top_up_done():
    """Back from the checkout page."""
    marker = outcomes.payments_marker(current_user)
    try:
        outcome = topups.return_from_checkout(current_user, query_arg("session_id", 255))
    except GatewayError as exc:
        discard_changes()
        flash(f"We could not check the payment yet: {exc.message}", "error")
        return see_other("wallet.index")
    if outcome.credited:
        amount = Money(outcome.session.amount_minor or 0, outcome.session.currency)
        paid = outcomes.describe(outcomes.settle_wallets(current_user, marker))
        flash(f"{amount.format()} added to your prepaid balance. {paid}".strip(), "success")
    else:
        flash("The payment is not complete.", "error")
    return see_other("wallet.index")


@bp.get("/top-up/confirmed")
@login_required
def top_up_card_return():
    """Back from the bank's 3-D Secure page for a saved-card top-up."""
    marker = outcomes.payments_marker(current_user)
    try:
        attempt = card_charges.refresh(current_user, query_arg("payment_intent", 255))
    except GatewayError as exc:
        discard_changes()
        flash(f"We could not check the payment yet: {exc.message}", "error")
        return see_other("wallet.index")
    _flash_attempt(attempt, marker)
    return see_other("wallet.index")

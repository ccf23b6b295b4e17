"""The Standing page: each deployment with its state and countdown, Pay to restore, and how
long the funds last. The countdowns refresh by an htmx poll of their region."""

from __future__ import annotations

import secrets

from flask import Blueprint, abort, flash, make_response, redirect, render_template
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import HiddenField, IntegerField
from wtforms.validators import InputRequired, Length

from .. import htmx as hx
from ..errors import ServiceError
from ..gateways import GatewayError
from ..models import AttemptStatus
from ..money import Money
from ..services.payments import card_charges, cards, topups
from ..services.standing import payrestore
from ..services.standing.payrestore import Result
from ..services.standing.resources import standing_page
from ..web import discard_changes
from .helpers import public_url, query_arg, see_other

bp = Blueprint("standing", __name__, url_prefix="/standing")

LIVE_REGION = "standing-live"
POLL_SECONDS = 60


class RestoreForm(FlaskForm):
    """Pay to restore: the total the page showed, and one nonce per rendered form (sent
    twice, one checkout page or one card charge)."""

    expected_minor = IntegerField(validators=[InputRequired()])
    nonce = HiddenField(validators=[Length(max=48)])

    def fill(self, total_minor: int) -> RestoreForm:
        self.expected_minor.data = total_minor
        if not self.nonce.data:
            self.nonce.data = secrets.token_urlsafe(16)
        return self


@bp.get("/")
@login_required
def index():
    page = standing_page(current_user, cards_on=cards.cards_enabled())
    context = {"p": page, "poll_seconds": POLL_SECONDS, "live_id": LIVE_REGION}
    if hx.is_fragment_request(LIVE_REGION):
        return hx.vary_on_htmx(make_response(render_template("standing/_live.html", **context)))
    form = RestoreForm().fill(page.quote.total.amount_minor)
    return hx.vary_on_htmx(
        make_response(render_template("standing/index.html", form=form, **context))
    )


@bp.post("/restore")
@login_required
def restore():
    """Pay what the page showed, then bring the deployments back."""
    form = RestoreForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        done = payrestore.pay_to_restore(
            current_user,
            expected_minor=form.expected_minor.data or 0,
            nonce=form.nonce.data or secrets.token_urlsafe(16),
            success_url=public_url("standing.checkout_done") + "?session_id={CHECKOUT_SESSION_ID}",
            cancel_url=public_url("standing.index"),
            return_url=public_url("standing.card_return"),
        )
    except ServiceError as exc:
        discard_changes()
        flash(f"Nothing was paid: {exc}", "error")
        return see_other("standing.index")
    except GatewayError as exc:
        discard_changes()
        flash(f"The card processor did not answer ({exc.message}). Try again in a minute.", "error")
        return see_other("standing.index")
    if done.redirect_url and done.result in (Result.CHECKOUT, Result.REQUIRES_ACTION):
        if done.result is Result.REQUIRES_ACTION and done.invoice is not None:
            flash(
                "Your bank asks you to confirm the card payment: press “Complete payment”. "
                "The deployments run again within the hour once it is paid.",
                "info",
            )
        return redirect(done.redirect_url, code=303)
    _flash(done)
    return see_other("standing.index")


def _flash(done: payrestore.Restored) -> None:
    paid = f"Paid {done.paid.format()}. " if done.paid.amount_minor else ""
    if done.result is Result.RESTORED:
        if done.restored:
            flash(f"{paid}Running again: {', '.join(done.restored)}.", "success")
        else:
            flash(f"{paid}Nothing was waiting to be restored.".strip(), "success")
    elif done.result is Result.NOTHING:
        flash("Nothing is due and nothing waits to be restored.", "info")
    elif done.result is Result.CHANGED:
        flash(
            f"What is due changed to {done.paid.format()} since the page was shown; nothing "
            "was paid. Check the amount and press the button again.",
            "error",
        )
    elif done.result is Result.PROCESSING:
        flash(f"{paid}A card payment is being processed; this page shows when it is.", "info")
    else:
        invoice = f" invoice {done.invoice.number}" if done.invoice is not None else " it"
        if done.card:
            flash(
                f"{paid}{done.card} was declined: {done.reason}. Nothing was restored: pay"
                f"{invoice} with another card, top up or redeem a voucher.",
                "error",
            )
        else:
            flash(f"{paid}Nothing could pay{invoice} ({done.reason}).", "error")


@bp.get("/restore/done")
@login_required
def checkout_done():
    """Back from the checkout page: the money pays the overdue invoices, then the restore."""
    try:
        outcome = topups.return_from_checkout(current_user, query_arg("session_id", 255))
    except GatewayError as exc:
        discard_changes()
        flash(f"We could not check the payment yet ({exc.message}). Reload in a minute.", "error")
        return see_other("standing.index")
    if not outcome.credited:
        flash("The card payment was not completed; nothing was charged.", "error")
        return see_other("standing.index")
    restored = payrestore.after_checkout(current_user)
    amount = outcome.session.amount_minor or 0
    text = f"Thank you: your card paid {Money(amount, outcome.session.currency).format()}."
    if restored:
        text += f" Running again: {', '.join(restored)}."
    flash(text, "success")
    return see_other("standing.index")


@bp.get("/restore/confirmed")
@login_required
def card_return():
    """Back from the bank's 3-D Secure page after a card top-up of the prepaid shortfall."""
    try:
        attempt = card_charges.refresh(current_user, query_arg("payment_intent", 255))
    except GatewayError as exc:
        discard_changes()
        flash(f"We could not check the payment yet: {exc.message}", "error")
        return see_other("standing.index")
    if attempt.status == AttemptStatus.SUCCEEDED:
        restored = payrestore.restore_named(current_user)
        tail = f" Running again: {', '.join(restored)}." if restored else ""
        flash(f"Thank you: the card payment went through.{tail}", "success")
    elif attempt.status == AttemptStatus.FAILED:
        flash("The card payment was not completed; nothing was restored.", "error")
    return see_other("standing.index")

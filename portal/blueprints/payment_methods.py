"""The Payment methods page: saved cards (add on the gateway's page, set default, remove)."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm

from ..errors import ServiceError
from ..gateways import GatewayError
from ..services.payments import cards, outcomes, settlement
from ..web import discard_changes
from .helpers import public_url, see_other

bp = Blueprint("payment_methods", __name__, url_prefix="/payment-methods")


class ActionForm(FlaskForm):
    """A button: CSRF only."""


def _render(status: int = 200):
    saved = cards.list_cards(current_user) if cards.cards_enabled() else []
    return render_template(
        "payment_methods/index.html",
        cards=saved,
        form=ActionForm(),
        enabled=cards.cards_enabled(),
        rule=cards.LAST_CARD_RULE,
        would_pay=outcomes.card_would_pay(current_user),
    ), status


@bp.get("/")
@login_required
def index():
    return _render()


@bp.post("/add")
@login_required
def add():
    """Off to the gateway's "add a card" page; it comes back to ``added``."""
    if not ActionForm().validate_on_submit():
        return _render(400)
    try:
        session = cards.start_adding(
            current_user,
            success_url=public_url("payment_methods.added") + "?session_id={CHECKOUT_SESSION_ID}",
            cancel_url=public_url("payment_methods.index"),
        )
    except GatewayError as exc:
        discard_changes()
        flash(f"Cards cannot be added right now: {exc.message}", "error")
        return see_other(".index")
    return redirect(session.url, code=303)


@bp.get("/added")
@login_required
def added():
    """Back from the gateway's page: save the card it verified (the webhook may do it too)."""
    session_id = request.args.get("session_id", "")
    marker = outcomes.payments_marker(current_user)
    try:
        saved = cards.finish_setup_session(current_user, session_id)
        if saved.created:
            # The new card pays the open invoices now, so the page can say what it paid
            # (the settlement job that saving starts then finds nothing left).
            settlement.settle(current_user.id)
    except GatewayError as exc:
        discard_changes()
        flash(f"We could not check the new card ({exc.message}). Reload in a minute.", "error")
        return see_other(".index")
    paid = outcomes.paid_since(current_user, marker) if saved.card else []
    message = saved.message + (" " + outcomes.describe(paid) if paid else "")
    flash(message, "success" if saved.card else "error")
    return see_other(".index")


@bp.post("/<int:card_id>/default")
@login_required
def make_default(card_id: int):
    if not ActionForm().validate_on_submit():
        return _render(400)
    card = cards.set_default(current_user, card_id)  # another user's card: 404
    flash(f"{card.label} is your default card.", "success")
    return see_other(".index")


@bp.get("/<int:card_id>/delete")
@login_required
def confirm_delete(card_id: int):
    """Remove: are you sure? (another user's card: 404)"""
    card = cards.get_for_owner(current_user, card_id)
    return render_template(
        "confirm.html",
        title=f"Remove {card.label}?",
        message=f"{card.label} will no longer pay your invoices. You can add it again later.",
        action=url_for(".delete", card_id=card.id),
        confirm=f"Remove {card.label}",
        cancel=url_for(".index"),
        danger=True,
    )


@bp.post("/<int:card_id>/delete")
@login_required
def delete(card_id: int):
    if not ActionForm().validate_on_submit():
        return _render(400)
    try:
        card = cards.remove_card(current_user, card_id)
    except ServiceError as exc:
        discard_changes()
        if exc.http_status == 404:
            raise
        flash(exc.message, "error")
        return _render(409)
    flash(f"{card.label} was removed.", "success")
    return see_other(".index")

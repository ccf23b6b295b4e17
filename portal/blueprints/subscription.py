"""The Subscription page: the plan held, its period and renewal, quota meters, the plans side
by side, and a plan change previewed to the cent before it is confirmed. Choosing a plan
swaps the preview in (htmx); without JavaScript the preview is a page of its own. In the
usage mode there are no plans: the page lists the prices in force."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, flash, make_response, redirect, render_template, request
from flask_login import current_user, login_required

from .. import htmx as hx
from ..errors import ServiceError
from ..gateways import GatewayError
from ..services.metering import catalog
from ..services.payments import cards
from ..services.subscriptions import changes, plans
from ..web import discard_changes
from .helpers import public_url, query_arg, see_other

bp = Blueprint("subscription", __name__, url_prefix="/subscription")
PREVIEW_ID = "plan-preview"
MAX_PLAN_ID = 40


def _context(preview=None, error: str | None = None, chosen: str | None = None) -> dict:
    now = datetime.now(UTC)
    current = catalog.version_at(now)
    overview = changes.describe(current_user)
    offers = plans.list_plans() if overview.offered else []
    return {
        "current": current,
        "scheduled": [v for v in reversed(catalog.list_versions()) if v.effective_from > now],
        "overview": overview,
        "offers": offers,
        "preview": preview,
        "preview_error": error,
        "chosen": chosen,
        "cards_enabled": cards.cards_enabled(),
    }


def _page(status: int = 200, **context):
    return hx.vary_on_htmx(
        make_response(render_template("subscription/index.html", **_context(**context)), status)
    )


def _status(exc: ServiceError) -> int:
    return 422 if exc.http_status == 422 else 409


def _sentence(exc: ServiceError) -> str:
    """A service error as the form shows it: "This plan is not a plan on offer."."""
    text = exc.fields.get("plan_id", exc.message)
    if text.startswith("is "):
        text = f"This plan {text}"
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


@bp.get("/")
@login_required
def index():
    return _page()


@bp.get("/preview")
@login_required
def preview():
    """What choosing a plan would do: the fragment for htmx, else the same on the page."""
    plan_id = query_arg("plan_id", MAX_PLAN_ID)
    if not plan_id and not hx.is_fragment_request(PREVIEW_ID):
        return _page()  # nothing chosen yet
    try:
        result, error, status = changes.preview(current_user, plan_id), None, 200
    except ServiceError as exc:
        discard_changes()
        result, error, status = None, _sentence(exc), _status(exc)
    if hx.is_fragment_request(PREVIEW_ID):
        fragment = render_template(
            "subscription/_preview.html",
            preview=result,
            preview_error=error,
            chosen=plan_id,
            cards_enabled=cards.cards_enabled(),
        )
        return hx.vary_on_htmx(make_response(fragment, status))
    return _page(status, preview=result, error=error, chosen=plan_id)


@bp.post("/change")
@login_required
def change():
    """Confirm the previewed change: one POST. A subscription or upgrade the balances do not
    cover goes on to the card processor's checkout page for its invoice."""
    plan_id = (request.form.get("plan_id") or "").strip()
    if len(plan_id) > MAX_PLAN_ID:
        plan_id = ""
    session = None
    try:
        p = changes.preview(current_user, plan_id)
        if p.kind in (changes.Kind.SUBSCRIBE, changes.Kind.UPGRADE) and cards.cards_enabled():
            _, _, session = changes.checkout_change(
                current_user,
                plan_id,
                success_url=public_url("subscription.checkout_done")
                + "?session_id={CHECKOUT_SESSION_ID}",
                cancel_url=public_url("subscription.index"),
            )
        else:
            changes.change_plan(current_user, plan_id, actor=current_user)
    except ServiceError as exc:
        discard_changes()
        return _page(_status(exc), error=_sentence(exc), chosen=plan_id)
    except GatewayError as exc:
        discard_changes()
        flash(f"The card processor could not open its page: {exc.message}", "error")
        return see_other("subscription.index")
    if session is not None:
        return redirect(session.url, code=303)
    flash(_outcome(p), "success")
    return see_other("subscription.index")


def _outcome(p: changes.Preview) -> str:
    if p.kind is changes.Kind.DOWNGRADE:
        return f"You move to {p.new.name} on {p.effective_at:%Y-%m-%d}."
    if p.kind is changes.Kind.SAME:
        return f"You stay on {p.new.name}."
    overview = changes.describe(current_user)
    if overview.pending_invoice is not None:
        return (
            f"Your change to {p.new.name} waits for payment of "
            f"{overview.pending_invoice.amount_due.format()}."
        )
    return f"You are on {p.new.name} now."


@bp.get("/checkout/done")
@login_required
def checkout_done():
    """Back from the checkout page: the payment pays the change's invoice, and the new plan
    holds."""
    try:
        changes.return_from_checkout(current_user, query_arg("session_id", 255))
    except GatewayError as exc:
        discard_changes()
        flash(f"We could not check the payment yet: {exc.message}", "error")
        return see_other("subscription.index")
    overview = changes.describe(current_user)
    if overview.status == "pending":
        flash("The payment is not complete yet; the change waits for it.", "info")
    elif overview.version is not None:
        flash(f"Paid: you are on {overview.version.name} now.", "success")
    return see_other("subscription.index")


@bp.post("/pending/pay")
@login_required
def pay_pending():
    """Pay a change that waits for payment on the checkout page."""
    overview = changes.describe(current_user)
    change = overview.pending
    if change is None or change.to_version is None or not cards.cards_enabled():
        flash("Nothing waits for payment.", "info")
        return see_other("subscription.index")
    try:
        _, _, session = changes.checkout_change(
            current_user,
            change.to_version.code,
            success_url=public_url("subscription.checkout_done")
            + "?session_id={CHECKOUT_SESSION_ID}",
            cancel_url=public_url("subscription.index"),
        )
    except (ServiceError, GatewayError) as exc:
        discard_changes()
        flash(exc.message, "error")
        return see_other("subscription.index")
    if session is None:
        return see_other("subscription.index")
    return redirect(session.url, code=303)


@bp.post("/pending/cancel")
@login_required
def cancel_pending():
    return _act(changes.cancel_pending, "The change was cancelled; its invoice is void.")


@bp.post("/cancel")
@login_required
def cancel():
    return _act(changes.cancel, "Your plan ends with this period.")


@bp.post("/undo")
@login_required
def undo():
    return _act(changes.undo, "Your plan stays as it is.")


def _act(action, done: str):
    try:
        action(current_user)
    except ServiceError as exc:
        discard_changes()
        flash(_sentence(exc), "error")
        return see_other("subscription.index")
    flash(done, "success")
    return see_other("subscription.index")

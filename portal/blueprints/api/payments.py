"""Payments in the JSON API: saved cards, checkout top-ups, paying an invoice and its
preview. Cards are added on the gateway's page only (the portal's Payment methods page)."""
from __future__ import annotations

from flask import current_app, g, jsonify, request

from ...extensions import db
from ...gateways import GatewayError
from ...models import AttemptStatus, TokenScope
from ...services import card_payments, cards, invoicing, settlement, topups
from ...services.errors import ServiceError, ValidationFailed
from ...web import json_error
from . import bp
from .auth import require_token
from .invoices import invoice_json
from .parsing import json_body, money_field, required

USER = TokenScope.USER


class PaymentsUnavailable(ServiceError):
    code = "payments_unavailable"
    http_status = 503


def _require_cards() -> None:
    if not cards.cards_enabled():
        raise PaymentsUnavailable("card payments are not configured on this portal")


def card_json(card) -> dict:
    return {"id": card.id, "brand": card.brand, "last4": card.last4,
            "exp_month": card.exp_month, "exp_year": card.exp_year,
            "is_default": card.is_default}


@bp.errorhandler(GatewayError)
def _gateway_error(exc: GatewayError):
    db.session.rollback()
    return json_error(502, "gateway_error", exc.message)


@bp.get("/payment-methods")
@require_token(USER)
def list_payment_methods():
    return jsonify([card_json(c) for c in cards.list_cards(g.api_user)])


@bp.post("/payment-methods/<int:card_id>/default")
@require_token(USER)
def default_payment_method(card_id: int):
    card = cards.set_default(g.api_user, card_id)
    db.session.commit()
    return jsonify(card_json(card))


@bp.delete("/payment-methods/<int:card_id>")
@require_token(USER)
def delete_payment_method(card_id: int):
    cards.remove_card(g.api_user, card_id)
    db.session.commit()
    return "", 204


@bp.post("/create-checkout")
@require_token(USER)
def create_checkout():
    """``{purpose: "topup", amount}`` -> the checkout page's URL. With an Idempotency-Key
    header a repeat returns the same page."""
    _require_cards()
    data = json_body()
    purpose = required(data, "purpose")
    if purpose == "subscription":
        raise ValidationFailed.field("purpose", "subscriptions are not offered yet")
    if purpose != "topup":
        raise ValidationFailed.field("purpose", "must be topup")
    amount = money_field(data, "amount", g.api_user.currency)
    base = current_app.config["PUBLIC_URL"]
    session = topups.start_checkout(
        g.api_user, amount, success_url=f"{base}/wallet/top-up/done?session_id="
        "{CHECKOUT_SESSION_ID}", cancel_url=f"{base}/wallet/",
        idempotency_key=request.headers.get("Idempotency-Key") or None)
    db.session.commit()
    return jsonify({"checkout_url": session.url, "session_id": session.gateway_session_id,
                    "purpose": "topup", **session_amount(session)}), 201


def session_amount(session) -> dict:
    from ...money import Money

    return Money(session.amount_minor or 0, session.currency).to_json("amount") | {
        "currency": session.currency}


@bp.get("/invoices/<int:invoice_id>/payment-preview")
@require_token(USER)
def payment_preview(invoice_id: int):
    invoice = invoicing.get_invoice(invoice_id, user=g.api_user)
    if invoice.invoice_status not in invoicing.UNPAID:
        return jsonify({"invoice_id": invoice.id, "status": invoice.invoice_status.label,
                        "parts": [], **invoice.amount_due.to_json("remaining"),
                        "currency": invoice.currency})
    preview = settlement.preview(invoice, g.api_user)
    return jsonify({"invoice_id": invoice.id, "status": invoice.invoice_status.label,
                    "currency": invoice.currency,
                    "parts": [{"tender": str(p.tender), "label": p.label,
                               **p.amount.to_json("amount")} for p in preview.parts],
                    **preview.remaining.to_json("remaining")})


@bp.post("/invoices/<int:invoice_id>/pay")
@require_token(USER)
def pay_invoice(invoice_id: int):
    """Pay now; answers with the invoice and its payments. A paid invoice answers 409."""
    invoice = invoicing.get_invoice(invoice_id, user=g.api_user)
    if invoice.invoice_status not in invoicing.UNPAID:
        return json_error(409, "invalid_transition",
                          f"a {invoice.invoice_status.label} invoice needs no payment")
    result = settlement.settle(g.api_user.id, invoice_id=invoice_id)
    invoice = invoicing.get_invoice(invoice_id, user=g.api_user)
    body = invoice_json(invoice, detail=True)
    body["payment_outcome"] = _outcome(invoice, result)
    return jsonify(body)


def _outcome(invoice, result) -> str:
    """paid; requires_action (a card payment waits for 3-D Secure: the invoice page's
    "Complete payment"); processing (a card charge not answered yet); failed (every card was
    declined); partial (some of it is paid); unpaid (nothing could pay any of it)."""
    if invoice.invoice_status is invoicing.S.PAID:
        return "paid"
    waiting = card_payments.open_attempt_for(g.api_user, invoice)
    if invoice.id in result.needs_action or (
            waiting is not None and waiting.status == AttemptStatus.REQUIRES_ACTION):
        return "requires_action"
    if waiting is not None:
        return "processing"
    if invoice.id in result.failed:
        return "failed"
    return "partial" if invoice.amount_paid_minor else "unpaid"

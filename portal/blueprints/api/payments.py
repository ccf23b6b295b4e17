"""Payments in the JSON API: saved cards, checkout top-ups, paying an invoice and its
preview. Cards are added on the gateway's page only (the portal's Payment methods page)."""

from __future__ import annotations

from typing import cast

from flask import current_app, g

from ...errors import Conflict, InvalidTransition, ServiceError, ValidationFailed
from ...gateways import GatewayError
from ...models import TokenScope
from ...money import Money
from ...services.invoicing import invoices
from ...services.payments import cards, pay, settlement, topups
from ...services.subscriptions import changes
from ...web import discard_changes, json_error
from . import bp
from .fields import idempotency_key, to_money
from .invoices import detail_fields
from .models import (
    CardList,
    CardOut,
    CheckoutOut,
    CreateCheckout,
    InvoicePaid,
    PaymentOutcome,
    PaymentPreview,
    PreviewPart,
)
from .spec import operation

USER = TokenScope.USER


class PaymentsUnavailable(ServiceError):
    code = "payments_unavailable"
    http_status = 503


def _require_cards() -> None:
    if not cards.cards_enabled():
        raise PaymentsUnavailable("card payments are not configured on this portal")


def card_json(card) -> CardOut:
    return CardOut(
        id=card.id,
        brand=card.brand,
        last4=card.last4,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
        is_default=card.is_default,
    )


@bp.errorhandler(GatewayError)
def _gateway_error(exc: GatewayError):
    discard_changes()
    return json_error(502, "gateway_error", exc.message)


@bp.get("/payment-methods")
@operation(
    summary="The saved cards, default first",
    tag="Payments",
    scopes=(USER,),
    responses={200: CardList},
)
def list_payment_methods():
    return CardList([card_json(c) for c in cards.list_cards(g.api_user)])


@bp.post("/payment-methods/<int:card_id>/default")
@operation(
    summary="Make a card the default", tag="Payments", scopes=(USER,), responses={200: CardOut}
)
def default_payment_method(card_id: int):
    card = cards.set_default(g.api_user, card_id)
    return card_json(card)


@bp.delete("/payment-methods/<int:card_id>")
@operation(
    summary="Remove a card", tag="Payments", scopes=(USER,), responses={204: None}, errors=(409,)
)
def delete_payment_method(card_id: int):
    """409 conflict when the last-card rule forbids it."""
    cards.remove_card(g.api_user, card_id)


@bp.post("/create-checkout")
@operation(
    summary="Open a checkout page for a top-up or a plan",
    tag="Payments",
    scopes=(USER,),
    body=CreateCheckout,
    responses={201: CheckoutOut},
    errors=(409, 502, 503),
    idempotency_key="topup: a repeat returns the same page; with another amount it is 409 "
    "idempotency_conflict",
)
def create_checkout(body: CreateCheckout):
    """``{purpose: "topup", amount}`` -> the checkout page's URL: open it in a browser. An
    amount outside TOPUP_MIN..TOPUP_MAX is 422.

    ``{purpose: "subscription", plan_id}`` subscribes or upgrades (as ``POST
    /subscription``) and opens the page for what the balances do not cover of the change's
    invoice; ``checkout_url`` is null when nothing is left to pay (the plan is active). A
    downgrade needs no payment: 409."""
    base = current_app.config["PUBLIC_URL"]
    if body.purpose == "subscription":
        return _subscription_checkout(body, base)
    if body.amount is None:
        raise ValidationFailed.field("amount", "is required")
    amount = to_money(body.amount, g.api_user.currency, "amount")
    _require_cards()
    session = topups.start_checkout(
        g.api_user,
        amount,
        success_url=f"{base}/wallet/top-up/done?session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=f"{base}/wallet/",
        idempotency_key=idempotency_key(),
    )
    return CheckoutOut(
        checkout_url=session.url,
        session_id=session.gateway_session_id,
        purpose="topup",
        **session_amount(session),
    ), 201


def _subscription_checkout(body: CreateCheckout, base: str):
    if body.plan_id is None:
        raise ValidationFailed.field("plan_id", "is required")
    if body.amount is not None:
        raise ValidationFailed.field("amount", "is for top-ups; a plan's price decides")
    _require_cards()
    kind = changes.preview(g.api_user, body.plan_id).kind
    if kind not in (changes.Kind.SUBSCRIBE, changes.Kind.UPGRADE):
        raise Conflict(
            "nothing to pay now: a downgrade takes effect at the period's end (POST /subscription)",
            fields={"plan_id": "is not a subscription or an upgrade"},
        )
    _, invoice, session = changes.checkout_change(
        g.api_user,
        body.plan_id,
        success_url=f"{base}/subscription/checkout/done?session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=f"{base}/subscription/",
    )
    if session is None:
        return CheckoutOut(
            checkout_url=None,
            session_id=None,
            purpose="subscription",
            **Money(0, g.api_user.currency).to_json("amount"),
            currency=g.api_user.currency,
            invoice_id=invoice.id if invoice else None,
        ), 201
    return CheckoutOut(
        checkout_url=session.url,
        session_id=session.gateway_session_id,
        purpose="subscription",
        **session_amount(session),
        invoice_id=invoice.id if invoice else None,
    ), 201


def session_amount(session) -> dict:
    return Money(session.amount_minor or 0, session.currency).to_json("amount") | {
        "currency": session.currency
    }


@bp.get("/invoices/<int:invoice_id>/payment-preview")
@operation(
    summary="How Pay now would pay an invoice",
    tag="Payments",
    scopes=(USER,),
    responses={200: PaymentPreview},
)
def payment_preview(invoice_id: int):
    invoice = invoices.get_for_owner(g.api_user, invoice_id)
    if invoice.invoice_status not in invoices.UNPAID:
        return PaymentPreview(
            invoice_id=invoice.id,
            status=invoice.invoice_status.label,
            parts=[],
            **invoice.amount_due.to_json("remaining"),
            currency=invoice.currency,
        )
    preview = settlement.preview(invoice, g.api_user)
    return PaymentPreview(
        invoice_id=invoice.id,
        status=invoice.invoice_status.label,
        currency=invoice.currency,
        parts=[
            PreviewPart(tender=str(p.tender), label=p.label, **p.amount.to_json("amount"))
            for p in preview.parts
        ],
        **preview.remaining.to_json("remaining"),
    )


@bp.post("/invoices/<int:invoice_id>/pay")
@operation(
    summary="Pay now",
    tag="Payments",
    scopes=(USER,),
    responses={200: InvoicePaid},
    errors=(409, 502),
)
def pay_invoice(invoice_id: int):
    """Pay now; answers with the invoice, its payments and the payment_outcome. A paid
    invoice is 409 invalid_transition."""
    outcome = pay.pay_invoice(g.api_user, invoice_id)
    if outcome.kind is pay.Outcome.NOTHING_TO_PAY:
        label = outcome.invoice.invoice_status.label
        raise InvalidTransition(f"a {label} invoice needs no payment")
    # NOTHING_TO_PAY is refused above, so the kind is one of the documented outcomes
    payment_outcome = cast(PaymentOutcome, outcome.kind.value)
    return InvoicePaid(**detail_fields(outcome.invoice), payment_outcome=payment_outcome)

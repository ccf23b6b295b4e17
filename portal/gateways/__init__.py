"""Payment gateways: ``base`` is the protocol and its plain data; ``stripe`` is the Stripe
implementation. ``get_gateway(app)`` builds the app's gateway once from its config."""

from __future__ import annotations

from flask import Flask, current_app

from .base import (
    CardDeclined,
    CardInfo,
    ChargeInfo,
    CheckoutSessionInfo,
    DisputeInfo,
    GatewayError,
    GatewayEvent,
    GatewayNotConfigured,
    LivemodeMismatch,
    PaymentGateway,
    PaymentResult,
    PaymentStatus,
    RefundResult,
    SetupIntentInfo,
    SignatureError,
)

__all__ = [
    "CardDeclined",
    "CardInfo",
    "ChargeInfo",
    "CheckoutSessionInfo",
    "DisputeInfo",
    "GatewayError",
    "GatewayEvent",
    "GatewayNotConfigured",
    "LivemodeMismatch",
    "PaymentGateway",
    "PaymentResult",
    "PaymentStatus",
    "RefundResult",
    "SetupIntentInfo",
    "SignatureError",
    "get_gateway",
]

_EXTENSION = "portal.gateway"


def get_gateway(app: Flask | None = None) -> PaymentGateway:
    """The app's payment gateway (built on first use and kept on the app).

    A test may put its own under ``app.extensions["portal.gateway"]``. Raises
    GatewayNotConfigured when STRIPE_SECRET_KEY is not set.
    """
    app = app or current_app
    gateway = app.extensions.get(_EXTENSION)
    if gateway is None:
        key = app.config.get("STRIPE_SECRET_KEY") or ""
        if not key:
            raise GatewayNotConfigured("card payments are not configured (STRIPE_SECRET_KEY)")
        from .stripe import StripeGateway

        gateway = StripeGateway(
            secret_key=key,
            webhook_secret=app.config.get("STRIPE_WEBHOOK_SECRET") or "",
            publishable_key=app.config.get("STRIPE_PUBLISHABLE_KEY") or "",
            api_base=app.config.get("STRIPE_API_BASE") or "https://api.stripe.com",
            timeout_seconds=int(app.config.get("STRIPE_TIMEOUT_SECONDS") or 10),
        )
        app.extensions[_EXTENSION] = gateway
    return gateway

"""Rate limits that several views share."""

from __future__ import annotations

from flask import current_app, g
from flask_login import current_user

from ..extensions import limiter


def _voucher_limit() -> str:
    return current_app.config["VOUCHER_RATE_LIMIT"]


def _redeeming_user() -> str:
    """The user trying a code: the API token's owner, else the logged-in user."""
    user = g.get("api_user") or current_user
    return f"user:{user.id}"


# Code guessing: one counter per user for the Wallet form and POST /vouchers/redeem together,
# so using both does not double the attempts.
voucher_redeem_limit = limiter.shared_limit(
    _voucher_limit, scope="voucher-redeem", key_func=_redeeming_user
)

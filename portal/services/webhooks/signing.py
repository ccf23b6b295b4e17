"""The signature of a delivery: ``Billing-Signature: t=<unix time>,v1=<hex>``, where each v1
is HMAC-SHA256, keyed with an endpoint secret, of ``<t>.<raw body>``. Within a day of a
rotation the header carries a v1 for the new secret and one for the previous."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

HEADER = "Billing-Signature"
PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def header(keys: Iterable[str], timestamp: int, body: bytes) -> str:
    return ",".join([f"t={timestamp}"] + [f"v1={signature(k, timestamp, body)}" for k in keys])

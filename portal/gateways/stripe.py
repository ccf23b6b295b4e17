"""The Stripe gateway: the only module that imports ``stripe``.

One ``stripe.StripeClient`` per gateway, with the API base from ``STRIPE_API_BASE`` (the
local stand-in in the demo and the tests), a short timeout and no automatic network
retries: a request that timed out is never sent again by the library, because we resolve
unknown outcomes ourselves (look the payment up by the metadata we gave it).

Every POST carries an idempotency key: the caller's (derived from an attempt row it
committed first, e.g. ``inv:42:att:1``), or a fresh one for requests that create nothing
worth deduplicating across attempts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import stripe

from ..money import Money
from .base import (
    CardDeclined,
    CardInfo,
    ChargeInfo,
    CheckoutSessionInfo,
    DisputeInfo,
    GatewayError,
    GatewayEvent,
    LivemodeMismatch,
    PaymentResult,
    PaymentStatus,
    RefundResult,
    SetupIntentInfo,
    SignatureError,
    from_stripe_amount,
    to_stripe_amount,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_API_BASE = "https://api.stripe.com"
IDEMPOTENCY_METADATA_KEY = "idempotency_key"
_PI_STATUS = {
    "succeeded": PaymentStatus.SUCCEEDED,
    "processing": PaymentStatus.PROCESSING,
    "requires_capture": PaymentStatus.PROCESSING,
    "requires_action": PaymentStatus.REQUIRES_ACTION,
    "requires_confirmation": PaymentStatus.REQUIRES_ACTION,
    "requires_payment_method": PaymentStatus.FAILED,
    "canceled": PaymentStatus.FAILED,
}
# The issuer asks for the customer: not a decline, a "complete payment" step.
_AUTHENTICATION_CODES = ("authentication_required",)


def key_is_live(secret_key: str) -> bool:
    return secret_key.startswith(("sk_live_", "rk_live_"))


def _plain(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict()
    return dict(obj)


def _ref(value: Any) -> str | None:
    """An expandable field: its id whether it came as a string or as an object."""
    if value is None or isinstance(value, str):
        return value
    return value.get("id")


def _idem(prefix: str, given: str | None) -> str:
    return given or f"{prefix}:{uuid.uuid4().hex}"


def _error_of(exc: stripe.StripeError) -> dict[str, Any]:
    """The ``error`` object of a failed call's JSON body (empty when there is none)."""
    body = exc.json_body
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


class StripeGateway:
    identifier = "stripe"

    def __init__(
        self,
        *,
        secret_key: str,
        webhook_secret: str = "",
        publishable_key: str = "",
        api_base: str = DEFAULT_API_BASE,
        timeout_seconds: float = 10.0,
        webhook_tolerance_seconds: int = 300,
    ):
        if not secret_key.startswith(("sk_", "rk_")):
            raise GatewayError(
                "STRIPE_SECRET_KEY must be a secret (sk_...) or restricted (rk_...) key"
            )
        self.livemode = key_is_live(secret_key)
        self.publishable_key = publishable_key
        self.api_base = api_base.rstrip("/")
        self._webhook_secret = webhook_secret
        self._tolerance = webhook_tolerance_seconds
        # requests' own timeout; max_network_retries=0: the library never resends a request
        # whose answer it did not get.
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": self.api_base},
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout_seconds),
        )

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except stripe.CardError:
            raise
        except stripe.APIConnectionError as exc:
            detail = (str(exc).strip().splitlines() or ["network error"])[-1]
            raise GatewayError(
                f"{what}: no answer from Stripe ({detail})", outcome_unknown=True, code="connection"
            ) from None
        except stripe.IdempotencyError as exc:
            raise GatewayError(
                f"{what}: {exc.user_message}", code="idempotency_error", http_status=exc.http_status
            ) from None
        except stripe.RateLimitError as exc:
            raise GatewayError(
                f"{what}: rate limited ({exc.user_message})",
                code="rate_limit",
                http_status=exc.http_status,
            ) from None
        except stripe.InvalidRequestError as exc:
            raise GatewayError(
                f"{what}: {exc.user_message}",
                code=exc.code or "invalid_request",
                http_status=exc.http_status,
            ) from None
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise GatewayError(
                f"{what}: {exc.user_message}", code="authentication", http_status=exc.http_status
            ) from None
        except stripe.StripeError as exc:
            # 5xx, and 409 (the same idempotency key is still being processed): Stripe may
            # or may not have done it.
            status = exc.http_status
            raise GatewayError(
                f"{what}: Stripe answered {status}: {exc.user_message}",
                outcome_unknown=status is None or status >= 500 or status == 409,
                code="api_error",
                http_status=status,
            ) from None

    @property
    def _v1(self):
        return self._client.v1

    # -- customers and cards ----------------------------------------------------------------
    def ensure_customer(self, user_id: int, email: str, name: str = "") -> str:
        """The customer for this user: found by email and our user id, else created."""
        found = _plain(
            self._call(
                "list customers", lambda: self._v1.customers.list({"email": email, "limit": 100})
            )
        )
        for customer in found.get("data") or []:
            if (customer.get("metadata") or {}).get("user_id") == str(user_id):
                return customer["id"]
        params = {"email": email, "metadata": {"user_id": str(user_id)}}
        if name:
            params["name"] = name
        # The key names this exact request: a user id seen again with other details (another
        # database on the same account, a changed email) is a new customer, not a refusal.
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        created = self._call(
            "create customer",
            lambda: self._v1.customers.create(
                params, {"idempotency_key": f"customer:user:{user_id}:{digest}"}
            ),
        )
        return _plain(created)["id"]

    def create_setup_intent(
        self,
        customer: str,
        *,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> SetupIntentInfo:
        params: dict[str, Any] = {
            "customer": customer,
            "usage": "off_session",
            "payment_method_types": ["card"],
        }
        if metadata:
            params["metadata"] = metadata
        intent = self._call(
            "create setup intent",
            lambda: self._v1.setup_intents.create(
                params, {"idempotency_key": _idem("seti", idempotency_key)}
            ),
        )
        return self._setup_info(intent)

    def retrieve_setup_intent(self, setup_intent: str) -> SetupIntentInfo:
        return self._setup_info(
            self._call(
                "retrieve setup intent", lambda: self._v1.setup_intents.retrieve(setup_intent)
            )
        )

    @staticmethod
    def _setup_info(intent) -> SetupIntentInfo:
        intent = _plain(intent)
        pm = intent.get("payment_method")
        return SetupIntentInfo(
            id=intent["id"],
            client_secret=intent.get("client_secret") or "",
            status=intent.get("status") or "",
            customer=intent.get("customer"),
            payment_method=_ref(pm),
        )

    def get_payment_method(self, payment_method: str) -> CardInfo:
        return self._card(
            self._call(
                "retrieve payment method", lambda: self._v1.payment_methods.retrieve(payment_method)
            )
        )

    def attach_payment_method(
        self, payment_method: str, customer: str, *, idempotency_key: str | None = None
    ) -> CardInfo:
        try:
            pm = self._call(
                "attach payment method",
                lambda: self._v1.payment_methods.attach(
                    payment_method,
                    {"customer": customer},
                    {"idempotency_key": _idem("attach", idempotency_key)},
                ),
            )
        except stripe.CardError as exc:
            error = _error_of(exc)
            raise CardDeclined(
                error.get("message") or "The card was declined.",
                decline_code=error.get("decline_code") or error.get("code"),
                payment_method=payment_method,
            ) from None
        return self._card(pm)

    def detach_payment_method(
        self, payment_method: str, *, idempotency_key: str | None = None
    ) -> None:
        self._call(
            "detach payment method",
            lambda: self._v1.payment_methods.detach(
                payment_method, None, {"idempotency_key": _idem("detach", idempotency_key)}
            ),
        )

    @staticmethod
    def _card(pm) -> CardInfo:
        pm = _plain(pm)
        card = pm.get("card") or {}
        if pm.get("type") != "card" or not card:
            raise GatewayError(f"payment method {pm['id']} is not a card")
        return CardInfo(
            id=pm["id"],
            brand=card.get("brand") or "card",
            last4=card.get("last4") or "",
            exp_month=int(card.get("exp_month") or 0),
            exp_year=int(card.get("exp_year") or 0),
            fingerprint=card.get("fingerprint") or "",
            customer=_ref(pm.get("customer")),
        )

    # -- payments ---------------------------------------------------------------------------
    def create_payment_intent(
        self,
        customer: str,
        payment_method: str,
        amount: Money,
        *,
        idempotency_key: str,
        metadata: dict[str, str] | None = None,
    ) -> PaymentResult:
        """Charge a saved card now, without the customer (off_session, confirm=True).

        A decline is a result (status FAILED with its decline code), not an exception; an
        issuer that wants 3-D Secure gives REQUIRES_ACTION. GatewayError with
        ``outcome_unknown`` means: look it up with find_payment_intent_by_idempotency_key.
        """
        if not idempotency_key:
            raise ValueError("a payment needs the idempotency key of its attempt row")
        params = {
            "amount": to_stripe_amount(amount),
            "currency": amount.currency.lower(),
            "customer": customer,
            "payment_method": payment_method,
            "confirm": True,
            "off_session": True,
            "metadata": {**(metadata or {}), IDEMPOTENCY_METADATA_KEY: idempotency_key},
        }
        try:
            intent = self._call(
                "create payment intent",
                lambda: self._v1.payment_intents.create(
                    params, {"idempotency_key": idempotency_key}
                ),
            )
        except stripe.CardError as exc:
            return self._declined(exc)
        return self._payment(intent)

    def confirm_payment_intent(
        self,
        payment_intent: str,
        *,
        payment_method: str | None,
        return_url: str,
        idempotency_key: str,
    ) -> PaymentResult:
        """Confirm again with the customer present (the "complete payment" step): a card that
        needs 3-D Secure gives REQUIRES_ACTION with ``next_action_url`` to send them to."""
        params: dict[str, Any] = {"return_url": return_url}
        if payment_method:
            params["payment_method"] = payment_method
        try:
            intent = self._call(
                "confirm payment intent",
                lambda: self._v1.payment_intents.confirm(
                    payment_intent, params, {"idempotency_key": idempotency_key}
                ),
            )
        except stripe.CardError as exc:
            return self._declined(exc)
        return self._payment(intent)

    def retrieve_payment_intent(self, payment_intent: str) -> PaymentResult:
        return self._payment(
            self._call(
                "retrieve payment intent", lambda: self._v1.payment_intents.retrieve(payment_intent)
            )
        )

    def _payment_intents_of(self, customer: str) -> Iterator[Any]:
        # Listing by customer is read-after-write consistent (search is not).
        params: dict[str, Any] = {"customer": customer, "limit": 100}
        while True:
            page = _plain(
                self._call(
                    "list payment intents", lambda: self._v1.payment_intents.list(dict(params))
                )
            )
            data = page.get("data") or []
            yield from data
            if not page.get("has_more") or not data:
                return
            params["starting_after"] = data[-1]["id"]

    def find_payment_intent_by_metadata(
        self, customer: str, key: str, value: str
    ) -> PaymentResult | None:
        for intent in self._payment_intents_of(customer):
            if (intent.get("metadata") or {}).get(key) == value:
                return self._payment(intent)
        return None

    def find_payment_intent_by_idempotency_key(
        self, customer: str, idempotency_key: str
    ) -> PaymentResult | None:
        """Recovery after an unknown outcome: the intent this attempt created, or None when
        the request never took effect (then the attempt may be retried under a new key)."""
        return self.find_payment_intent_by_metadata(
            customer, IDEMPOTENCY_METADATA_KEY, idempotency_key
        )

    def _payment(self, intent) -> PaymentResult:
        data = _plain(intent)
        status = data.get("status") or ""
        error = data.get("last_payment_error") or {}
        result_status = _PI_STATUS.get(status, PaymentStatus.PROCESSING)
        decline = None
        if result_status is PaymentStatus.FAILED:
            decline = (
                error.get("decline_code")
                or error.get("code")
                or ("canceled" if status == "canceled" else "declined")
            )
            if error.get("code") in _AUTHENTICATION_CODES:
                result_status = PaymentStatus.REQUIRES_ACTION
        next_action = data.get("next_action") or {}
        url = (next_action.get("redirect_to_url") or {}).get("url")
        amount = data.get("amount")
        pm = data.get("payment_method") or (error.get("payment_method") or {})
        return PaymentResult(
            id=data.get("id"),
            status=result_status,
            amount=from_stripe_amount(amount, data["currency"]) if amount is not None else None,
            decline_code=decline,
            message=error.get("message"),
            next_action_url=url,
            client_secret=data.get("client_secret"),
            payment_method=_ref(pm),
            customer=_ref(data.get("customer")),
            metadata=dict(data.get("metadata") or {}),
        )

    def _declined(self, exc: stripe.CardError) -> PaymentResult:
        error = _error_of(exc)
        intent = error.get("payment_intent")
        code = error.get("code")
        if intent:
            result = self._payment(
                {
                    **intent,
                    "last_payment_error": {
                        **(intent.get("last_payment_error") or {}),
                        **{
                            k: error[k] for k in ("code", "decline_code", "message") if error.get(k)
                        },
                    },
                }
            )
            if code in _AUTHENTICATION_CODES:
                return PaymentResult(
                    **{
                        **result.__dict__,
                        "status": PaymentStatus.REQUIRES_ACTION,
                        "decline_code": code,
                    }
                )
            return result
        status = (
            PaymentStatus.REQUIRES_ACTION if code in _AUTHENTICATION_CODES else PaymentStatus.FAILED
        )
        return PaymentResult(
            id=None,
            status=status,
            decline_code=error.get("decline_code") or code or "declined",
            message=error.get("message"),
        )

    def refund(
        self, payment_intent: str, amount: Money | None = None, *, idempotency_key: str
    ) -> RefundResult:
        params: dict[str, Any] = {"payment_intent": payment_intent}
        if amount is not None:
            params["amount"] = to_stripe_amount(amount)
        refund = _plain(
            self._call(
                "create refund",
                lambda: self._v1.refunds.create(params, {"idempotency_key": idempotency_key}),
            )
        )
        return self._refund(refund)

    @staticmethod
    def _refund(refund) -> RefundResult:
        refund = _plain(refund)
        return RefundResult(
            id=refund["id"],
            status=refund.get("status") or "",
            amount=from_stripe_amount(int(refund["amount"]), refund["currency"]),
            payment_intent=_ref(refund.get("payment_intent")),
            charge=_ref(refund.get("charge")),
            created=int(refund.get("created") or 0),
        )

    def retrieve_charge(self, charge: str) -> ChargeInfo:
        """The charge now, with every refund it has (listed apart: recent API versions leave
        ``refunds`` off the charge)."""
        data = _plain(self._call("retrieve charge", lambda: self._v1.charges.retrieve(charge)))
        currency = data["currency"]
        captured = data.get("amount_captured")
        refunds: list[RefundResult] = []
        params: dict[str, Any] = {"charge": data["id"], "limit": 100}
        while True:
            page = _plain(self._call("list refunds", lambda: self._v1.refunds.list(dict(params))))
            items = page.get("data") or []
            refunds += [self._refund(item) for item in items]
            if not page.get("has_more") or not items:
                break
            params["starting_after"] = items[-1]["id"]
        return ChargeInfo(
            id=data["id"],
            payment_intent=_ref(data.get("payment_intent")),
            amount=from_stripe_amount(
                int(data["amount"] if captured is None else captured), currency
            ),
            amount_refunded=from_stripe_amount(int(data.get("amount_refunded") or 0), currency),
            refunds=tuple(refunds),
        )

    def retrieve_dispute(self, dispute: str) -> DisputeInfo:
        data = _plain(self._call("retrieve dispute", lambda: self._v1.disputes.retrieve(dispute)))
        return DisputeInfo(
            id=data["id"],
            charge=_ref(data.get("charge")),
            payment_intent=_ref(data.get("payment_intent")),
            amount=from_stripe_amount(int(data["amount"]), data["currency"]),
            reason=str(data.get("reason") or ""),
            status=str(data.get("status") or ""),
        )

    # -- Checkout (the hosted pages) --------------------------------------------------------
    def create_checkout_session(
        self,
        customer: str,
        amount: Money,
        *,
        success_url: str,
        cancel_url: str,
        metadata: dict[str, str] | None = None,
        description: str = "",
        idempotency_key: str | None = None,
        save_card: bool = False,
    ) -> CheckoutSessionInfo:
        """A one-off payment on Stripe's hosted page (a balance top-up, an invoice). The
        metadata goes on the session and on its payment intent, so either webhook can be
        traced back. ``save_card``: the card is kept on the customer for later charges
        (``setup_future_usage``)."""
        metadata = dict(metadata or {})
        payment_intent_data: dict[str, Any] = {"metadata": metadata}
        if save_card:
            payment_intent_data["setup_future_usage"] = "off_session"
        params = {
            "mode": "payment",
            "customer": customer,
            "success_url": success_url,
            "cancel_url": cancel_url,
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": amount.currency.lower(),
                        "unit_amount": to_stripe_amount(amount),
                        "product_data": {"name": description or "Payment"},
                    },
                }
            ],
            "payment_intent_data": payment_intent_data,
            "metadata": metadata,
        }
        session = self._call(
            "create checkout session",
            lambda: self._v1.checkout.sessions.create(
                params, {"idempotency_key": _idem("checkout", idempotency_key)}
            ),
        )
        return self._session(session)

    def create_setup_session(
        self,
        customer: str,
        *,
        success_url: str,
        cancel_url: str,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> CheckoutSessionInfo:
        """ "Add a card" on Stripe's hosted page (Checkout in setup mode): the card number is
        typed there, never on our pages; the session's setup intent names the new card."""
        metadata = dict(metadata or {})
        params = {
            "mode": "setup",
            "customer": customer,
            "payment_method_types": ["card"],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "setup_intent_data": {"metadata": metadata},
            "metadata": metadata,
        }
        session = self._call(
            "create setup session",
            lambda: self._v1.checkout.sessions.create(
                params, {"idempotency_key": _idem("setup-session", idempotency_key)}
            ),
        )
        return self._session(session)

    def retrieve_checkout_session(self, session: str) -> CheckoutSessionInfo:
        return self._session(
            self._call(
                "retrieve checkout session", lambda: self._v1.checkout.sessions.retrieve(session)
            )
        )

    @staticmethod
    def _session(session) -> CheckoutSessionInfo:
        data = _plain(session)
        ref = _ref
        total = data.get("amount_total")
        return CheckoutSessionInfo(
            id=data["id"],
            url=data.get("url"),
            status=data.get("status"),
            payment_status=data.get("payment_status"),
            mode=data.get("mode"),
            customer=ref(data.get("customer")),
            payment_intent=ref(data.get("payment_intent")),
            setup_intent=ref(data.get("setup_intent")),
            amount_total=from_stripe_amount(total, data["currency"])
            if total is not None and data.get("currency")
            else None,
            metadata=dict(data.get("metadata") or {}),
        )

    # -- webhooks ---------------------------------------------------------------------------
    def construct_event(self, payload: bytes, sig_header: str | None) -> GatewayEvent:
        """Verify the Stripe-Signature header over the raw body, then parse.

        Raises SignatureError (bad or missing signature, stale timestamp, not an event) or
        LivemodeMismatch (signed, but from the other mode than our key's).
        """
        if not self._webhook_secret:
            raise SignatureError("STRIPE_WEBHOOK_SECRET is not set: no webhook can verify")
        try:
            text = payload.decode("utf-8")
            stripe.WebhookSignature.verify_header(
                text, sig_header or "", self._webhook_secret, self._tolerance
            )
            # Floats (none carry money in Stripe's API) keep their exact text.
            data = json.loads(text, parse_float=str)
        except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
            raise SignatureError(f"webhook rejected: {exc}") from None
        try:
            event = GatewayEvent.from_payload(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise SignatureError(f"webhook rejected: not an event ({exc})") from None
        if event.livemode != self.livemode:
            raise LivemodeMismatch(event)
        return event

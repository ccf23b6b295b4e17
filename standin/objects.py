"""The stand-in's own Stripe objects and payment flows, on top of localstripe's.

localstripe keeps every object in one in-memory store and knows the test cards (which ones
need 3-D Secure, which are declined when attached or when charged). What it lacks is added
here: Checkout Sessions, disputes, decline codes, Stripe's off-session behaviour for cards
that need authentication, a redirect-based 3-D Secure step, and the webhook events that go
with them.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

from localstripe import resources as ls
from localstripe.errors import UserError
from localstripe.webhooks import schedule_webhook

TEST_MODE_BANNER = "Sandbox: test mode, no real card is charged"
DISPUTE_CARD = "4000000000000259"  # the charge succeeds, then the cardholder disputes it
DECLINE_CODES = {
    "4000000000000341": "generic_decline",
    "4000000000009995": "insufficient_funds",
    "4000008260003178": "insufficient_funds",
    "4000008400001629": "card_declined",
}
SESSION_LIFETIME_SECONDS = 24 * 3600


class Sandbox:
    """Where the stand-in is reachable (set once the port is known)."""

    base_url = "http://127.0.0.1:8420"


def card_error(
    message: str,
    *,
    code: str,
    decline_code: str | None = None,
    intent: ls.StripeObject | None = None,
    payment_method=None,
    charge: str | None = None,
) -> UserError:
    contents = {"code": code, "message": message}
    if decline_code:
        contents["decline_code"] = decline_code
    if charge:
        contents["charge"] = charge
    if payment_method is not None:
        contents["payment_method"] = payment_method._export()
    if intent is not None:
        contents["payment_intent" if intent.object == "payment_intent" else "setup_intent"] = (
            intent._export()
        )
    error = UserError(402, message, contents)
    error.body["error"]["type"] = "card_error"
    return error


class SandboxPaymentIntent(ls.PaymentIntent):
    """localstripe's PaymentIntent with Stripe's last_payment_error (decline codes)."""

    @property
    def last_payment_error(self):
        own = getattr(self, "_last_error", None)
        return own if own else ls.PaymentIntent.last_payment_error.fget(self)


# -- payment intents ------------------------------------------------------------------------
def create_payment_intent(data: dict) -> SandboxPaymentIntent:
    """POST /v1/payment_intents, with confirm, off_session and return_url as Stripe has them."""
    confirm = ls.try_convert_to_bool(data.pop("confirm", None))
    off_session = ls.try_convert_to_bool(data.pop("off_session", None))
    return_url = data.pop("return_url", None)
    description = data.pop("description", None)
    for ignored in (
        "error_on_requires_action",
        "setup_future_usage",
        "receipt_email",
        "statement_descriptor",
        "automatic_payment_methods",
    ):
        data.pop(ignored, None)
    if off_session not in (None, True, False) or confirm not in (None, True, False):
        raise UserError(400, "Bad request")
    if off_session and not confirm:
        raise UserError(400, "off_session can only be used with confirm=true")
    intent = SandboxPaymentIntent(**data)
    intent.description = description
    if confirm:
        confirm_payment_intent(intent, off_session=bool(off_session), return_url=return_url)
    return intent


def confirm_payment_intent(
    intent: SandboxPaymentIntent,
    *,
    off_session: bool = False,
    return_url: str | None = None,
    payment_method: str | None = None,
):
    if intent.status not in ("requires_payment_method", "requires_confirmation", "requires_action"):
        raise UserError(
            400, f"This PaymentIntent's status is {intent.status}; it cannot be confirmed."
        )
    if payment_method:
        ls.PaymentMethod._api_retrieve(payment_method)  # 404 if unknown
        intent.payment_method = payment_method
    if not intent.payment_method:
        raise UserError(
            400, "You cannot confirm this PaymentIntent because it's missing a payment method."
        )
    pm = ls.PaymentMethod._api_retrieve(intent.payment_method)
    intent.latest_charge = None  # a new attempt after a decline
    intent.next_action = None
    intent._authentication_failed = False
    intent._last_error = None
    if pm._requires_authentication():
        if off_session:
            # Stripe: an off-session payment the issuer wants authenticated fails with
            # authentication_required; the customer has to come back and confirm it.
            message = "Your card was declined. This transaction requires authentication."
            intent._last_error = {
                "code": "authentication_required",
                "decline_code": "authentication_required",
                "message": message,
                "payment_method": pm._export(),
            }
            intent.payment_method = None
            schedule_webhook(ls.Event("payment_intent.payment_failed", intent))
            raise card_error(
                message,
                code="authentication_required",
                decline_code="authentication_required",
                intent=intent,
                payment_method=pm,
            )
        intent._return_url = return_url
        if return_url:
            intent.next_action = {
                "type": "redirect_to_url",
                "redirect_to_url": {"url": authenticate_url(intent), "return_url": return_url},
            }
        else:
            intent.next_action = {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {
                    "type": "three_d_secure_redirect",
                    "stripe_js": authenticate_url(intent),
                },
            }
        return
    charge_payment_intent(intent, pm)


def charge_payment_intent(intent: SandboxPaymentIntent, pm) -> None:
    intent.latest_charge = None

    def declined():
        charge = intent.latest_charge
        code = DECLINE_CODES.get(getattr(pm, "_card_number", ""), "generic_decline")
        message = "Your card was declined."
        intent._last_error = {
            "code": "card_declined",
            "decline_code": code,
            "message": message,
            "charge": charge.id,
            "payment_method": pm._export(),
        }
        schedule_webhook(ls.Event("payment_intent.payment_failed", intent))
        raise card_error(
            message,
            code="card_declined",
            decline_code=code,
            intent=intent,
            payment_method=pm,
            charge=charge.id,
        )

    intent._create_charge(on_failure_now=declined)
    if getattr(pm, "_card_number", "") == DISPUTE_CARD and intent.status == "succeeded":
        Dispute(intent.latest_charge)


def authenticate_url(intent) -> str:
    return f"{Sandbox.base_url}/sandbox/authenticate/{intent.id}?" + urlencode(
        {"client_secret": intent.client_secret}
    )


def list_payment_intents(customer=None, limit=None, starting_after=None, **kwargs):
    if kwargs:
        raise UserError(400, "Unexpected " + ", ".join(kwargs))
    li = ls.List("/v1/payment_intents", limit=limit, starting_after=starting_after)
    items = [v for k, v in ls.store.items() if k.startswith("payment_intent:")]
    if customer is not None:
        items = [i for i in items if i.customer == customer]
    # Stripe lists newest first.
    li._list = sorted(items, key=lambda i: i.created, reverse=True) if items else []
    return li


# -- setup intents --------------------------------------------------------------------------
def confirm_setup_intent(intent: ls.SetupIntent, payment_method) -> None:
    """Confirm with a card; attaches it to the intent's customer once it succeeds."""
    intent.next_action = None
    intent.last_setup_error = None
    try:
        intent._attach_pm(payment_method)
    except UserError as declined:
        intent.status = "requires_payment_method"
        intent.last_setup_error = {
            "code": "card_declined",
            "decline_code": "generic_decline",
            "message": "Your card was declined.",
        }
        schedule_webhook(ls.Event("setup_intent.setup_failed", intent))
        raise card_error(
            "Your card was declined.",
            code="card_declined",
            decline_code="generic_decline",
            intent=intent,
            payment_method=payment_method,
        ) from declined
    if intent.status == "requires_action":
        intent.next_action = {
            "type": "redirect_to_url",
            "redirect_to_url": {
                "url": authenticate_url(intent),
                "return_url": getattr(intent, "_return_url", None),
            },
        }
    elif intent.status == "succeeded":
        setup_succeeded(intent)


def setup_succeeded(intent: ls.SetupIntent) -> None:
    intent.status = "succeeded"
    intent.next_action = None
    if intent.customer and intent.payment_method:
        ls.PaymentMethod._api_retrieve(intent.payment_method).customer = intent.customer
    schedule_webhook(ls.Event("setup_intent.succeeded", intent))


def api_confirm_setup_intent(
    id,
    payment_method=None,
    payment_method_data=None,
    client_secret=None,
    return_url=None,
    **_ignored,
):
    intent = ls.SetupIntent._api_retrieve(id)
    if client_secret and client_secret != intent.client_secret:
        raise UserError(401, "Unauthorized")
    if intent.status not in ("requires_payment_method", "requires_confirmation"):
        raise UserError(
            400, f"This SetupIntent's status is {intent.status}; it cannot be confirmed."
        )
    if payment_method:
        pm = ls.PaymentMethod._api_retrieve(payment_method)
    elif payment_method_data:
        pm = ls.PaymentMethod(**payment_method_data)
    elif intent.payment_method:
        pm = ls.PaymentMethod._api_retrieve(intent.payment_method)
    else:
        raise UserError(400, "A payment method is needed to confirm this SetupIntent.")
    intent._return_url = return_url
    confirm_setup_intent(intent, pm)
    return intent


# -- 3-D Secure -----------------------------------------------------------------------------
def authenticate(intent, *, succeed: bool) -> None:
    """The customer passed (or failed) the issuer's challenge on the sandbox page."""
    if intent.status != "requires_action":
        raise UserError(400, "Nothing to authenticate.")
    intent.next_action = None
    if intent.object == "payment_intent":
        if succeed:
            pm = ls.PaymentMethod._api_retrieve(intent.payment_method)
            charge_payment_intent(intent, pm)  # may still be declined (UserError 402)
        else:
            intent._authentication_failed = True
            intent._last_error = {
                "code": "payment_intent_authentication_failure",
                "message": "The provided PaymentMethod has failed authentication.",
            }
            intent.payment_method = None
            schedule_webhook(ls.Event("payment_intent.payment_failed", intent))
    else:
        if succeed:
            setup_succeeded(intent)
        else:
            intent.status = "requires_payment_method"
            intent.payment_method = None
            intent.last_setup_error = {
                "code": "setup_intent_authentication_failure",
                "message": "The provided PaymentMethod has failed authentication.",
            }
            schedule_webhook(ls.Event("setup_intent.setup_failed", intent))


def retrieve_intent(intent_id: str):
    if intent_id.startswith("pi_"):
        return ls.PaymentIntent._api_retrieve(intent_id)
    if intent_id.startswith("seti_"):
        return ls.SetupIntent._api_retrieve(intent_id)
    raise UserError(404, "Not Found")


# -- refunds and disputes -------------------------------------------------------------------
def create_refund(data: dict) -> ls.Refund:
    """POST /v1/refunds, refusing more than the charge has left, as Stripe does (localstripe
    would refund any amount, and a missing amount as the whole charge again)."""
    charge = _charge_to_refund(data)
    left = charge.amount - charge.amount_refunded
    amount = ls.try_convert_to_int(data.get("amount")) if data.get("amount") is not None else left
    if left <= 0:
        raise UserError(
            400,
            f"Charge {charge.id} has already been refunded.",
            {"code": "charge_already_refunded"},
        )
    if type(amount) is int and amount > left:
        raise UserError(
            400,
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
            {"code": "amount_too_large"},
        )
    data["amount"] = amount
    refund = ls.Refund._api_create(**data)
    charge = ls.Charge._api_retrieve(refund.charge)
    if refund.payment_intent is None:
        refund.payment_intent = charge.payment_intent
    schedule_webhook(ls.Event("charge.refunded", charge))
    return refund


def _charge_to_refund(data: dict) -> ls.Charge:
    if data.get("charge"):
        return ls.Charge._api_retrieve(data["charge"])
    if data.get("payment_intent"):
        intent = ls.PaymentIntent._api_retrieve(data["payment_intent"])
        if intent.latest_charge is None:
            raise UserError(400, "This PaymentIntent has no charge to refund.")
        return intent.latest_charge
    raise UserError(400, "Expected charge or payment_intent")


class Dispute(ls.StripeObject):
    object = "dispute"
    _id_prefix = "dp_"

    def __init__(self, charge, reason: str = "fraudulent"):
        super().__init__()
        self.charge = charge.id
        self.payment_intent = charge.payment_intent
        self.amount = charge.amount
        self.currency = charge.currency
        self.reason = reason
        self.status = "needs_response"
        self.is_charge_refundable = False
        self.metadata = {}
        self.evidence_details = {
            "due_by": self.created + 7 * 24 * 3600,
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        }
        charge.disputed = True
        schedule_webhook(ls.Event("charge.dispute.created", self))


def open_dispute(charge=None, payment_intent=None, reason="fraudulent", **kwargs) -> Dispute:
    """POST /_config/disputes: the cardholder disputes a charge (sandbox control)."""
    if kwargs:
        raise UserError(400, "Unexpected " + ", ".join(kwargs))
    if payment_intent:
        intent = ls.PaymentIntent._api_retrieve(payment_intent)
        if intent.latest_charge is None or intent.status != "succeeded":
            raise UserError(400, "Only a succeeded payment can be disputed.")
        charge_obj = intent.latest_charge
    elif charge:
        charge_obj = ls.Charge._api_retrieve(charge)
    else:
        raise UserError(400, "charge or payment_intent is required")
    return Dispute(charge_obj, reason=reason)


# -- Checkout Sessions ----------------------------------------------------------------------
class CheckoutSession(ls.StripeObject):
    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(
        self,
        mode=None,
        customer=None,
        success_url=None,
        cancel_url=None,
        line_items=None,
        metadata=None,
        payment_intent_data=None,
        setup_intent_data=None,
        client_reference_id=None,
        currency=None,
        payment_method_types=None,
        customer_email=None,
        expires_at=None,
        **kwargs,
    ):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs))
        if mode not in ("payment", "setup"):
            raise UserError(
                400,
                "mode must be payment or setup (subscription is not supported by this stand-in)",
            )
        if not success_url or not str(success_url).startswith(("http://", "https://")):
            raise UserError(400, "success_url must be an http(s) URL")
        if cancel_url is not None and not str(cancel_url).startswith(("http://", "https://")):
            raise UserError(400, "cancel_url must be an http(s) URL")
        if customer is not None:
            ls.Customer._api_retrieve(customer)  # 404 if unknown
        amount_total, name = None, None
        if mode == "payment":
            amount_total, currency, name = _line_items_total(line_items)
        elif line_items:
            raise UserError(400, "line_items are not allowed in setup mode")
        pi_metadata = (payment_intent_data or {}).get("metadata") or {}
        si_metadata = (setup_intent_data or {}).get("metadata") or {}
        setup_intent = None
        if mode == "setup":
            # Validates before the session is stored.
            setup_intent = ls.SetupIntent(customer=customer, metadata=dict(si_metadata))

        super().__init__()
        self.mode = mode
        self.customer = customer
        self.customer_email = customer_email
        self.client_reference_id = client_reference_id
        self.success_url = success_url
        self.cancel_url = cancel_url
        self.metadata = dict(metadata or {})
        self.currency = currency.lower() if currency else None
        self.amount_total = amount_total
        self.amount_subtotal = amount_total
        self.status = "open"
        self.payment_status = "unpaid" if mode == "payment" else "no_payment_required"
        self.payment_intent = None
        self.setup_intent = setup_intent.id if setup_intent else None
        self.payment_method_types = payment_method_types or ["card"]
        self.expires_at = int(expires_at) if expires_at else self.created + SESSION_LIFETIME_SECONDS
        self.url = f"{Sandbox.base_url}/checkout/{self.id}"
        self._line_item_name = name or "Payment"
        self._payment_intent_metadata = dict(pi_metadata)
        # Stripe keeps the card on the customer after the payment when asked to.
        self._setup_future_usage = (payment_intent_data or {}).get("setup_future_usage")
        if setup_intent is not None:
            setup_intent._checkout_session = self.id

    def _expire_if_due(self) -> None:
        if self.status == "open" and time.time() >= self.expires_at:
            self._expire()

    def _expire(self) -> None:
        if self.status != "open":
            raise UserError(
                400, f"This Checkout Session is {self.status}; only an open session can be expired."
            )
        self.status = "expired"
        self.url = None
        schedule_webhook(ls.Event("checkout.session.expired", self))

    def _complete(self) -> str:
        """Mark paid (or set up), send checkout.session.completed, return where to go."""
        if self.status != "complete":
            self.status = "complete"
            self.payment_status = "paid" if self.mode == "payment" else "no_payment_required"
            schedule_webhook(ls.Event("checkout.session.completed", self))
        return self.success_url.replace("{CHECKOUT_SESSION_ID}", self.id)


def _line_items_total(line_items) -> tuple[int, str, str]:
    if not isinstance(line_items, list) or not line_items:
        raise UserError(400, "line_items are required in payment mode")
    total, currency, names = 0, None, []
    for item in line_items:
        price = (item or {}).get("price_data") or {}
        quantity = ls.try_convert_to_int(item.get("quantity", 1))
        unit = ls.try_convert_to_int(price.get("unit_amount"))
        cur = price.get("currency")
        if (
            type(unit) is not int
            or unit < 0
            or type(quantity) is not int
            or quantity < 1
            or not isinstance(cur, str)
        ):
            raise UserError(
                400,
                "each line item needs price_data[currency], "
                "price_data[unit_amount] (an integer) and a quantity",
            )
        if currency not in (None, cur.lower()):
            raise UserError(400, "all line items must have the same currency")
        currency = cur.lower()
        total += unit * quantity
        names.append(((price.get("product_data") or {}).get("name")) or "Item")
    if total <= 0:
        raise UserError(400, "the total must be greater than zero")
    return total, currency, ", ".join(names)


def list_checkout_sessions(
    payment_intent=None, customer=None, limit=None, starting_after=None, **kwargs
):
    if kwargs:
        raise UserError(400, "Unexpected " + ", ".join(kwargs))
    li = ls.List("/v1/checkout/sessions", limit=limit, starting_after=starting_after)
    items = [v for k, v in ls.store.items() if k.startswith("checkout.session:")]
    if payment_intent is not None:
        items = [s for s in items if s.payment_intent == payment_intent]
    if customer is not None:
        items = [s for s in items if s.customer == customer]
    li._list = sorted(items, key=lambda s: s.created, reverse=True)
    return li


def retrieve_session(session_id: str) -> CheckoutSession:
    session = CheckoutSession._api_retrieve(session_id)
    session._expire_if_due()
    return session


def card_from_form(form) -> ls.PaymentMethod:
    """A card PaymentMethod from the sandbox form (raises UserError 400 if malformed)."""
    number = "".join(ch for ch in str(form.get("number", "")) if ch.isdigit())
    exp = "".join(ch for ch in str(form.get("exp", "")) if ch.isdigit() or ch == "/")
    month, _, year = exp.partition("/")
    cvc = "".join(ch for ch in str(form.get("cvc", "")) if ch.isdigit())
    if len(number) != 16:
        raise UserError(400, "Your card number is incomplete.")
    if not month.isdigit() or not year.isdigit():
        raise UserError(400, "Your card's expiration date is incomplete (MM / YY).")
    billing = {"name": str(form.get("name", ""))[:100]} if form.get("name") else None
    return ls.PaymentMethod(
        type="card",
        billing_details=billing,
        card={"number": number, "exp_month": month, "exp_year": year, "cvc": cvc},
    )


def keep_card(session: CheckoutSession, intent) -> None:
    """A payment with ``setup_future_usage``: its card stays on the customer, as on Stripe."""
    if getattr(session, "_setup_future_usage", None) and session.customer and intent.payment_method:
        ls.PaymentMethod._api_retrieve(intent.payment_method).customer = session.customer


def pay_session(session: CheckoutSession, pm) -> str | None:
    """Use the typed card for the session. Returns where to send the browser (the success
    URL, or the 3-D Secure step), or raises UserError with what to tell the customer."""
    if session.mode == "payment":
        if pm._attaching_is_declined():  # cards the issuer refuses outright
            raise card_error(
                "Your card was declined.",
                code="card_declined",
                decline_code="generic_decline",
                payment_method=pm,
            )
        if session.payment_intent is None:
            intent = SandboxPaymentIntent(
                amount=session.amount_total,
                currency=session.currency,
                customer=session.customer,
                payment_method=pm.id,
                metadata=dict(session._payment_intent_metadata),
            )
            intent.description = session._line_item_name
            intent._checkout_session = session.id
            session.payment_intent = intent.id
        else:
            intent = ls.PaymentIntent._api_retrieve(session.payment_intent)
        confirm_payment_intent(
            intent, payment_method=pm.id, return_url=f"{Sandbox.base_url}/checkout/{session.id}"
        )
        if intent.status == "requires_action":
            return intent.next_action["redirect_to_url"]["url"]
        if intent.status in ("succeeded", "processing"):
            keep_card(session, intent)
            return session._complete()
        raise UserError(402, "Your card was declined.")
    intent = ls.SetupIntent._api_retrieve(session.setup_intent)
    if intent.status == "succeeded":
        return session._complete()
    confirm_setup_intent(intent, pm)
    if intent.status == "requires_action":
        return authenticate_url(intent)
    return session._complete()

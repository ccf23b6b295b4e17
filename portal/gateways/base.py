"""The payment gateway boundary: a protocol and plain data, no gateway library types.

Services talk to a ``PaymentGateway``; ``portal/gateways/stripe.py`` is the one
implementation (and the only module that imports ``stripe``). Everything that crosses the
boundary is a dataclass below, a ``Money``, a str or a dict of plain JSON values.

Amounts: ``Money`` holds minor units at the project's digits for the currency (CLDR);
Stripe has its own exponent table (``stripe_exponent``), so the conversion lives here and
refuses an amount Stripe cannot take rather than rounding it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..money import AmountError, Money, currency_digits

# -- Stripe's exponent table ----------------------------------------------------------------
# Stripe takes every currency in minor units of ITS exponent, which is 2 unless listed here
# (the zero-decimal and three-decimal lists and the special cases of Stripe's currency
# documentation). Each entry: (exponent, granularity): the amount in Stripe units must be a
# multiple of the granularity. Stripe changes these lists now and then: this is the one map
# to update, and tests/gateways/test_money_units.py pins it.
STRIPE_CURRENCY_OVERRIDES: dict[str, tuple[int, int]] = {
    # zero-decimal currencies: 500 JPY is amount=500
    **{
        code: (0, 1)
        for code in (
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "JPY",
            "KMF",
            "KRW",
            "MGA",
            "PYG",
            "RWF",
            "UGX",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        )
    },
    # three-decimal currencies: 5.120 KWD is amount=5120, and the last digit must be 0
    **{code: (3, 10) for code in ("BHD", "JOD", "KWD", "OMR", "TND")},
    # special case: ISK stays two-decimal in the API but only whole kronur are accepted
    # (amount divisible by 100), while CLDR gives ISK 0 digits.
    "ISK": (2, 100),
    # HUF and TWD: two-decimal for charges (only payouts are whole units): the default.
}
STRIPE_DEFAULT_EXPONENT = 2


def stripe_exponent(currency: str) -> int:
    return STRIPE_CURRENCY_OVERRIDES.get(currency.upper(), (STRIPE_DEFAULT_EXPONENT, 1))[0]


def to_stripe_amount(amount: Money) -> int:
    """Money -> the integer ``amount`` Stripe expects for ``amount.currency``.

    Raises AmountError when Stripe cannot represent it exactly (sub-unit yen, a KWD amount
    whose last fils is not 0, fractional ISK): the caller must round on purpose, never here.
    """
    exponent, granularity = STRIPE_CURRENCY_OVERRIDES.get(
        amount.currency, (STRIPE_DEFAULT_EXPONENT, 1)
    )
    shift = exponent - currency_digits(amount.currency)
    if shift >= 0:
        units = amount.amount_minor * 10**shift
    else:
        units, rest = divmod(amount.amount_minor, 10**-shift)
        if rest:
            raise AmountError(f"{amount} has more digits than Stripe takes for {amount.currency}")
    if units % granularity:
        raise AmountError(
            f"{amount} is not a multiple Stripe accepts for {amount.currency} "
            f"(amount {units} must be divisible by {granularity})"
        )
    return units


def from_stripe_amount(units: int, currency: str) -> Money:
    """Stripe's integer ``amount`` in ``currency`` (any case) -> Money."""
    if isinstance(units, bool) or not isinstance(units, int):
        raise TypeError("a Stripe amount is an int")
    code = currency.upper()
    shift = stripe_exponent(code) - currency_digits(code)
    if shift <= 0:
        return Money(units * 10**-shift, code)
    minor, rest = divmod(units, 10**shift)
    if rest:
        raise AmountError(f"Stripe amount {units} {code} has more digits than {code} has")
    return Money(minor, code)


# -- plain data -----------------------------------------------------------------------------
class PaymentStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    REQUIRES_ACTION = "requires_action"  # the customer must authenticate (3-D Secure)
    FAILED = "failed"  # declined: decline_code says why
    PROCESSING = "processing"  # not final yet; a webhook will tell


@dataclass(frozen=True)
class CardInfo:
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str  # the same card number has the same fingerprint (duplicate detection)
    customer: str | None


@dataclass(frozen=True)
class SetupIntentInfo:
    id: str
    client_secret: str
    status: str  # Stripe's own: requires_payment_method, requires_action, succeeded, ...
    customer: str | None = None
    payment_method: str | None = None


@dataclass(frozen=True)
class PaymentResult:
    id: str | None
    status: PaymentStatus
    amount: Money | None = None
    decline_code: str | None = None
    message: str | None = None
    next_action_url: str | None = None  # a page the customer is sent to (3-D Secure)
    client_secret: str | None = None
    payment_method: str | None = None
    customer: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckoutSessionInfo:
    id: str
    url: str | None
    status: str | None = None  # open, complete, expired
    payment_status: str | None = None  # unpaid, paid, no_payment_required
    mode: str | None = None  # payment, setup
    customer: str | None = None
    payment_intent: str | None = None
    setup_intent: str | None = None
    amount_total: Money | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RefundResult:
    id: str
    status: str  # pending, succeeded, failed, canceled, requires_action
    amount: Money
    payment_intent: str | None = None
    charge: str | None = None
    created: int = 0


@dataclass(frozen=True)
class ChargeInfo:
    """A charge as the gateway holds it now: what it took and what it gave back."""

    id: str
    payment_intent: str | None
    amount: Money  # captured
    amount_refunded: Money  # the running total of its refunds
    refunds: tuple[RefundResult, ...] = ()  # every refund of the charge


@dataclass(frozen=True)
class DisputeInfo:
    id: str
    charge: str | None
    payment_intent: str | None
    amount: Money  # what the cardholder's bank takes back
    reason: str
    status: str


@dataclass(frozen=True)
class GatewayEvent:
    """A verified webhook event: the object is a plain dict snapshot of the API object."""

    id: str
    type: str
    livemode: bool
    object: dict[str, Any]
    created: int | None = None

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> GatewayEvent:
        """An event's JSON (as verified, or as stored in the inbox) as a GatewayEvent."""
        return cls(
            id=str(data["id"]),
            type=str(data["type"]),
            livemode=bool(data.get("livemode", False)),
            object=dict(data["data"]["object"]),
            created=data.get("created"),
        )


# -- errors ---------------------------------------------------------------------------------
class GatewayError(Exception):
    """The gateway could not do what was asked.

    ``outcome_unknown`` is True when the request may or may not have taken effect (a
    timeout, a dropped connection, a 5xx, a conflicting in-flight request): the caller
    must find out by looking the object up, never by sending a new request that could
    charge again.
    """

    def __init__(
        self,
        message: str,
        *,
        outcome_unknown: bool = False,
        code: str | None = None,
        http_status: int | None = None,
    ):
        if outcome_unknown and "outcome unknown" not in message:
            message = f"{message} (outcome unknown)"
        super().__init__(message)
        self.message = message
        self.outcome_unknown = outcome_unknown
        self.code = code
        self.http_status = http_status


class CardDeclined(GatewayError):
    """The card was refused where no payment result carries it (attaching a card)."""

    def __init__(
        self, message: str, *, decline_code: str | None = None, payment_method: str | None = None
    ):
        super().__init__(message, code="card_declined", http_status=402)
        self.decline_code = decline_code
        self.payment_method = payment_method


class GatewayNotConfigured(GatewayError):
    pass


class SignatureError(GatewayError):
    """A webhook whose signature does not verify (or that is not an event at all)."""


class LivemodeMismatch(GatewayError):
    """A correctly signed event from the other mode (a live event to a test key, or the
    reverse): it is acknowledged and ignored, never processed."""

    def __init__(self, event: GatewayEvent):
        super().__init__(f"event {event.id} has livemode={event.livemode}, ours differs")
        self.event = event


# -- the protocol ---------------------------------------------------------------------------
@runtime_checkable
class PaymentGateway(Protocol):
    identifier: str
    livemode: bool
    publishable_key: str

    def ensure_customer(self, user_id: int, email: str, name: str = "") -> str: ...

    def create_setup_intent(
        self,
        customer: str,
        *,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> SetupIntentInfo: ...

    def retrieve_setup_intent(self, setup_intent: str) -> SetupIntentInfo: ...

    def get_payment_method(self, payment_method: str) -> CardInfo: ...

    def attach_payment_method(
        self, payment_method: str, customer: str, *, idempotency_key: str | None = None
    ) -> CardInfo: ...

    def detach_payment_method(
        self, payment_method: str, *, idempotency_key: str | None = None
    ) -> None: ...

    def create_payment_intent(
        self,
        customer: str,
        payment_method: str,
        amount: Money,
        *,
        idempotency_key: str,
        metadata: dict[str, str] | None = None,
    ) -> PaymentResult: ...

    def confirm_payment_intent(
        self,
        payment_intent: str,
        *,
        payment_method: str | None,
        return_url: str,
        idempotency_key: str,
    ) -> PaymentResult: ...

    def retrieve_payment_intent(self, payment_intent: str) -> PaymentResult: ...

    def find_payment_intent_by_metadata(
        self, customer: str, key: str, value: str
    ) -> PaymentResult | None: ...

    def find_payment_intent_by_idempotency_key(
        self, customer: str, idempotency_key: str
    ) -> PaymentResult | None: ...

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
    ) -> CheckoutSessionInfo: ...

    def create_setup_session(
        self,
        customer: str,
        *,
        success_url: str,
        cancel_url: str,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> CheckoutSessionInfo: ...

    def retrieve_checkout_session(self, session: str) -> CheckoutSessionInfo: ...

    def construct_event(self, payload: bytes, sig_header: str | None) -> GatewayEvent: ...

    def refund(
        self, payment_intent: str, amount: Money | None = None, *, idempotency_key: str
    ) -> RefundResult: ...

    def retrieve_charge(self, charge: str) -> ChargeInfo: ...

    def retrieve_dispute(self, dispute: str) -> DisputeInfo: ...

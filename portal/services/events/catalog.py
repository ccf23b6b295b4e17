"""The events catalogue: every event the portal tells the platform about, by name, with the
schema of its ``data``. ``events.record`` refuses a name that is not here, and the OpenAPI
document's ``webhooks`` section is generated from this list, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "2026-12-01"  # the envelope's api_version: changes when a payload changes shape


class Payload(BaseModel):
    """An event's data: exactly these fields (a recorded payload with another is a bug)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# Money goes out as in the API: a decimal string, integer minor units, the currency.
DecimalText = str


class InvoiceData(Payload):
    invoice_id: int
    invoice_number: str | None = Field(description="null while the invoice is a draft")
    user_id: int
    currency: str = Field(description="ISO 4217 code")
    total: DecimalText = Field(description="decimal string in major units")
    total_minor: int = Field(description="integer minor units (cents)")
    period_start: str = Field(description="ISO 8601, the billing period's first instant")
    period_end: str = Field(description="ISO 8601, the instant after the period")
    status: Literal["draft", "sent", "paid", "overdue", "void"]


class InvoiceVoidedData(InvoiceData):
    reason: str = Field(description="the admin's reason for voiding")


class CardAttempt(Payload):
    card: str = Field(description="the card's label, e.g. Visa •••• 4242")
    decline_code: str | None


class PaymentFailedData(Payload):
    invoice_id: int
    invoice_number: str | None
    user_id: int
    amount_due: DecimalText
    amount_due_minor: int
    currency: str
    attempts: list[CardAttempt] = Field(
        description="each card tried and why it was declined; empty when there is no card"
    )


class PaymentSucceededData(Payload):
    user_id: int
    invoice_id: int | None = Field(description="the invoice paid; null for a top-up")
    payment_intent: str
    amount: DecimalText
    amount_minor: int
    currency: str
    purpose: Literal["invoice", "topup"]


class PaymentReversedData(Payload):
    user_id: int
    payment_intent: str
    amount: DecimalText
    amount_minor: int
    currency: str
    reason: str


class CreditGrantedData(Payload):
    user_id: int
    credit_id: int
    amount: DecimalText
    amount_minor: int
    currency: str
    reason: str
    expires_at: str | None = Field(description="ISO 8601; null: never expires")


class CreditExpiredData(Payload):
    user_id: int
    credit_id: int
    amount: DecimalText = Field(description="what was left of the credit when it expired")
    amount_minor: int
    currency: str
    expired_at: str


class VoucherRedeemedData(Payload):
    user_id: int
    voucher_id: int
    amount: DecimalText
    amount_minor: int
    currency: str


class QuotaData(Payload):
    user_id: int
    resource: str = Field(description="cpu, memory, storage, deployments, ...")
    used: DecimalText
    limit: DecimalText
    threshold_percent: int = Field(description="the alert threshold that was crossed")


class DeploymentData(Payload):
    user_id: int
    external_id: str = Field(description="the platform's id of the deployment")
    state: Literal["pending", "active", "suspended", "removing", "removed", "failed", "terminated"]
    reason: str = Field(description="why: overdue, quota, budget, admin, platform, ...")
    effective_at: str = Field(description="ISO 8601: when it takes (took) effect")


class BudgetData(Payload):
    user_id: int
    period_start: str = Field(description="ISO 8601, the billing period's first instant")
    period_end: str = Field(description="ISO 8601, the instant after the period")
    cap: DecimalText = Field(description="the monthly budget cap, in major units")
    cap_minor: int
    spent: DecimalText = Field(
        description="the period's spending so far: metered usage plus the plan's fee"
    )
    spent_minor: int
    currency: str
    threshold_percent: int = Field(description="80 (warning) or 100 (reached)")
    stop: bool = Field(
        description="whether the user chose to stop at the cap: at 100 their active "
        "deployments are suspended (billing.deployment.suspended, reason budget)"
    )


class SubscriptionChangedData(Payload):
    user_id: int
    plan: str | None = Field(description="the plan now in force; null: none")
    previous_plan: str | None
    effective_at: str


@dataclass(frozen=True)
class EventType:
    name: str
    summary: str
    data: type[Payload]
    recorded: bool  # whether the portal records it today (its cause exists)


_TYPES = (
    EventType("billing.invoice.created", "An invoice was issued", InvoiceData, True),
    EventType("billing.invoice.paid", "An invoice was paid in full", InvoiceData, True),
    EventType(
        "billing.invoice.overdue", "An invoice passed its due date unpaid", InvoiceData, True
    ),
    EventType("billing.invoice.voided", "An admin voided an invoice", InvoiceVoidedData, True),
    EventType(
        "billing.payment.succeeded",
        "A card payment succeeded (an invoice or a top-up)",
        PaymentSucceededData,
        True,
    ),
    EventType(
        "billing.payment.failed",
        "Nothing could pay an invoice (every card declined, or no card)",
        PaymentFailedData,
        True,
    ),
    EventType("billing.payment.refunded", "A card payment was refunded", PaymentReversedData, True),
    EventType("billing.payment.disputed", "A card payment was disputed", PaymentReversedData, True),
    EventType(
        "billing.credit.granted", "A credit was granted to an account", CreditGrantedData, True
    ),
    EventType("billing.credit.expired", "A credit expired unused", CreditExpiredData, True),
    EventType("billing.voucher.redeemed", "A voucher was redeemed", VoucherRedeemedData, True),
    EventType("billing.quota.warning", "Usage crossed a quota's alert threshold", QuotaData, True),
    EventType("billing.quota.exceeded", "Usage exceeded a quota", QuotaData, True),
    EventType(
        "billing.deployment.suspended", "A deployment must be suspended", DeploymentData, True
    ),
    EventType("billing.deployment.resumed", "A deployment may run again", DeploymentData, True),
    EventType(
        "billing.deployment.removing",
        "A deployment is scheduled for removal",
        DeploymentData,
        True,
    ),
    EventType(
        "billing.deployment.restored", "A scheduled removal was called off", DeploymentData, True
    ),
    EventType("billing.deployment.removed", "A deployment must be removed", DeploymentData, True),
    EventType("billing.budget.warning", "Spending crossed 80% of a budget cap", BudgetData, True),
    EventType("billing.budget.reached", "Spending reached a budget cap", BudgetData, True),
    EventType(
        "billing.subscription.changed", "An account's plan changed", SubscriptionChangedData, True
    ),
)
EVENT_TYPES: dict[str, EventType] = {t.name: t for t in _TYPES}
NAMES: tuple[str, ...] = tuple(EVENT_TYPES)


class UnknownEvent(ValueError):
    pass


def check_name(name: str) -> None:
    if name not in EVENT_TYPES:
        raise UnknownEvent(f"event {name!r} is not in the events catalogue")


def validate(name: str, data: dict[str, object]) -> Payload:
    """The payload read against its schema (raises pydantic's ValidationError)."""
    check_name(name)
    return EVENT_TYPES[name].data.model_validate(data)


# Each event's data, also as the envelope the platform receives.
class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int = Field(description="the event's id: the same on every delivery and replay")
    type: str = Field(description="the event's name")
    created: str = Field(description="ISO 8601 UTC: when the event was recorded")
    api_version: str = Field(description=f"the payload's version ({API_VERSION})")
    data: dict[str, object]

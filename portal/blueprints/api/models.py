"""The JSON API's request and response models: what each endpoint takes and answers.

Requests are strict (see fields.py); responses keep the field names the API has always
used (money as a decimal string plus ``_minor`` integer units plus the currency; times as
ISO 8601 UTC with a Z). The OpenAPI document is generated from these models.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, WithJsonSchema

from ...models import INVOICE_STATUS_DISPLAYS, INVOICE_STATUS_LABELS
from ...services.metering.deployments import MAX_NAME, MAX_SIZE
from ...services.wallet.vouchers import MAX_BATCH
from .fields import (
    MAX_PAGE,
    MAX_PER_PAGE,
    Amount,
    Day,
    ExternalId,
    Flag,
    Instant,
    LabelFilter,
    Labels,
    Period,
    Quantity,
    QueryModel,
    QueryWhole,
    StrictModel,
    Text,
    Through,
    UserRef,
    Whole,
)

INVOICE_STATUSES = INVOICE_STATUS_LABELS
STATUS_DISPLAYS = INVOICE_STATUS_DISPLAYS
DEPLOYMENT_STATES = (
    "pending",
    "active",
    "suspended",
    "removing",
    "removed",
    "failed",
    "terminated",
)
MAX_REDEMPTIONS = 1_000_000

# -- output types ----------------------------------------------------------------------------

Time = Annotated[
    str,
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-11-01T08:00:00Z"]}),
]
Decimal_ = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]+)?$",
            "description": "an exact decimal in major units (money) or whole units (quantities)",
        }
    ),
]
Minor = Annotated[
    int, WithJsonSchema({"type": "integer", "description": "integer minor units (cents)"})
]
Currency = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^[A-Z]{3}$",
            "description": "ISO 4217 code",
            "examples": ["USD"],
        }
    ),
]


class Out(BaseModel):
    """Responses: exactly the documented fields, of exactly the documented types."""

    model_config = ConfigDict(strict=True, extra="forbid")


class ErrorDetail(Out):
    code: str = Field(
        description="validation_failed, unauthorized, forbidden, not_found, "
        "conflict, idempotency_conflict, invalid_transition, "
        "rate_limited, payments_unavailable, gateway_error, ..."
    )
    message: str
    fields: dict[str, str] | None = Field(
        default=None, description="each field that was refused, with what is wrong with it"
    )


class ErrorBody(Out):
    """Every error: a code, a sentence, and the fields at fault (422)."""

    error: ErrorDetail


class Page(QueryModel):
    page: Annotated[int, QueryWhole(1, MAX_PAGE, description="1 for the first page")] = 1
    per_page: Annotated[int, QueryWhole(1, MAX_PER_PAGE, description="items per page")] = 50


class ForUser(QueryModel):
    user_id: UserRef | None = Field(
        default=None,
        description=(
            "admin tokens: whose (an id or an email); other tokens may name only themselves"
        ),
    )


# -- accounts, credits, wallet ---------------------------------------------------------------


class CreateUser(StrictModel):
    email: Annotated[str, Text(254, description="the user's email address")]
    name: Annotated[str, Text(200, required=False)] = ""


class UserOut(Out):
    id: int
    email: str
    name: str
    currency: Currency
    created_at: Time


class GrantCredit(StrictModel):
    user_id: UserRef
    amount: Amount
    reason: Annotated[str, Text(500, description="shown to the user and in the ledger")]
    expires_at: Through | None = None


class CreditOut(Out):
    id: int
    user_id: int
    currency: Currency
    amount: Decimal_
    amount_minor: Minor
    remaining: Decimal_
    remaining_minor: Minor
    reason: str
    expires_at: Time | None
    created_at: Time


class WalletOut(Out):
    user_id: int
    currency: Currency
    cash: Decimal_
    cash_minor: Minor
    voucher: Decimal_
    voucher_minor: Minor
    credit: Decimal_
    credit_minor: Minor


class WalletEntry(Out):
    id: int
    created_at: Time
    wallet: str = Field(description="cash, voucher or credit")
    kind: str
    description: str
    currency: Currency
    amount: Decimal_
    amount_minor: Minor


class WalletQuery(ForUser, Page):
    pass


class WalletPage(Out):
    items: list[WalletEntry]
    page: int
    per_page: int
    total: int


# -- prices, deployments, usage, reports -----------------------------------------------------


class Rates(Out):
    cpu_per_core_hour: Decimal_
    memory_per_gb_hour: Decimal_
    storage_per_gb_month: Decimal_
    public_ip_per_hour: Decimal_


class SkuOut(Out):
    code: str
    kind: str
    name: str
    cpu_cores: Decimal_
    memory_gb: Decimal_
    storage_gb: Decimal_
    public_ip: bool
    hourly_price: Decimal_


class PriceVersionOut(Out):
    version: int
    effective_from: Time
    currency: Currency
    rates: Rates
    skus: list[SkuOut]


class PricesOut(PriceVersionOut):
    scheduled: list[PriceVersionOut] = Field(description="versions that take effect later")


Kind = Literal["vm", "k8s", "session"]


class CreateDeployment(StrictModel):
    external_id: ExternalId
    user_id: UserRef
    kind: Kind
    sku: Annotated[str, Text(40, required=False)] | None = Field(
        default=None,
        description=("a SKU code from GET /prices; or give cpu_cores, memory_gb and storage_gb"),
    )
    cpu_cores: Annotated[Decimal, Quantity(MAX_SIZE["cpu_cores"], "cores")] | None = None
    memory_gb: Annotated[Decimal, Quantity(MAX_SIZE["memory_gb"], "GB")] | None = None
    storage_gb: Annotated[Decimal, Quantity(MAX_SIZE["storage_gb"], "GB")] | None = None
    public_ip: Flag | None = None
    name: Annotated[str, Text(MAX_NAME, required=False)] | None = None
    labels: Labels | None = None
    state: Literal["pending", "active"] | None = None
    started_at: Instant | None = Field(
        default=None,
        description=("default now; at most DEPLOYMENT_BACKDATE_MAX_DAYS (31) days in the past"),
    )


class UpdateDeployment(StrictModel):
    cpu_cores: Annotated[Decimal, Quantity(MAX_SIZE["cpu_cores"], "cores")] | None = None
    memory_gb: Annotated[Decimal, Quantity(MAX_SIZE["memory_gb"], "GB")] | None = None
    storage_gb: Annotated[Decimal, Quantity(MAX_SIZE["storage_gb"], "GB")] | None = None
    sku: Annotated[str, Text(40, required=False)] | None = None
    state: Literal[DEPLOYMENT_STATES] | None = None  # type: ignore[valid-type]
    effective_at: Instant | None = Field(
        default=None,
        description=("default now; at most DEPLOYMENT_BACKDATE_MAX_DAYS (31) days in the past"),
    )


class DeleteDeployment(StrictModel):
    ended_at: Instant | None = Field(
        default=None,
        description=("default now; at most DEPLOYMENT_BACKDATE_MAX_DAYS (31) days in the past"),
    )


class DeploymentOut(Out):
    external_id: str
    user_id: int
    kind: str
    name: str
    labels: dict[str, str]
    state: str
    sku: str | None
    cpu_cores: Decimal_
    memory_gb: Decimal_
    storage_gb: Decimal_
    public_ip: bool
    price_version: int
    started_at: Time | None
    ended_at: Time | None
    last_heartbeat_at: Time | None
    created_at: Time


class UsageQuery(ForUser):
    period: Period | None = Field(default=None, description="default: the current period")


class UsageItem(Out):
    resource_type: str
    quantity: Decimal_
    unit: str
    unit_price: Decimal_
    total_cost: Decimal_
    total_cost_minor: Minor


class UsageDeployment(Out):
    external_id: str
    name: str
    kind: str
    state: str
    labels: dict[str, str]
    total_cost: Decimal_
    total_cost_minor: Minor


class UsageDay(Out):
    date: Annotated[str, WithJsonSchema({"type": "string", "format": "date"})]
    total_cost: Decimal_
    total_cost_minor: Minor


class UsageOut(Out):
    user_id: int
    period_start: Time
    period_end: Time
    currency: Currency
    metered_through: Time | None
    total_cost: Decimal_
    total_cost_minor: Minor
    projected_total: Decimal_
    projected_total_minor: Minor
    items: list[UsageItem]
    deployments: list[UsageDeployment]
    daily: list[UsageDay]


class ReportQuery(Page):
    from_: Day | None = Field(
        default=None, alias="from", description="first day (default: the month's first)"
    )
    to: Day | None = Field(default=None, description="last day, inclusive (default: today)")
    user_id: UserRef | None = None
    kind: Kind | None = None
    label: LabelFilter | None = None
    format: Literal["json", "csv"] = Field(
        default="json",
        description=("csv streams every row (text/csv) and ignores page and per_page"),
    )


class ReportRow(Out):
    date: str
    user: str
    deployment: str
    name: str
    kind: str
    labels: str
    cpu_core_hours: Decimal_
    memory_gb_hours: Decimal_
    storage_gb_months: Decimal_
    instance_hours: Decimal_
    ip_hours: Decimal_
    cost: Decimal_
    currency: Currency


class ReportPage(Out):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    items: list[ReportRow]
    page: int
    per_page: int
    total: int


# -- invoices --------------------------------------------------------------------------------


class InvoiceOut(Out):
    id: int
    user_id: int
    invoice_number: str | None
    period_start: Time
    period_end: Time = Field(description="the exclusive end instant")
    subtotal: Decimal_
    subtotal_minor: Minor
    credits: Decimal_
    credits_minor: Minor
    total: Decimal_
    total_minor: Minor
    amount_paid: Decimal_
    amount_paid_minor: Minor
    amount_due: Decimal_
    amount_due_minor: Minor
    currency: Currency
    status: Literal[INVOICE_STATUSES]  # type: ignore[valid-type]
    status_display: Literal[STATUS_DISPLAYS] = Field(  # type: ignore[valid-type]
        description="the status as the invoice page and PDF show it"
    )
    due_date: Time | None
    paid_at: Time | None
    created_at: Time
    issued_at: Time | None
    voided_at: Time | None
    void_reason: str | None
    pdf_status: str
    pdf_sha256: str | None


class InvoiceLineOut(Out):
    position: int
    kind: str
    description: str
    resource: str | None
    quantity: str
    unit: str
    unit_price: str
    amount: Decimal_
    amount_minor: Minor


class InvoicePaymentOut(Out):
    id: int
    tender: str
    amount: Decimal_
    amount_minor: Minor
    currency: Currency
    reference: str
    created_at: Time


class InvoiceDetail(InvoiceOut):
    lines: list[InvoiceLineOut]
    payments: list[InvoicePaymentOut]


PaymentOutcome = Literal["paid", "requires_action", "processing", "failed", "partial", "unpaid"]


class InvoicePaid(InvoiceDetail):
    payment_outcome: PaymentOutcome


class InvoicePage(Out):
    items: list[InvoiceOut]
    page: int
    per_page: int
    total: int


class InvoiceQuery(ForUser, Page):
    status: Literal[INVOICE_STATUSES] | None = None  # type: ignore[valid-type]


class AdminInvoiceQuery(Page):
    user_id: UserRef | None = None
    status: Literal[INVOICE_STATUSES] | None = None  # type: ignore[valid-type]
    period: Period | None = None


class CreateInvoice(StrictModel):
    user_id: UserRef
    period_start: Instant
    period_end: Through = Field(description="a bare date is that whole day, inclusive")


class VoidInvoice(StrictModel):
    reason: Annotated[str, Text(400)]


class OfflinePayment(StrictModel):
    amount: Amount
    reference: Annotated[str, Text(200, description="the bank transfer's reference")]


# -- payments --------------------------------------------------------------------------------


class CardOut(Out):
    id: int
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    is_default: bool


class CardList(RootModel[list[CardOut]]):
    model_config = ConfigDict(strict=True)


class CreateCheckout(StrictModel):
    purpose: Literal["topup", "subscription"] = Field(
        description="topup (with amount), or subscription (with plan_id): subscribe or "
        "upgrade, and pay what the balances do not cover on the checkout page"
    )
    amount: Amount | None = Field(
        default=None, description="topup: between TOPUP_MIN and TOPUP_MAX"
    )
    plan_id: Annotated[str, Text(40)] | None = Field(
        default=None, description="subscription: the plan chosen"
    )


class CheckoutOut(Out):
    checkout_url: str | None = Field(
        description="the page to open in a browser; null for a subscription the balances "
        "paid at once (it is active)"
    )
    session_id: str | None
    purpose: Literal["topup", "subscription"]
    amount: Decimal_ = Field(description="what the page collects")
    amount_minor: Minor
    currency: Currency
    invoice_id: int | None = Field(
        default=None, description="subscription: the plan change's invoice the page pays"
    )


class PreviewPart(Out):
    tender: str
    label: str
    amount: Decimal_
    amount_minor: Minor


class PaymentPreview(Out):
    invoice_id: int
    status: Literal[INVOICE_STATUSES]  # type: ignore[valid-type]
    currency: Currency
    parts: list[PreviewPart]
    remaining: Decimal_
    remaining_minor: Minor


# -- vouchers --------------------------------------------------------------------------------


class Redeem(StrictModel):
    code: Annotated[
        str, Text(64, description="20 letters and digits; dashes and case do not matter")
    ]


class RedeemOut(Out):
    redeemed: Decimal_
    redeemed_minor: Minor
    currency: Currency
    cash: Decimal_
    cash_minor: Minor
    voucher: Decimal_
    voucher_minor: Minor
    credit: Decimal_
    credit_minor: Minor


class CreateVouchers(StrictModel):
    value: Amount
    count: Annotated[int, Whole(1, MAX_BATCH)] = 1
    max_redemptions: Annotated[int, Whole(1, MAX_REDEMPTIONS)] = 1
    expires_at: Through | None = None
    note: Annotated[str, Text(500, required=False)] | None = None


class VoucherOut(Out):
    code: str
    currency: Currency
    value: Decimal_
    value_minor: Minor
    max_redemptions: int
    redemptions: int
    expires_at: Time | None
    batch: str | None
    note: str


class VoucherBatch(Out):
    batch: str | None
    vouchers: list[VoucherOut]


class VoucherQuery(Page):
    batch: Annotated[str, Text(40, required=False)] | None = None
    format: Literal["json", "csv"] = Field(
        default="json",
        description=("csv streams every code (text/csv) and ignores page and per_page"),
    )


class VoucherPage(Out):
    items: list[VoucherOut]
    page: int
    per_page: int
    total: int


# -- jobs ------------------------------------------------------------------------------------


class RunOut(Out):
    id: int
    job: str
    job_id: str
    origin: str
    status: str = Field(description="pending, queued, running, succeeded, failed")
    due_at: Time | None
    created_at: Time
    started_at: Time | None
    finished_at: Time | None
    duration_ms: int | None
    figures: dict[str, Any] | None
    error: str | None
    scheduled_by: str
    progress: int | None = Field(description="percent done while it runs, if it reports")


class RunStarted(Out):
    job_id: str
    status: str
    run_id: int
    job: str


class Leader(Out):
    instance_id: str
    epoch: int
    expires_at: Time


class BuiltinBilling(Out):
    active: bool
    after_minutes: int


class DaemonOut(Out):
    instance_id: str
    kind: str
    hostname: str
    pid: int
    status: str
    role: str
    lease_epoch: int | None
    alive: bool
    started_at: Time
    heartbeat_at: Time
    heartbeat_age_seconds: int
    last_run_at: Time | None
    last_run_success: bool | None
    instances_billed: int | None
    total_amount: Decimal_ | None
    total_amount_minor: Minor | None
    currency: str | None
    last_error: str | None


class JobOut(Out):
    name: str
    cron: str
    queue: str
    scheduled_through: Time | None
    next_due_at: Time | None
    last_run: RunOut | None


class QueueOut(Out):
    name: str
    queued: int
    started: int
    failed: int


class FailedJobOut(Out):
    job_id: str
    queue: str
    func: str
    error: str
    ended_at: Time | None
    run_id: int | None


class JobsStatus(Out):
    leader: Leader | None
    builtin_billing: BuiltinBilling
    daemons: list[DaemonOut]
    jobs: list[JobOut]
    queues: list[QueueOut]
    workers: int
    failed_jobs: list[FailedJobOut]


# -- the gateway's events (POST /webhook) ----------------------------------------------------


class StripeObject(BaseModel):
    """Stripe sends more fields than these; the portal reads these (and for payments and
    sessions reads the object's current state back from Stripe rather than trusting the
    event)."""

    model_config = ConfigDict(extra="allow")
    id: str


class CheckoutSessionObject(StripeObject):
    object: Literal["checkout.session"]
    mode: Literal["payment", "setup", "subscription"] | None = None
    metadata: dict[str, str] | None = Field(
        default=None, description=("purpose: topup for the portal's top-ups")
    )


class PaymentIntentObject(StripeObject):
    object: Literal["payment_intent"]
    metadata: dict[str, str] | None = Field(
        default=None, description=("purpose (topup or invoice) and the portal's ids")
    )


class SetupIntentObject(StripeObject):
    object: Literal["setup_intent"]
    payment_method: str | None = None
    customer: str | None = None


class RefundObject(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    amount: int
    currency: str | None = None
    status: str | None = None
    created: int | None = None


class RefundList(BaseModel):
    model_config = ConfigDict(extra="allow")
    data: list[RefundObject]


class ChargeObject(StripeObject):
    object: Literal["charge"]
    payment_intent: str | None = None
    currency: str
    amount_refunded: int = Field(description="the running total refunded, in Stripe's units")
    refunds: RefundList | None = None


class DisputeObject(StripeObject):
    object: Literal["dispute"]
    payment_intent: str | None = None
    amount: int
    currency: str
    reason: str | None = None


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(description="evt_...: stored once (a redelivery is a duplicate)")
    livemode: bool = Field(description="an event of the other mode than the key's is ignored")
    created: int | None = None


class _CheckoutData(BaseModel):
    model_config = ConfigDict(extra="allow")
    object: CheckoutSessionObject


class CheckoutSessionCompleted(_Event):
    """A checkout page was paid (a top-up) or completed (a card added)."""

    type: Literal["checkout.session.completed"]
    data: _CheckoutData


class _PaymentIntentData(BaseModel):
    model_config = ConfigDict(extra="allow")
    object: PaymentIntentObject


class PaymentIntentEvent(_Event):
    """A card payment moved: succeeded, failed, waits for 3-D Secure, or is processing."""

    type: Literal[
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.requires_action",
        "payment_intent.processing",
    ]
    data: _PaymentIntentData


class _SetupIntentData(BaseModel):
    model_config = ConfigDict(extra="allow")
    object: SetupIntentObject


class SetupIntentSucceeded(_Event):
    """A card was saved on the gateway's page."""

    type: Literal["setup_intent.succeeded"]
    data: _SetupIntentData


class _ChargeData(BaseModel):
    model_config = ConfigDict(extra="allow")
    object: ChargeObject


class ChargeRefunded(_Event):
    """A charge was refunded (each refund is booked once, by its id)."""

    type: Literal["charge.refunded"]
    data: _ChargeData


class _DisputeData(BaseModel):
    model_config = ConfigDict(extra="allow")
    object: DisputeObject


class ChargeDisputeCreated(_Event):
    """A payment was disputed: the amount is booked to the disputes account."""

    type: Literal["charge.dispute.created"]
    data: _DisputeData


class OtherEvent(_Event):
    """Any other type: stored and marked unhandled."""

    type: str
    data: dict[str, Any]


class StripeEvent(
    RootModel[
        CheckoutSessionCompleted
        | PaymentIntentEvent
        | SetupIntentSucceeded
        | ChargeRefunded
        | ChargeDisputeCreated
        | OtherEvent
    ]
):
    """A Stripe event, signed in the Stripe-Signature header over the raw body."""


class WebhookAck(Out):
    received: bool
    duplicate: bool | None = Field(default=None, description="a redelivery of a stored event")
    ignored: Literal["livemode"] | None = Field(
        default=None, description=("present when the event's mode (live or test) is not the key's")
    )


class OpenApiDocument(RootModel[dict[str, Any]]):
    """This document."""


# -- subscriptions -----------------------------------------------------------------------------

PlanId = Annotated[str, Text(40, description="a plan's id, such as pro")]
QuotaResource = Literal["cpu", "memory", "storage"]
QuotaLevel = Literal["ok", "warning", "exceeded"]
SubscriptionState = Literal["none", "active", "pending", "canceled", "suspended"]
ChangeKindOut = Literal["subscribe", "upgrade", "downgrade", "same"]
BILLING_MODES = ("usage", "subscription", "hybrid")


class PlanOut(Out):
    plan_id: str
    name: str
    version: int
    effective_from: Time
    price: Decimal_
    price_minor: Minor
    currency: Currency
    interval: Literal["month", "year"]
    cpu_limit: Decimal_ = Field(description="cores")
    memory_limit: Decimal_ = Field(description="GB")
    storage_limit: Decimal_ = Field(description="GB")
    retired: bool


class PlanList(Out):
    items: list[PlanOut]


class QuotaOut(Out):
    resource: QuotaResource
    limit: Decimal_
    allocated: Decimal_ = Field(description="what the running deployments hold now")
    percent: int
    level: QuotaLevel


class PendingOut(Out):
    change: Literal["subscribe", "upgrade"]
    plan_id: str
    invoice_id: int
    amount_due: Decimal_
    amount_due_minor: Minor


class SubscriptionOut(Out):
    user_id: int
    billing_mode: Literal[BILLING_MODES]  # type: ignore[valid-type]
    plans_offered: bool = Field(description="false in the usage mode: you pay for what you use")
    status: SubscriptionState = Field(
        description="none: no plan; pending: a subscription or upgrade waits for payment; "
        "suspended: deployments were suspended over a quota"
    )
    plan: PlanOut | None
    current_period_start: Time | None
    current_period_end: Time | None
    cancel_at_period_end: bool
    scheduled_plan_id: str | None = Field(description="a downgrade taking effect at the period end")
    renewal: Decimal_ | None = Field(description="what the next period costs, billed in advance")
    renewal_minor: Minor | None
    currency: Currency
    pending: PendingOut | None
    alert_threshold: int
    quotas: list[QuotaOut]


class ChoosePlan(StrictModel):
    plan_id: PlanId


class PreviewLine(Out):
    description: str
    amount: Decimal_
    amount_minor: Minor


class SubscriptionPreview(Out):
    kind: ChangeKindOut
    plan: PlanOut
    current_plan_id: str | None
    effective_at: Time = Field(description="now, or the period's end for a downgrade")
    lines: list[PreviewLine] = Field(description="the change's invoice, line by line")
    due_now: Decimal_
    due_now_minor: Minor
    renewal: Decimal_
    renewal_minor: Minor
    currency: Currency
    refused: str | None = Field(description="why it cannot be done now")


class CreatePlan(StrictModel):
    plan_id: PlanId
    name: Annotated[str, Text(100)]
    price: Annotated[Decimal, Quantity(1_000_000_000, "major units of the currency")]
    interval: Literal["month", "year"] = "month"
    cpu_limit: Annotated[Decimal, Quantity(1_000_000, "cores")]
    memory_limit: Annotated[Decimal, Quantity(1_000_000, "GB")]
    storage_limit: Annotated[Decimal, Quantity(1_000_000, "GB")]


class PlanVersionIn(StrictModel):
    name: Annotated[str, Text(100)]
    price: Annotated[Decimal, Quantity(1_000_000_000, "major units of the currency")]
    interval: Literal["month", "year"] = "month"
    cpu_limit: Annotated[Decimal, Quantity(1_000_000, "cores")]
    memory_limit: Annotated[Decimal, Quantity(1_000_000, "GB")]
    storage_limit: Annotated[Decimal, Quantity(1_000_000, "GB")]
    effective_from: Instant | None = Field(default=None, description="now when left out")


class SetSubscription(StrictModel):
    plan_id: PlanId | None = Field(default=None, description="change the user's plan")
    billing_mode: Literal[BILLING_MODES] | None = Field(  # type: ignore[valid-type]
        default=None, description="the user's billing mode (override)"
    )
    follow_installation: Flag = Field(
        default=False, description="true: drop the override, follow billingMode"
    )

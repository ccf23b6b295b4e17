"""Models, one module per aggregate. Importing this package registers every table."""
from .catalog import PriceVersion, SkuPrice
from .deployments import Deployment, DeploymentInterval, DeploymentKind, DeploymentState
from .invoices import (Event, Invoice, InvoiceCounter, InvoiceKind, InvoiceLine, InvoicePayment,
                       InvoicePdf, InvoiceStatus, PaymentTender, UsageAdjustment)
from .ledger import AccountKind, CreditLot, LedgerAccount, LedgerEntry, LedgerTransaction
from .ops import EmailStatus, OutboundEmail
from .payments import (OPEN_ATTEMPT_STATUSES, AttemptPurpose, AttemptStatus, CheckoutSession,
                       GatewayCustomer, PaymentAttempt, PaymentMethod, PaymentReversal,
                       ReversalKind, WebhookEvent, WebhookOutcome)
from .scheduling import (DaemonState, DaemonStatus, JobRun, RunOrigin, RunStatus, ScheduledJob,
                         SchedulerKind, SchedulerLease, SchedulerRole)
from .types import utcnow
from .usage import MeterMark, UsageDaily
from .users import ApiToken, CurrencyPin, TokenScope, User, UserSession
from .vouchers import Voucher, VoucherRedemption, VoucherRequest

__all__ = [
    "OPEN_ATTEMPT_STATUSES", "AccountKind", "ApiToken", "AttemptPurpose", "AttemptStatus",
    "CheckoutSession", "CurrencyPin", "GatewayCustomer", "PaymentAttempt", "PaymentMethod", "PaymentReversal",
    "ReversalKind", "CreditLot", "DaemonState", "DaemonStatus", "Deployment",
    "DeploymentInterval", "DeploymentKind", "DeploymentState", "EmailStatus", "Event",
    "Invoice", "InvoiceCounter", "InvoiceKind", "InvoiceLine", "InvoicePayment", "InvoicePdf",
    "InvoiceStatus", "JobRun", "LedgerAccount", "LedgerEntry", "LedgerTransaction", "MeterMark",
    "OutboundEmail", "PaymentTender", "PriceVersion", "RunOrigin", "RunStatus", "ScheduledJob",
    "SchedulerKind", "SchedulerLease", "SchedulerRole", "SkuPrice", "TokenScope", "UsageAdjustment",
    "UsageDaily", "User", "UserSession", "Voucher", "VoucherRedemption", "VoucherRequest", "WebhookEvent",
    "WebhookOutcome", "utcnow",
]

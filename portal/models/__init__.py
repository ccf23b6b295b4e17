"""Models, one module per aggregate. Importing this package registers every table."""
from .catalog import PriceVersion, SkuPrice
from .deployments import Deployment, DeploymentInterval, DeploymentKind, DeploymentState
from .ledger import AccountKind, CreditLot, LedgerAccount, LedgerEntry, LedgerTransaction
from .ops import EmailStatus, OutboundEmail
from .scheduling import (DaemonState, DaemonStatus, JobRun, RunOrigin, RunStatus, ScheduledJob,
                         SchedulerKind, SchedulerLease, SchedulerRole)
from .types import utcnow
from .usage import MeterMark, UsageDaily
from .users import ApiToken, TokenScope, User

__all__ = [
    "AccountKind", "ApiToken", "Deployment", "DeploymentInterval", "DeploymentKind",
    "DeploymentState", "MeterMark", "PriceVersion", "SkuPrice", "UsageDaily", "CreditLot", "EmailStatus", "LedgerAccount", "LedgerEntry",
    "LedgerTransaction", "OutboundEmail", "TokenScope", "User", "utcnow",
    "DaemonState", "DaemonStatus", "JobRun", "RunOrigin", "RunStatus", "ScheduledJob",
    "SchedulerKind", "SchedulerLease", "SchedulerRole",
]

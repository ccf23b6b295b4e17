"""Models, one module per aggregate. Importing this package registers every table."""
from .ledger import AccountKind, CreditLot, LedgerAccount, LedgerEntry, LedgerTransaction
from .ops import EmailStatus, OutboundEmail
from .types import utcnow
from .users import ApiToken, TokenScope, User

__all__ = [
    "AccountKind", "ApiToken", "CreditLot", "EmailStatus", "LedgerAccount", "LedgerEntry",
    "LedgerTransaction", "OutboundEmail", "TokenScope", "User", "utcnow",
]

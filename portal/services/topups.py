"""Prepaid balance top-ups: money confirmed by the card processor lands in the cash wallet
once (the confirmation's id is the idempotency key), then pending invoices are settled."""
from __future__ import annotations

from ..models import AccountKind, User
from ..money import Money
from . import ledger, settlement
from .errors import ValidationFailed


def credit_top_up(user: User, amount: Money, *, reference: str, description: str = "Top-up"
                  ) -> int:
    """Credit the cash wallet for a confirmed payment ``reference``; the same reference
    twice credits once. Returns the ledger transaction id."""
    if amount.amount_minor <= 0:
        raise ValidationFailed.field("amount", "must be greater than 0")
    if amount.currency != user.currency:
        raise ValidationFailed.field("amount", f"must be in {user.currency}")
    txn = ledger.post_transaction(
        idempotency_key=f"topup:{reference}", kind="topup", user_id=user.id,
        description=description,
        legs=[(ledger.system_account(AccountKind.STRIPE_CLEARING, amount.currency),
               -amount.amount_minor),
              (ledger.user_account(user, AccountKind.CASH), amount.amount_minor)])
    settlement.request_settlement(user.id)
    return txn.id

"""An account's standing, as far as it can be told today: "overdue" when it has an overdue
invoice, else "good". The one place that decides it (as an SQL expression, so lists filter
and count by it in the database); the standing of accounts proper replaces this."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, case, exists, select
from sqlalchemy.orm import InstrumentedAttribute

from ...models import Invoice, InvoiceStatus, User

GOOD, OVERDUE = "good", "overdue"
STANDINGS = (GOOD, OVERDUE)


def standing_of(
    user_id: ColumnElement[Any] | InstrumentedAttribute[int] = User.id,
) -> ColumnElement[str]:
    """The standing of the account whose id is ``user_id`` (a column of the outer query)."""
    has_overdue = exists(
        select(Invoice.id).where(
            Invoice.user_id == user_id, Invoice.status == InvoiceStatus.OVERDUE.value
        )
    )
    return case((has_overdue, OVERDUE), else_=GOOD)

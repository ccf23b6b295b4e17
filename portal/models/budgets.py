"""Budget caps: a user's monthly cap on spending, and the notices sent about it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Model
from .types import BigIntPK, UTCDateTime, utcnow


class Budget(Model):
    """One per user. ``cap_minor`` None: no cap. ``stop_at_cap``: suspend the user's
    deployments when spending reaches the cap (else only tell). ``revision`` goes up with
    every change of the cap or the choice, so each budget is noticed once per period."""

    __tablename__ = "budgets"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id"), primary_key=True, autoincrement=False
    )
    cap_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    stop_at_cap: Mapped[bool] = mapped_column(Boolean, default=False)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BudgetNotice(Model):
    """A threshold (80 or 100 percent) of one budget crossed in one billing period: UNIQUE,
    so two checks (or two daemons) notice it once. At 100 with stop at the cap,
    ``deployments`` lists the external ids suspended; ``resumed_at`` is set when they were
    let run again (a higher cap, no stop, or a new period)."""

    __tablename__ = "budget_notices"
    __table_args__ = (UniqueConstraint("user_id", "period_start", "threshold", "revision"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    threshold: Mapped[int] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(Integer)
    cap_minor: Mapped[int] = mapped_column(BigInteger)
    spent_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    stop_at_cap: Mapped[bool] = mapped_column(Boolean)
    deployments: Mapped[list] = mapped_column(JSON, default=list)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_emails.id"))
    resumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

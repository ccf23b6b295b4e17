"""May the user deploy more? The rules of seeds 002 and 003, by billing mode:

- refused while deployments are being removed or are suspended for an unpaid invoice, or an
  invoice is overdue;
- with a budget cap set to stop at the cap: refused once the period's spending reached it,
  or when what runs plus the new deployment, for the rest of the period, would take the
  spending over it (``required``: the cap that would take; services/budgets);
- prepaid: the funds (cash, voucher, unexpired credit, less what the hourly charges could not
  take yet) must cover 24 hours of what runs plus the new deployment (the one-day rule);
- subscription: within the plan's quotas;
- usage (postpaid): a valid card, or a voucher balance that covers the new deployment net
  of the other running ones over the rest of the billing period; with
  requireCardToDeploy off (accounts from before cards were required), neither is needed;
- hybrid: within the plan's quotas (when subscribed), then the postpaid rule.

``decide`` is pure; ``can_deploy`` reads the account in one statement (account.py)."""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass, replace
from datetime import datetime
from fractions import Fraction

from flask import current_app
from sqlalchemy import select

from ...extensions import db
from ...models import BillingMode, Subscription, SubscriptionStatus, User, utcnow
from ...money import Money
from .. import calendar as billing_calendar
from ..budgets import spending
from ..invoicing import prepaid as charging
from ..invoicing.subscribed import RESOURCES, mode_of
from ..metering import catalog
from ..metering import deployments as deployment_service
from ..metering.costs import micros_to_minor
from ..subscriptions import quotas
from ..wallet import credits
from .account import Account, read_account

PREPAID_HOURS = 24  # seed 003: the funds must last a day of existing plus new cost

MESSAGES = {
    "removing": "Deployments are scheduled for removal (an unpaid invoice, or prepaid funds "
    "that ran out): pay or top up first.",
    "suspended": "Deployments are suspended for an unpaid invoice: pay it first.",
    "overdue": "An invoice is overdue: pay it first.",
    "funds_cover_a_day": "The prepaid funds cover a day of what runs plus this deployment.",
    "funds_short": "The prepaid funds do not cover a day of what runs plus this deployment.",
    "within_quotas": "The deployment fits the plan's quotas.",
    "quota_exceeded": "The deployment does not fit the plan's quotas.",
    "not_subscribed": "Subscribe to a plan first.",
    "card_on_file": "A valid card is on file.",
    "vouchers_cover": "The voucher balance covers it for the rest of the billing period.",
    "card_not_required": "No card is required.",
    "card_required": "Add a valid card, or vouchers that cover the rest of the billing period.",
    "budget_reached": "Spending has reached the monthly budget cap: raise the cap first.",
    "budget_would_exceed": (
        "Running this deployment for the rest of the billing period would take spending over "
        "the monthly budget cap."
    ),
}


@dataclass(frozen=True)
class Planned:
    """The deployment asked about: its size in thousandths and what it costs an hour."""

    cpu_milli: int
    memory_mgb: int
    storage_mgb: int
    hourly_micros: Fraction


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # a key of MESSAGES
    runway_hours: int | None  # how long the funds last with the new deployment
    hourly_micros: Fraction  # the new deployment's hourly cost
    required_micros: Fraction  # what the funds (or vouchers, or the budget cap) must cover

    @property
    def message(self) -> str:
        return MESSAGES[self.reason]


def decide(
    *,
    mode: str,
    account: Account,
    currency: str,
    planned: Planned,
    hours_left: int,
    require_card: bool,
    quota_refusal: str | None,
) -> Decision:
    """The decision, from what was read; ``quota_refusal`` is None (fits), "quota_exceeded"
    or "not_subscribed"."""
    total = account.hourly_micros + planned.hourly_micros
    funds = account.funds_micros(currency)
    runway = int(Fraction(funds) / total) if total > 0 else None

    def answer(allowed: bool, reason: str, required: Fraction = Fraction(0)) -> Decision:
        return Decision(allowed, reason, runway, planned.hourly_micros, required)

    if account.removing:
        return answer(False, "removing")
    if account.suspended:
        return answer(False, "suspended")
    if account.overdue:
        return answer(False, "overdue")
    if account.budget_stop and account.budget_cap_minor is not None:
        # the period's spending plus what runs and the new one until the period ends
        burn = total if mode != "subscription" else Fraction(0)
        spent = spending.minor_to_micros(account.spent_minor, currency)
        needed = spent + burn * hours_left
        if account.budget_reached:
            return answer(False, "budget_reached", needed)
        if needed > spending.minor_to_micros(account.budget_cap_minor, currency):
            return answer(False, "budget_would_exceed", needed)
    if mode == "prepaid":
        required = PREPAID_HOURS * total
        return answer(
            funds >= required, "funds_cover_a_day" if funds >= required else "funds_short", required
        )
    if mode in ("subscription", "hybrid") and quota_refusal is not None:
        if mode == "subscription" or quota_refusal == "quota_exceeded":
            return answer(False, quota_refusal)
    if mode == "subscription":
        return answer(True, "within_quotas")
    # postpaid (usage, or hybrid past its quotas)
    if account.valid_card:
        return answer(True, "card_on_file")
    required = total * hours_left
    if account.voucher_micros(currency) >= required and total > 0:
        return answer(True, "vouchers_cover", required)
    if not require_card:
        return answer(True, "card_not_required")
    return answer(False, "card_required", required)


def planned_deployment(
    *,
    kind: str,
    sku: str | None,
    cpu_cores=None,
    memory_gb=None,
    storage_gb=None,
    public_ip=None,
    now: datetime | None = None,
) -> Planned:
    """The new deployment at the prices in force (raises ValidationFailed on a bad spec)."""
    now = now or utcnow()
    version = catalog.version_at(now, skus=bool(sku))
    spec = deployment_service.resolve_spec(
        version,
        kind=kind,
        sku=sku,
        cpu_cores=cpu_cores,
        memory_gb=memory_gb,
        storage_gb=storage_gb,
        public_ip=public_ip,
    )
    if spec.sku_code:
        # a SKU's hourly price covers its disk while it runs (as metering bills it)
        price = version.sku(spec.sku_code)
        assert price is not None  # resolve_spec checked it
        return Planned(
            spec.cpu_milli, spec.memory_mgb, spec.storage_mgb, Fraction(price.hourly_micros)
        )
    month_seconds = calendar.monthrange(now.year, now.month)[1] * 86400
    hourly = (
        Fraction(spec.cpu_milli * version.cpu_per_core_hour_micros, 1000)
        + Fraction(spec.memory_mgb * version.memory_per_gb_hour_micros, 1000)
        + (version.public_ip_per_hour_micros if spec.public_ip else 0)
        + Fraction(
            spec.storage_mgb * version.storage_per_gb_month_micros * 3600, 1000 * month_seconds
        )
    )
    return Planned(spec.cpu_milli, spec.memory_mgb, spec.storage_mgb, hourly)


def _quota_refusal(user: User, planned: Planned) -> str | None:
    sub = db.session.scalar(select(Subscription).where(Subscription.user_id == user.id))
    if sub is None or sub.status != SubscriptionStatus.ACTIVE:
        return "not_subscribed"
    held = quotas.allocation(user.id)
    size = {"cpu": planned.cpu_milli, "memory": planned.memory_mgb, "storage": planned.storage_mgb}
    limits = sub.plan_version.limits()
    if any(held[r] + size[r] > limits[r] for r in RESOURCES):
        return "quota_exceeded"
    return None


def can_deploy(
    user: User, planned: Planned, now: datetime | None = None, account: Account | None = None
) -> Decision:
    """``account``: the user's, read at ``now`` with the user (``read_user_account``)."""
    now = now or utcnow()
    mode = str(mode_of(user.billing_mode))
    account = account or read_account(user, now)
    if mode == BillingMode.PREPAID:
        # As the hourly charges see the funds: unexpired credit only, less what is owed.
        account = replace(
            account,
            credit_minor=credits.available_credit(user, now).amount_minor,
            cash_minor=account.cash_minor - charging.shortfall(user, now),
        )
    refusal = None
    if mode in (BillingMode.SUBSCRIPTION, BillingMode.HYBRID):
        refusal = _quota_refusal(user, planned)
    end = billing_calendar.period_containing(now, billing_calendar.invoice_day())[1]
    hours_left = max(1, math.ceil((end - now).total_seconds() / 3600))
    return decide(
        mode=mode,
        account=account,
        currency=user.currency,
        planned=planned,
        hours_left=hours_left,
        require_card=current_app.config["BILLING"].require_card_to_deploy,
        quota_refusal=refusal,
    )


def to_money(micros: Fraction, currency: str) -> Money:
    """Rounded once, half up, to the currency's minor units (a requirement rounds up)."""
    return Money(micros_to_minor(micros, currency), currency)

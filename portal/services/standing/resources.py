"""The standing page's figures: each live deployment with its state and, where a step is
coming, its countdown; what Pay to restore would pay and bring back; and how long the funds
last at the current rate.

Countdowns come from what was decided, never guessed: an overdue invoice's schedule
(``dunning.schedule_of``: suspended when its grace ends), the ``dunning_steps`` rows (when a
deployment was suspended, its removal date), and for a prepaid account whose funds ran out
the ``billing.deployment.removing`` event's ``effective_at``. A REMOVING deployment with no
such event is removed ``PREPAID_GRACE`` after it entered REMOVING (its last change).

The forecast divides the funds (credits, vouchers, prepaid balance) by the average hourly
cost of the last ``FORECAST_DAYS`` complete UTC days of metered usage (the daily rollups),
exactly; an account younger than that is averaged over the hours it existed.

A page is a fixed handful of queries however many deployments, invoices or steps it shows."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from flask import current_app
from sqlalchemy import ColumnElement, Select, bindparam, func, select
from sqlalchemy.orm import lazyload

from ...extensions import db
from ...models import (
    AccountKind,
    Deployment,
    DeploymentInterval,
    DeploymentState,
    DunningStep,
    Event,
    Invoice,
    InvoiceStatus,
    LedgerAccount,
    PaymentMethod,
    UsageDaily,
    User,
    utcnow,
)
from ...money import Money, currency_digits
from ..budgets import spending
from ..metering.usage import month_seconds
from ..payments import settlement
from ..wallet import credits
from .account import (
    ACCOUNT_COLUMNS,
    Account,
    account_columns,
    account_of,
    hourly_micros,
    read_account,
    time_params,
)
from .candeploy import PREPAID_HOURS
from .dunning import schedule_of
from .status import Standing, status_of

S = DeploymentState
LIVE = (S.PENDING, S.ACTIVE, S.SUSPENDED, S.REMOVING)
PREPAID_GRACE = timedelta(hours=24)  # a prepaid account's REMOVING lasts this long
FORECAST_DAYS = 7
OVERDUE, PREPAID = "overdue", "prepaid"
REMOVING_EVENT = "billing.deployment.removing"


@dataclass(frozen=True)
class Countdown:
    """The next thing that happens to a deployment unless the account is paid up:
    ``suspended`` or ``removed`` at ``at``."""

    event: str
    at: datetime


@dataclass(frozen=True)
class Resource:
    external_id: str
    name: str
    kind: str
    state: str
    since: datetime | None  # suspended (or put up for removal) at
    countdown: Countdown | None
    cause: str | None  # OVERDUE (an unpaid invoice), PREPAID (the funds ran out), None

    @property
    def label(self) -> str:
        return self.name or self.external_id

    @property
    def restorable(self) -> bool:
        """Pay to restore brings it back."""
        return self.state in (S.SUSPENDED, S.REMOVING) and self.cause is not None


@dataclass(frozen=True)
class Forecast:
    """How long the funds last at the average hourly cost of the last days."""

    funds: Money
    hourly_micros: Fraction  # exact micro-units an hour; 0: no usage
    window_hours: int
    basis: str = "week"  # "week": the metered days; "now": what runs now (none metered yet)

    @property
    def hours(self) -> int | None:
        if self.hourly_micros <= 0:
            return None
        funds = self.funds.amount_minor * 10 ** (6 - currency_digits(self.funds.currency))
        return max(0, int(Fraction(funds) / self.hourly_micros))

    @property
    def days(self) -> int | None:
        return None if self.hours is None else self.hours // 24

    @property
    def daily(self) -> Money:
        return Money(_round_up(self.hourly_micros * 24, self.funds.currency), self.funds.currency)


@dataclass(frozen=True)
class Quote:
    """What Pay to restore pays and brings back."""

    invoices: list[Invoice]  # the overdue invoices, oldest due first
    invoices_due: Money
    shortfall: Money  # prepaid: what the funds lack for a day at the current rate
    minimum_extra: Money  # what the smallest top-up adds (kept in the prepaid balance)
    names: list[str]  # the deployments it brings back
    from_wallets: Money  # what the credits, vouchers and prepaid balance pay of it
    card: str | None  # the saved card charged for the rest
    rest: Money  # what neither pays: taken on the card processor's checkout page
    cards_on: bool = True  # card payments are set up (else the rest cannot be paid here)

    @property
    def total(self) -> Money:
        return self.invoices_due + self.shortfall + self.minimum_extra

    @property
    def top_up(self) -> Money:
        """What a saved card tops up for the prepaid shortfall."""
        return self.shortfall + self.minimum_extra

    @property
    def needed(self) -> bool:
        return bool(self.names) or self.total.amount_minor > 0

    @property
    def payable(self) -> bool:
        """Pay to restore can pay it all from here."""
        return self.cards_on or self.rest.amount_minor == 0


@dataclass(frozen=True)
class StandingPage:
    now: datetime
    standing: Standing
    resources: list[Resource]
    quote: Quote
    forecast: Forecast
    valid_card: bool

    @property
    def restorable(self) -> list[Resource]:
        return [r for r in self.resources if r.restorable]


def _round_up(micros: Fraction, currency: str) -> int:
    """Exact micro-units in minor units, rounded up (what must be covered)."""
    scaled = micros / 10 ** (6 - currency_digits(currency))
    return -((-scaled.numerator) // scaled.denominator)


# -- the forecast ---------------------------------------------------------------------------
def _window(now: datetime) -> tuple[datetime, datetime]:
    end = datetime(now.year, now.month, now.day, tzinfo=UTC)
    return end - timedelta(days=FORECAST_DAYS), end


# Built once: pages read it on every request, and building costs more than running it.
_RATES = (
    select(
        UsageDaily.user_id,
        func.extract("year", UsageDaily.day),
        func.extract("month", UsageDaily.day),
        func.sum(UsageDaily.cpu_cost + UsageDaily.memory_cost),
        func.sum(UsageDaily.storage_cost),
        func.sum(UsageDaily.instance_cost + UsageDaily.ip_cost),
    )
    .where(
        UsageDaily.user_id.in_(bindparam("ids", expanding=True)),
        UsageDaily.day >= bindparam("start_day"),
        UsageDaily.day < bindparam("end_day"),
    )
    .group_by(
        UsageDaily.user_id,
        func.extract("year", UsageDaily.day),
        func.extract("month", UsageDaily.day),
    )
)


def _rate(cost: Fraction, created: datetime, start: datetime, end: datetime) -> Fraction:
    """The average hourly cost over the window [start, end): ``cost`` over the hours the
    account (created at ``created``) existed in it."""
    begin = max(start, created.replace(minute=0, second=0, microsecond=0))
    hours = int((end - begin).total_seconds()) // 3600
    return cost / hours if hours > 0 and cost > 0 else Fraction(0)


def hourly_rates(users: list[tuple[int, datetime]], now: datetime) -> dict[int, Fraction]:
    """The average hourly cost (exact micro-units) of each account ``(id, created_at)`` over
    the last FORECAST_DAYS complete days, in one grouped query on (user_id, day)."""
    if not users:
        return {}
    start, end = _window(now)
    rows = db.session.execute(
        _RATES,
        {"ids": [uid for uid, _ in users], "start_day": start.date(), "end_day": end.date()},
    ).all()
    cost: dict[int, Fraction] = defaultdict(Fraction)
    for uid, year, month, per_hour_ms, storage, per_hour_s in rows:
        first = datetime(int(year), int(month), 1).date()
        cost[uid] += Fraction(int(per_hour_ms or 0), 3_600_000)
        cost[uid] += Fraction(int(storage or 0), 1000 * month_seconds(first))
        cost[uid] += Fraction(int(per_hour_s or 0), 3600)
    return {uid: _rate(cost[uid], created, start, end) for uid, created in users}


def _forecast(user: User, account: Account, rate: Fraction) -> Forecast:
    funds = Money(account.funds_minor, user.currency)
    if rate == 0 and account.hourly_micros > 0:
        return Forecast(funds, account.hourly_micros, FORECAST_DAYS * 24, "now")
    return Forecast(funds, rate, FORECAST_DAYS * 24)


def forecast(user: User, account: Account, now: datetime) -> Forecast:
    """The last days' rate; with none metered yet (a new account), what runs now."""
    return _forecast(user, account, hourly_rates([(user.id, user.created_at)], now)[user.id])


@dataclass(frozen=True)
class Figures:
    """An account's money figures for the admin's page of it, read in one statement."""

    account: Account  # its budget's spending summed whether or not it has a cap
    available_credit: Money  # the open credit lots, as ``credits.available_credit``
    receivable: Money
    forecast: Forecast


@functools.cache
def _figures_statement(period_parts: int, window_parts: int) -> Select:
    """``read_account``'s columns (the spending always summed), the open credit lots, the
    receivable balance and the forecast window's usage (``hourly_rates``); built once per
    shape, the dates bound per call."""
    uid: ColumnElement[int] = bindparam("uid")
    currency: ColumnElement[str] = bindparam("currency")
    window = spending.Months(
        bindparam("w_start"),  # type: ignore[arg-type]
        bindparam("w_end"),  # type: ignore[arg-type]
        tuple((bindparam(f"w{i}_lo"), bindparam(f"w{i}_hi")) for i in range(window_parts)),  # type: ignore[misc]
    )
    receivable = (
        select(func.coalesce(func.sum(LedgerAccount.balance_minor), 0))
        .where(
            LedgerAccount.user_id == uid,
            LedgerAccount.kind == str(AccountKind.RECEIVABLE),
            LedgerAccount.currency == currency,
        )
        .scalar_subquery()
    )
    return select(
        *account_columns(uid, currency, period_parts, spending_always=True),
        credits.available_credit_column(uid, currency, bindparam("now")),
        receivable,
        *spending.usage_columns(uid, window),
    )


def figures(user: User, now: datetime | None = None) -> Figures:
    """The account (``read_account``, with the budget's spending whatever the cap), the
    spendable credit, the receivable and the forecast (``forecast``), in one round trip
    instead of the four services' seven."""
    now = now or utcnow()
    period = spending.months_of(now)
    start, end = _window(now)
    window = spending.months_between(start.date(), end.date())
    params = {
        "uid": user.id,
        "currency": user.currency,
        "now": now,
        "w_start": window.start,
        "w_end": window.end,
        **time_params(period, now),
    }
    for i, (lo, hi) in enumerate(window.parts):
        params[f"w{i}_lo"], params[f"w{i}_hi"] = lo, hi
    row = tuple(
        db.session.execute(_figures_statement(len(period.parts), len(window.parts)), params).one()
    )
    split = ACCOUNT_COLUMNS + spending.width(period)
    account = account_of(user, row[:split], period, now, spending_always=True)
    credit, receivable, *used = row[split:]
    rate = _rate(spending.usage_micros(used, window), user.created_at, start, end)
    return Figures(
        account=account,
        available_credit=Money(int(credit or 0), user.currency),
        receivable=Money(int(receivable or 0), user.currency),
        forecast=_forecast(user, account, rate),
    )


def carded_column(user_id, month_now) -> ColumnElement[bool]:
    """Whether the account ``user_id`` has a saved card that has not expired by the month
    ``month_now`` (year * 12 + month): ``runways`` reads no runway for it."""
    return (
        select(PaymentMethod.id)
        .where(
            PaymentMethod.user_id == user_id,
            PaymentMethod.removed_at.is_(None),
            PaymentMethod.exp_year * 12 + PaymentMethod.exp_month >= month_now,
        )
        .exists()
    )


def runways(
    accounts: list[tuple[int, datetime, Money]],
    now: datetime,
    *,
    carded: Collection[int] | None = None,
) -> dict[int, int | None]:
    """Hours each account's funds last at its recent rate (None: no usage, or a valid card
    pays), for a page of the admin list: two queries whatever the page's length, one when
    the caller read which accounts have a valid card (``carded``, as ``carded_column``)."""
    ids = [uid for uid, _, _ in accounts]
    if carded is None:
        month_now = now.year * 12 + now.month
        carded = set(
            db.session.scalars(
                select(PaymentMethod.user_id).where(
                    PaymentMethod.user_id.in_(ids),
                    PaymentMethod.removed_at.is_(None),
                    PaymentMethod.exp_year * 12 + PaymentMethod.exp_month >= month_now,
                )
            )
        )
    rates = hourly_rates([(uid, created) for uid, created, _ in accounts], now)
    return {
        uid: None if uid in carded else Forecast(funds, rates[uid], FORECAST_DAYS * 24).hours
        for uid, _, funds in accounts
    }


# -- the deployments and their countdowns -----------------------------------------------------
def _dunned(user_id: int) -> tuple[dict[str, DunningStep], dict[str, DunningStep], dict]:
    """The suspended and removing steps still in force (their invoice neither restored nor
    past removal), by the external id they acted on; and every step by invoice."""
    by_invoice: dict[int, list[DunningStep]] = defaultdict(list)
    for step in db.session.scalars(
        select(DunningStep)
        .where(
            DunningStep.user_id == user_id,
            DunningStep.step.in_(("suspended", "removing", "removed", "restored")),
        )
        .order_by(DunningStep.id)
    ):
        by_invoice[step.invoice_id].append(step)
    suspended: dict[str, DunningStep] = {}
    removing: dict[str, DunningStep] = {}
    for steps in by_invoice.values():
        if any(s.step in ("removed", "restored") for s in steps):
            continue
        for s in steps:
            target = suspended if s.step == "suspended" else removing
            for name in s.deployments or []:
                target.setdefault(name, s)
    return suspended, removing, by_invoice


def _removal_times(user_id: int) -> dict[str, datetime]:
    """When each deployment put up for removal goes: the newest removing event's
    ``effective_at`` (or its time plus the prepaid grace) per external id."""
    found: dict[str, datetime] = {}
    for event in db.session.scalars(
        select(Event)
        .where(Event.user_id == user_id, Event.name == REMOVING_EVENT)
        .order_by(Event.id.desc())
    ):
        name = (event.payload or {}).get("external_id")
        if not name or name in found:
            continue
        at = (event.payload or {}).get("effective_at")
        try:
            when = datetime.fromisoformat(at) if at else event.created_at + PREPAID_GRACE
        except ValueError:
            when = event.created_at + PREPAID_GRACE
        found[name] = when if when.tzinfo else when.replace(tzinfo=UTC)
    return found


def overdue_invoices(user_id: int) -> list[Invoice]:
    """The user's overdue invoices, oldest due first."""
    return list(
        db.session.scalars(
            select(Invoice)
            .where(Invoice.user_id == user_id, Invoice.status == InvoiceStatus.OVERDUE.value)
            .order_by(Invoice.due_at, Invoice.id)
        )
    )


def resources(user: User, overdue: list[Invoice], now: datetime) -> list[Resource]:
    deps = list(
        db.session.scalars(
            select(Deployment)
            .options(lazyload(Deployment.intervals))  # not needed here: never loaded
            .where(Deployment.user_id == user.id, Deployment.state.in_([str(s) for s in LIVE]))
            .order_by(Deployment.name, Deployment.id)
        )
    )
    suspended, removing, by_invoice = _dunned(user.id)
    taken = {i: {s.step for s in steps} for i, steps in by_invoice.items()}
    pending = [schedule_of(i).suspend_at for i in overdue if "suspended" not in taken.get(i.id, ())]
    suspend_at = min(pending) if pending else None
    prepaid = [d for d in deps if d.state == S.REMOVING and d.external_id not in removing]
    removal_times = _removal_times(user.id) if prepaid else {}
    out = []
    for d in deps:
        since, countdown, cause = None, None, None
        if d.state == S.REMOVING and d.external_id in removing:
            step = removing[d.external_id]
            since, cause = step.created_at, OVERDUE
            countdown = Countdown("removed", step.removal_at or step.created_at)
        elif d.state == S.REMOVING:
            since, cause = d.updated_at, PREPAID
            at = removal_times.get(d.external_id, d.updated_at + PREPAID_GRACE)
            countdown = Countdown("removed", at)
        elif d.state == S.SUSPENDED and d.external_id in suspended:
            step = suspended[d.external_id]
            since, cause = step.created_at, OVERDUE
            if step.removal_at is not None:
                countdown = Countdown("removed", step.removal_at)
        elif d.state == S.ACTIVE and suspend_at is not None:
            countdown = Countdown("suspended", suspend_at)
        out.append(Resource(d.external_id, d.name, d.kind, d.state, since, countdown, cause))
    return out


def labels(user_id: int, external_ids: list[str]) -> list[str]:
    """The names of the user's deployments ``external_ids`` (their ids when unnamed)."""
    if not external_ids:
        return []
    names = dict(
        db.session.execute(
            select(Deployment.external_id, Deployment.name).where(
                Deployment.user_id == user_id, Deployment.external_id.in_(external_ids)
            )
        ).all()
    )
    return [names.get(e) or e for e in external_ids]


def _interval_hourly(i: DeploymentInterval, now: datetime) -> Fraction:
    return hourly_micros(
        (
            i.cpu_milli * i.cpu_rate_micros + i.memory_mgb * i.memory_rate_micros,
            i.instances * i.instance_rate_micros + i.public_ips * i.ip_rate_micros,
            i.storage_mgb * i.storage_rate_micros,
        ),
        now,
    )


def _hourly_when_running(user_id: int, external_ids: list[str], now: datetime) -> Fraction:
    """What the deployments ``external_ids`` add to the hourly cost once running again: each
    one's last running interval (its snapshotted rates) less what its open one bills now."""
    last_running: dict[int, Fraction] = {}
    billing_now: dict[int, Fraction] = {}
    for i in db.session.scalars(
        select(DeploymentInterval)
        .join(Deployment, Deployment.id == DeploymentInterval.deployment_id)
        .where(
            Deployment.user_id == user_id,
            Deployment.external_id.in_(external_ids),
            (DeploymentInterval.end_epoch.is_(None)) | (DeploymentInterval.state == str(S.ACTIVE)),
        )
        .order_by(DeploymentInterval.deployment_id, DeploymentInterval.start_epoch.desc())
    ):
        if i.end_epoch is None:
            billing_now[i.deployment_id] = _interval_hourly(i, now)
        if i.state == S.ACTIVE:
            last_running.setdefault(i.deployment_id, _interval_hourly(i, now))
    return sum(
        (
            max(Fraction(0), cost - billing_now.get(d, Fraction(0)))
            for d, cost in last_running.items()
        ),
        Fraction(0),
    )


# -- the quote ------------------------------------------------------------------------------
def _wallets(user: User, now: datetime) -> int:
    """What the wallets pay now, as settlement spends them (open credit lots only)."""
    return sum(settlement.available_balances(user, now).values())


def quote(
    user: User,
    account: Account,
    overdue: list[Invoice],
    items: list[Resource],
    *,
    cards_on: bool,
    card: str | None,
    now: datetime,
) -> Quote:
    cur = user.currency
    due = sum(i.total_minor - i.amount_paid_minor for i in overdue)
    wallets = _wallets(user, now) if due or any(r.cause == PREPAID for r in items) else 0
    from_wallets = min(due, wallets)
    shortfall = 0
    back = [r.external_id for r in items if r.cause == PREPAID and r.restorable]
    if back:
        # the one-day rule: the funds left after the invoices cover a day of what runs,
        # the deployments brought back included
        hourly = account.hourly_micros + _hourly_when_running(user.id, back, now)
        shortfall = max(0, _round_up(PREPAID_HOURS * hourly, cur) - (wallets - from_wallets))
    rest = due - from_wallets + shortfall
    # what is paid as a top-up (a saved card's for the shortfall, the checkout page's for
    # all the rest) is at least TOPUP_MIN: the difference stays in the prepaid balance
    low = Money.from_decimal(
        str(current_app.config.get("TOPUP_MIN", "1")), cur, exact=False
    ).amount_minor
    if rest > 0 and cards_on and card:
        payer: str | None = card
        checkout = 0
        extra = max(0, low - shortfall) if shortfall else 0
    else:
        payer, checkout = None, rest
        extra = max(0, low - rest) if rest else 0
        checkout += extra
    return Quote(
        invoices=overdue,
        invoices_due=Money(due, cur),
        shortfall=Money(shortfall, cur),
        minimum_extra=Money(extra, cur),
        names=[r.label for r in items if r.restorable],
        from_wallets=Money(from_wallets, cur),
        card=payer,
        rest=Money(checkout, cur),
        cards_on=cards_on,
    )


def _default_card(user: User) -> str | None:
    card = db.session.scalar(
        select(PaymentMethod)
        .where(PaymentMethod.user_id == user.id, PaymentMethod.removed_at.is_(None))
        .order_by(
            PaymentMethod.is_default.desc(),
            PaymentMethod.created_at.desc(),
            PaymentMethod.id.desc(),
        )
        .limit(1)
    )
    return card.label if card is not None else None


def standing_page(user: User, *, cards_on: bool, now: datetime | None = None) -> StandingPage:
    now = now or utcnow()
    account = read_account(user, now)
    runway = None
    if not account.valid_card and account.hourly_micros > 0:
        runway = int(account.funds_micros(user.currency) / account.hourly_micros)
    status, reasons = status_of(account, runway)
    overdue = overdue_invoices(user.id)
    items = resources(user, overdue, now)
    fc = forecast(user, account, now)
    card = _default_card(user) if cards_on else None
    q = quote(user, account, overdue, items, cards_on=cards_on, card=card, now=now)
    return StandingPage(
        now=now,
        standing=Standing(status, reasons, runway),
        resources=items,
        quote=q,
        forecast=fc,
        valid_card=account.valid_card,
    )

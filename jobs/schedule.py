"""The periodic jobs the billing daemon schedules. A capability registers its job here:
a name (used by the admin page and ``POST /jobs/<name>``), a cron expression in UTC (or a
function of the app config that returns one), the dotted job function, its queue, the
prefix of its deterministic job ids and how a due time becomes the function's arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from portal.services.scheduler import PeriodicJob

Config = Mapping[str, Any]


@dataclass(frozen=True)
class Registration:
    name: str
    cron: str | Callable[[Config], str]
    func: str
    queue: str
    id_prefix: str
    args: Callable[[datetime], tuple]
    enabled: Callable[[Config], bool]

    def resolve(self, config: Config) -> PeriodicJob:
        cron = self.cron(config) if callable(self.cron) else self.cron
        return PeriodicJob(self.name, cron, self.func, self.queue, self.id_prefix, self.args)


_REGISTRY: dict[str, Registration] = {}


def register(
    name: str,
    *,
    cron: str | Callable[[Config], str],
    func: str,
    queue: str,
    id_prefix: str,
    args: Callable[[datetime], tuple] = lambda due: (),
    enabled: Callable[[Config], bool] = lambda config: True,
) -> Registration:
    registration = Registration(name, cron, func, queue, id_prefix, args, enabled)
    _REGISTRY[name] = registration
    return registration


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def periodic_jobs(config: Config) -> list[PeriodicJob]:
    return [r.resolve(config) for r in _REGISTRY.values() if r.enabled(config)]


def _meter_upto(due: datetime) -> tuple:
    # meter_due meters every complete hour before this boundary: at 18:00 the hour 17-18.
    return (due.astimezone(UTC).strftime("%Y-%m-%dT%H"),)


register(
    "calculate-usage",
    cron=lambda config: config["BILLING"].usage_calculation_interval,
    func="jobs.metering.meter_due",
    queue="metering",
    id_prefix="meter",
    args=_meter_upto,
    enabled=lambda config: config["BILLING"].enabled,
)


def _invoice_period(due: datetime) -> tuple:
    from .invoicing import period_ending_at

    return period_ending_at(due)


# On the invoice day, just after midnight UTC, the period that ended is invoiced.
register(
    "generate-invoices",
    cron=lambda config: f"5 0 {config['BILLING'].invoice_day} * *",
    func="jobs.invoicing.generate_invoices",
    queue="invoicing",
    id_prefix="invoices",
    args=_invoice_period,
    enabled=lambda config: config["BILLING"].enabled,
)
register(
    "mark-overdue",
    cron="15 0 * * *",
    func="jobs.invoicing.mark_overdue",
    queue="invoicing",
    id_prefix="overdue",
    enabled=lambda config: config["BILLING"].enabled,
)
register(
    "settle-invoices",
    cron="30 1 * * *",
    func="jobs.settlement.settle_due",
    queue="settlement",
    id_prefix="settle",
    enabled=lambda config: config["BILLING"].enabled,
)
# Webhooks whose processing job was lost (a crash between commit and enqueue) go again.
register(
    "requeue-webhooks",
    cron="*/10 * * * *",
    func="jobs.settlement.requeue_webhooks",
    queue="settlement",
    id_prefix="webhooks",
    enabled=lambda config: config["BILLING"].enabled,
)
# Card charges whose answer was lost (a timeout, a crash) are looked up at the gateway.
register(
    "recover-payments",
    cron="5-55/10 * * * *",
    func="jobs.settlement.recover_payments",
    queue="settlement",
    id_prefix="recover",
    enabled=lambda config: config["BILLING"].enabled,
)

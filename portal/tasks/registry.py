"""The task registry and the schedule registry.

A task is a job function registered under a stable name (``@task("metering.meter_due")``).
Jobs are enqueued by that name, so RQ and the ``job_runs`` table store names that survive
moving or renaming the function. The domain packages' ``jobs`` modules register their
tasks and periodic jobs when they are imported (the app factory imports them).

A periodic job (``schedule``) has a name (used by the admin page and ``POST /jobs/<name>``),
a cron expression in UTC (or a function of the app config that returns one), the task, its
queue, the prefix of its deterministic job ids and how a due time becomes the task's
arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from werkzeug.utils import ImportStringError, import_string

Config = Mapping[str, Any]
F = TypeVar("F", bound=Callable[..., Any])

_TASKS: dict[str, Callable[..., Any]] = {}
RUNNER = "tasks.execute_run"  # the task every scheduled or manual run goes through

# The dotted paths jobs were enqueued (and job runs stored) under before tasks had names:
# a job queued, failed or scheduled before the upgrade still finds its function.
LEGACY_NAMES = {
    "jobs.accounts.register": "accounts.register",
    "jobs.accounts.send_password_reset": "accounts.send_password_reset",
    "jobs.notify.send_email": "mail.send_email",
    "jobs.metering.meter_due": "metering.meter_due",
    "jobs.metering.meter_chunk": "metering.meter_chunk",
    "jobs.metering.backfill_deployment": "metering.backfill_deployment",
    "jobs.invoicing.generate_invoices": "invoicing.generate_invoices",
    "jobs.invoicing.generate_chunk": "invoicing.generate_chunk",
    "jobs.invoicing.mark_overdue": "invoicing.mark_overdue",
    "jobs.invoicing.render_invoice_pdf": "invoicing.render_invoice_pdf",
    "jobs.settlement.settle_user": "payments.settle_user",
    "jobs.settlement.settle_due": "payments.settle_due",
    "jobs.settlement.recover_payments": "payments.recover_payments",
    "jobs.settlement.process_webhook": "payments.process_webhook",
    "jobs.settlement.requeue_webhooks": "payments.requeue_webhooks",
    "jobs.settlement.detach_card": "payments.detach_card",
    "jobs.queues.enqueue_batch": "tasks.enqueue_batch",
    "jobs.runs.execute": "tasks.execute_run",
}


class UnknownTask(LookupError):
    pass


def task(name: str) -> Callable[[F], F]:
    """Register a job function under ``name``."""

    def register_task(func: F) -> F:
        known = _TASKS.get(name)
        if known is not None and known is not func:
            raise ValueError(f"task {name!r} is registered twice")
        _TASKS[name] = func
        return func

    return register_task


def resolve(name: str) -> Callable[..., Any]:
    """The function of a task name (or of a name it was stored under before). A name no
    task has is read as the dotted path of a function (the tests' own job functions)."""
    func = _TASKS.get(LEGACY_NAMES.get(name, name))
    if func is not None:
        return func
    try:
        return import_string(name)
    except ImportStringError:
        raise UnknownTask(f"no task named {name!r}") from None


def run_task(name: str, *args: Any, **kwargs: Any) -> Any:
    """What RQ runs for every job: the named task."""
    return resolve(name)(*args, **kwargs)


# -- the schedule ----------------------------------------------------------------------------


def _no_args(_due: datetime) -> tuple:
    return ()


@dataclass(frozen=True)
class Registration:
    name: str
    cron: str | Callable[[Config], str]
    func: str  # the task name
    queue: str
    id_prefix: str
    args: Callable[[datetime], tuple]
    enabled: Callable[[Config], bool]
    # "Run now" at a time -> the arguments; None: ``args`` of that time.
    manual_args: Callable[[datetime], tuple] | None = None


_SCHEDULE: dict[str, Registration] = {}


def schedule(
    name: str,
    *,
    cron: str | Callable[[Config], str],
    func: str,
    queue: str,
    id_prefix: str,
    args: Callable[[datetime], tuple] = _no_args,
    enabled: Callable[[Config], bool] = lambda config: True,
    manual_args: Callable[[datetime], tuple] | None = None,
) -> Registration:
    registration = Registration(name, cron, func, queue, id_prefix, args, enabled, manual_args)
    _SCHEDULE[name] = registration
    return registration


def unschedule(name: str) -> None:
    _SCHEDULE.pop(name, None)


def registrations(config: Config) -> list[Registration]:
    return [r for r in _SCHEDULE.values() if r.enabled(config)]

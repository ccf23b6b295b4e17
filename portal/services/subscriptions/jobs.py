"""Subscription jobs: "check-quotas" every 15 minutes (changes waiting for payment are looked
at first: paid ones take effect, ones whose period ended unpaid are dropped)."""

from __future__ import annotations

from datetime import UTC, datetime

from ...extensions import db
from ...tasks.registry import schedule, task
from . import changes, quotas


@task("subscriptions.check_quotas")
def check_quotas(at_iso: str | None = None) -> dict[str, int]:
    """At the schedule's slot time (the daemon's ``--now`` moves it), so a replay decides
    as the run it replays."""
    now = datetime.fromisoformat(at_iso).astimezone(UTC) if at_iso else None
    pending = changes.refresh_pending(now)  # paid changes take effect before quotas are read
    result = quotas.check_quotas(now)
    db.session.commit()
    return {**result.figures(), "pending_changes": pending}


def _at(due: datetime) -> tuple[str]:
    return (due.astimezone(UTC).isoformat(),)


schedule(
    "check-quotas",
    cron="*/15 * * * *",
    func="subscriptions.check_quotas",
    queue="default",
    id_prefix="quotas",
    args=_at,
    enabled=lambda config: (
        config["BILLING"].enabled
        and (
            config["BILLING"].billing_mode in ("subscription", "hybrid")
            or bool(config["BILLING"].subscription_plans)
        )
    ),
)

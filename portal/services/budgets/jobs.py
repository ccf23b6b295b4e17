"""The "check-budgets" job, every 15 minutes: warnings, reached caps, suspensions and
resumptions of budget caps (rules.py). Metering asks for the same task for the users of a
chunk it has just metered."""

from __future__ import annotations

from datetime import UTC, datetime

from ...extensions import db
from ...tasks.registry import schedule, task
from . import rules


@task("budgets.check")
def check_budgets(
    at_iso: str | None = None, first_user: int | None = None, stop_user: int | None = None
) -> dict[str, int]:
    """At the schedule's slot time (the daemon's ``--now`` moves it), so a replay decides
    as the run it replays; for metering, the users with ids in [first_user, stop_user)."""
    now = datetime.fromisoformat(at_iso).astimezone(UTC) if at_iso else None
    users = None if first_user is None or stop_user is None else range(first_user, stop_user)
    result = rules.check(now, users)
    db.session.commit()
    return result.figures()


def _at(due: datetime) -> tuple[str]:
    return (due.astimezone(UTC).isoformat(),)


schedule(
    "check-budgets",
    cron="7,22,37,52 * * * *",
    func="budgets.check",
    queue="default",
    id_prefix="budgets",
    args=_at,
    enabled=lambda config: config["BILLING"].enabled,
)

"""The "dunning" job, every hour: reminders, suspensions, removals and restorations of
overdue invoices (dunning.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from ...extensions import db
from ...tasks.registry import schedule, task
from . import dunning


@task("standing.dunning")
def run_dunning(at_iso: str | None = None) -> dict[str, int]:
    """At the schedule's slot time (the daemon's ``--now`` moves it), so a replay decides
    as the run it replays."""
    now = datetime.fromisoformat(at_iso).astimezone(UTC) if at_iso else None
    result = dunning.run(now)
    db.session.commit()
    return result.figures()


def _at(due: datetime) -> tuple[str]:
    return (due.astimezone(UTC).isoformat(),)


schedule(
    "dunning",
    cron="20 * * * *",
    func="standing.dunning",
    queue="default",
    id_prefix="dunning",
    args=_at,
    enabled=lambda config: config["BILLING"].enabled,
)

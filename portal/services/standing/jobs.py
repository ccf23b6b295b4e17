"""The standing jobs, every hour: "dunning" (reminders, suspensions, removals and
restorations of overdue invoices, dunning.py) and "prepaid-standing" (prepaid accounts whose
funds ran out, prepaid.py); and "standing.restore", asked for by every payment."""

from __future__ import annotations

from datetime import UTC, datetime

from ...extensions import db
from ...tasks.registry import schedule, task
from . import dunning, prepaid, restore


@task("standing.dunning")
def run_dunning(at_iso: str | None = None) -> dict[str, int]:
    """At the schedule's slot time (the daemon's ``--now`` moves it), so a replay decides
    as the run it replays."""
    now = datetime.fromisoformat(at_iso).astimezone(UTC) if at_iso else None
    result = dunning.run(now)
    db.session.commit()
    return result.figures()


@task("standing.prepaid")
def run_prepaid(at_iso: str | None = None) -> dict[str, int]:
    now = datetime.fromisoformat(at_iso).astimezone(UTC) if at_iso else None
    result = prepaid.run(now)
    db.session.commit()
    return result.figures()


@task("standing.restore")
def restore_user(user_id: int) -> dict[str, int]:
    """Money landed for the user: run again what it covers (restore.restore_now)."""
    restored = restore.restore_now(user_id)
    db.session.commit()
    return {"restored": len(restored)}


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
# After the hour's metering (which charged it) has run.
schedule(
    "prepaid-standing",
    cron="10 * * * *",
    func="standing.prepaid",
    queue="default",
    id_prefix="prepaid",
    args=_at,
    enabled=lambda config: config["BILLING"].enabled,
)

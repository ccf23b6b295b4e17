"""Hourly metering: deployment intervals x snapshotted rates -> daily usage rollups.

Users are split into chunks by id range (``METER_CHUNK_USERS`` users each); each chunk has a
metered-through mark. Metering a chunk up to an hour claims ``[mark, upto)`` under the mark's
row lock with a conditional UPDATE (a second or concurrent run finds nothing to claim) and
adds that window's usage to the rollups with one set-based INSERT ... SELECT per UTC day in
the window. Changes that reach back before a chunk's mark (a deletion reported late, a
deployment reported with a past start) have those days metered again by a job after they
commit (``backfill_later``, ``rebuild_deployment``), so once it ran the rollups equal a
recomputation from the intervals, which `flask billing usage-audit` proves with an
independent Python computation.

What a chunk's window costs is charged in the same transaction by the hooks registered with
``after_metering`` (prepaid accounts: invoicing.prepaid), so metered hours and their
charges commit together or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from flask import current_app
from sqlalchemy import func, select, text, update

from ...db import dialect_insert, rowcount
from ...extensions import db
from ...models import (
    ArchivedUsage,
    ArchivedYear,
    Deployment,
    DeploymentInterval,
    Invoice,
    InvoiceKind,
    MeterMark,
    UsageAdjustment,
    UsageDaily,
    utcnow,
)
from ...models.usage import USAGE_COLUMNS
from ...tasks.queues import enqueue_after_commit
from . import totals

log = logging.getLogger(__name__)

HOUR = 3600


def chunk_size() -> int:
    # Fixed for the life of an installation: the marks are per chunk.
    return int(current_app.config.get("METER_CHUNK_USERS", 1000))


def chunk_of(user_id: int) -> int:
    return user_id // chunk_size()


def floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def epoch(at: datetime) -> int:
    return int(at.timestamp())


def from_epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- the one SQL statement that turns intervals into rollups -------------------------------

_SECONDS = (
    "(CASE WHEN i.end_epoch IS NULL OR i.end_epoch > :until THEN :until "
    "ELSE i.end_epoch END) - (CASE WHEN i.start_epoch < :since THEN :since "
    "ELSE i.start_epoch END)"
)

# The intervals of ``{where}`` that ran in [:since, :until), with their seconds in it.
_INTERVALS_SQL = f"""
    SELECT i.deployment_id, i.user_id, i.cpu_milli, i.memory_mgb, i.storage_mgb, i.instances,
           i.public_ips, i.cpu_rate_micros, i.memory_rate_micros, i.storage_rate_micros,
           i.instance_rate_micros, i.ip_rate_micros, {_SECONDS} AS secs
    FROM deployment_intervals i
    WHERE {{where}} AND i.start_epoch < :until AND (i.end_epoch IS NULL OR i.end_epoch > :since)
"""

_ROLLUP_SQL = f"""
INSERT INTO {{table}} (deployment_id, day, user_id, {", ".join(USAGE_COLUMNS)})
SELECT s.deployment_id, :day, s.user_id,
       :sign * SUM(s.secs * s.cpu_milli), :sign * SUM(s.secs * s.cpu_milli * s.cpu_rate_micros),
       :sign * SUM(s.secs * s.memory_mgb),
       :sign * SUM(s.secs * s.memory_mgb * s.memory_rate_micros),
       :sign * SUM(s.secs * s.storage_mgb),
       :sign * SUM(s.secs * s.storage_mgb * s.storage_rate_micros),
       :sign * SUM(s.secs * s.instances),
       :sign * SUM(s.secs * s.instances * s.instance_rate_micros),
       :sign * SUM(s.secs * s.public_ips), :sign * SUM(s.secs * s.public_ips * s.ip_rate_micros)
FROM ({{intervals}}) s
GROUP BY s.deployment_id, s.user_id
ON CONFLICT {{conflict}} DO UPDATE SET
    {", ".join(f"{c} = {{table}}.{c} + excluded.{c}" for c in USAGE_COLUMNS)}
"""
ROLLUPS = ("usage_daily", "(deployment_id, day)")
# Late changes to invoiced periods: the pending (not yet invoiced) adjustment rows.
ADJUSTMENTS = ("usage_adjustments", "(deployment_id, day) WHERE invoice_id IS NULL")

# Which intervals, and which users for the totals' join (see totals.FROM_INTERVALS).
_WHERE_CHUNK = (
    "i.user_id >= :user_lo AND i.user_id < :user_hi",
    "u.id >= :user_lo AND u.id < :user_hi",
)
_WHERE_DEPLOYMENT = ("i.deployment_id = :deployment_id", "u.id = :user_id")

# The deployments that ran in a window (for the log), by the same index as the rollup.
_DEPLOYMENTS_SQL = (
    "SELECT COUNT(DISTINCT i.deployment_id) FROM deployment_intervals i WHERE {where} "
    "AND i.start_epoch < :until AND (i.end_epoch IS NULL OR i.end_epoch > :since)"
)


def _days(since: int, until: int) -> Iterator[tuple[date, int, int]]:
    """Split [since, until) at UTC midnights: (day, segment start, segment end)."""
    start = since
    while start < until:
        day = from_epoch(start).date()
        next_midnight = epoch(
            datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        )
        end = min(until, next_midnight)
        yield day, start, end
        start = end


def _roll_up(
    where: tuple[str, str],
    params: dict[str, int],
    since: int,
    until: int,
    sign: int,
    target: tuple[str, str] = ROLLUPS,
) -> int:
    """Add (sign=1) or take away (sign=-1) the usage of [since, until) to the rollups (and
    their totals), or to the pending adjustments (``target=ADJUSTMENTS``). ``params`` hold
    ``chunk`` and what ``where`` names."""
    table, conflict = target
    intervals = _INTERVALS_SQL.format(where=where[0])
    rollup = text(_ROLLUP_SQL.format(intervals=intervals, table=table, conflict=conflict))
    summed = None
    if target == ROLLUPS:
        summed = text(totals.FROM_INTERVALS.format(intervals=intervals, users=where[1]))
    rows = 0
    for day, seg_since, seg_until in _days(since, until):
        values = {**params, "day": day, "since": seg_since, "until": seg_until, "sign": sign}
        rows += max(rowcount(db.session.execute(rollup, values)), 0)
        if summed is not None:
            db.session.execute(summed, values)
    return rows


# -- chunks and marks ------------------------------------------------------------------------


def ensure_mark(user_id: int, start: datetime) -> None:
    """Create the user's chunk mark (metered from ``start``'s hour) if it does not exist."""
    db.session.execute(
        dialect_insert(MeterMark.__table__)
        .values(chunk=chunk_of(user_id), metered_through=floor_hour(start))
        .on_conflict_do_nothing()
    )


def lock_mark(chunk: int) -> MeterMark | None:
    return db.session.scalar(
        select(MeterMark)
        .where(MeterMark.chunk == chunk)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


WindowHook = Callable[[int, datetime, datetime], None]
_AFTER_METERING: list[WindowHook] = []


def after_metering(hook: WindowHook) -> WindowHook:
    """Register ``hook(chunk, since, upto)``, called in the transaction that metered a chunk's
    window, after its rollups are written (an upper layer's reaction to usage: charging)."""
    if hook not in _AFTER_METERING:
        _AFTER_METERING.append(hook)
    return hook


@dataclass
class MeterResult:
    chunks: int = 0
    hours: int = 0  # chunk-hours metered
    rows: int = 0  # deployment-day rollup rows written
    deployments: int = 0  # that ran in the windows metered
    windows: list[tuple[int, datetime, datetime]] = field(default_factory=list)

    def add(self, other: MeterResult) -> None:
        self.chunks += other.chunks
        self.hours += other.hours
        self.rows += other.rows
        self.deployments += other.deployments
        self.windows += other.windows

    def figures(self) -> dict[str, int]:
        return {"chunks": self.chunks, "hours": self.hours, "rows": self.rows}


def meter_chunk(chunk: int, upto: datetime) -> MeterResult:
    """Meter one chunk's deployments up to ``upto`` (an hour boundary). Flushes only."""
    upto = floor_hour(upto)
    result = MeterResult()
    mark = lock_mark(chunk)
    if mark is None or mark.metered_through >= upto:
        return result
    since = mark.metered_through
    claimed = rowcount(
        db.session.execute(
            update(MeterMark)
            .where(MeterMark.chunk == chunk, MeterMark.metered_through == since)
            .values(metered_through=upto, updated_at=utcnow())
        )
    )
    if claimed != 1:  # another run moved it first (cannot happen under the lock; cheap guard)
        return result
    postgresql = db.engine.dialect.name == "postgresql"
    if postgresql:
        # Room for the aggregation in memory (a chunk is ~10 deployments per user), and the
        # intervals sorted and summed by deployment rather than hashed: a sort of the chunk's
        # few thousand rows costs less than a hash table of 12 numeric sums per deployment,
        # and the rows then reach the primary key in its order (a third less time at 10,000
        # deployments a chunk).
        db.session.execute(
            text(
                "SELECT set_config('work_mem', '64MB', true), "
                "set_config('enable_hashagg', 'off', true)"
            )
        )
    size = chunk_size()
    params = {"chunk": chunk, "user_lo": chunk * size, "user_hi": (chunk + 1) * size}
    result.rows = _roll_up(_WHERE_CHUNK, params, epoch(since), epoch(upto), +1)
    if postgresql:  # the rest of the transaction (an invoice run's chunk) plans as usual
        db.session.execute(text("RESET enable_hashagg"))
    result.chunks, result.hours = 1, int((upto - since).total_seconds() // HOUR)
    result.windows.append((chunk, since, upto))
    db.session.flush()
    for hook in _AFTER_METERING:
        hook(chunk, since, upto)
    if log.isEnabledFor(logging.INFO):
        result.deployments = db.session.execute(
            text(_DEPLOYMENTS_SQL.format(where=_WHERE_CHUNK[0])),
            {**params, "since": epoch(since), "until": epoch(upto)},
        ).scalar_one()
        log.info(
            "metered chunk %d (users %d to %d), window %s to %s: %d deployments, "
            "%d rollup rows written",
            chunk,
            params["user_lo"],
            params["user_hi"] - 1,
            since.isoformat(),
            upto.isoformat(),
            result.deployments,
            result.rows,
        )
    return result


def due_chunks(upto: datetime) -> list[int]:
    """Chunks whose mark is behind ``upto``."""
    return list(
        db.session.scalars(
            select(MeterMark.chunk)
            .where(MeterMark.metered_through < floor_hour(upto))
            .order_by(MeterMark.chunk)
        )
    )


def last_complete_hour(now: datetime | None = None) -> datetime:
    """The end of the last complete hour: metering runs up to here."""
    return floor_hour(now or utcnow())


def parse_hour(value: str) -> datetime:
    """'2026-11-21T14' (or any ISO time) -> the hour boundary at or before it, UTC."""
    try:
        parsed = datetime.fromisoformat(
            value.replace("Z", "+00:00") if len(value) > 13 else value + ":00"
        )
    except ValueError:
        raise ValueError(f"not an ISO hour: {value!r} (e.g. 2026-11-21T14)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return floor_hour(parsed)


def backfill_later(deployment: Deployment, since: datetime) -> None:
    """After a change to a deployment's intervals that takes effect at ``since``: when that
    is before the chunk's mark, the already-metered days from ``since`` on are metered
    again by a job (``rebuild_deployment``) once the change commits. The mark's row lock,
    held to the commit, orders the change against a concurrent metering run: a run either
    sees the change, or moved the mark first and the job covers its hours."""
    mark = lock_mark(chunk_of(deployment.user_id))
    if mark is None or since >= mark.metered_through:
        return
    enqueue_after_commit(
        "metering",
        "metering.backfill_deployment",
        deployment.id,
        since.astimezone(UTC).isoformat(),
        job_id=f"backfill:{deployment.id}:{epoch(since)}",
    )


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


_ROLLUPS_TO_ADJUSTMENTS = f"""
INSERT INTO usage_adjustments (deployment_id, day, user_id, {", ".join(USAGE_COLUMNS)})
SELECT deployment_id, day, user_id, {", ".join(f"-{c}" for c in USAGE_COLUMNS)}
FROM usage_daily WHERE deployment_id = :deployment_id AND day >= :first AND day < :last
ON CONFLICT (deployment_id, day) WHERE invoice_id IS NULL DO UPDATE SET
    {", ".join(f"{c} = usage_adjustments.{c} + excluded.{c}" for c in USAGE_COLUMNS)}
"""


def rebuild_deployment(deployment_id: int, since: datetime) -> MeterResult:
    """Meter one deployment's days again, from ``since``'s day up to its chunk's mark, from
    its intervals as they are now (the backfill job). Idempotent: the rollup rows of those
    days are replaced by a recomputation. Where an invoice already billed a day, what the
    intervals say now minus what the rollups held is added to the pending adjustments, which
    the user's next invoice bills (or credits)."""
    result = MeterResult()
    deployment = db.session.get(Deployment, deployment_id)
    if deployment is None:
        return result
    mark = lock_mark(chunk_of(deployment.user_id))
    if mark is None:
        return result
    first_day = since.astimezone(UTC).date()
    archived = db.session.scalar(select(func.max(ArchivedYear.year)))
    if archived is not None and first_day.year <= archived:
        # An archived year is closed: its usage is in the archive and its summary.
        first_day = date(archived + 1, 1, 1)
    start, end = epoch(_midnight(first_day)), epoch(mark.metered_through)
    if start >= end:
        return result
    chunk = chunk_of(deployment.user_id)
    params = {"deployment_id": deployment.id, "user_id": deployment.user_id, "chunk": chunk}
    db.session.flush()
    # Invoiced periods begin and end at midnight, so whole rollup days line up with them.
    for period_start, period_end in invoiced_periods(
        deployment.user_id, _midnight(first_day), mark.metered_through
    ):
        lo, hi = max(start, epoch(period_start)), min(end, epoch(period_end))
        if lo >= hi:
            continue
        last = from_epoch(hi - 1).date() + timedelta(days=1)
        db.session.execute(
            text(_ROLLUPS_TO_ADJUSTMENTS), {**params, "first": from_epoch(lo).date(), "last": last}
        )
        _roll_up(_WHERE_DEPLOYMENT, params, lo, hi, +1, ADJUSTMENTS)
    totals.take_away(deployment.id, deployment.user_id, chunk, first_day)
    db.session.execute(
        UsageDaily.__table__.delete().where(
            UsageDaily.deployment_id == deployment.id, UsageDaily.day >= first_day
        )
    )
    result.rows = _roll_up(_WHERE_DEPLOYMENT, params, start, end, +1)
    result.hours = (end - start) // HOUR
    result.deployments = 1
    log.info(
        "metered deployment %s (user %s) again, window %s to %s: %d rollup rows written",
        deployment.id,
        deployment.user_id,
        from_epoch(start).isoformat(),
        from_epoch(end).isoformat(),
        result.rows,
    )
    # Keep no all-zero rows behind (a deployment that turned out not to have run).
    zero = [getattr(UsageDaily, c) == 0 for c in USAGE_COLUMNS]
    db.session.execute(
        UsageDaily.__table__.delete().where(UsageDaily.deployment_id == deployment.id, *zero)
    )
    db.session.execute(
        UsageAdjustment.__table__.delete().where(
            UsageAdjustment.deployment_id == deployment.id,
            UsageAdjustment.invoice_id.is_(None),
            *[getattr(UsageAdjustment, c) == 0 for c in USAGE_COLUMNS],
        )
    )
    db.session.flush()
    return result


def invoiced_periods(
    user_id: int, start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """The user's invoiced (non-void) periods that overlap [start, end)."""
    return [
        (period_start, period_end)
        for period_start, period_end in db.session.execute(
            select(Invoice.period_start, Invoice.period_end)
            .distinct()
            .where(
                Invoice.user_id == user_id,
                Invoice.status != "void",
                Invoice.kind == USAGE_INVOICE,
                Invoice.period_end > start,
                Invoice.period_start < end,
            )
            .order_by(Invoice.period_start)
        ).all()
    ]


# Usage is billed by the period invoices only (a plan change's invoice bills no usage).
USAGE_INVOICE = str(InvoiceKind.USAGE)


def invoiced_through(user_id: int) -> datetime | None:
    """The end of the user's last invoiced period: usage before it is already billed."""
    return db.session.scalar(
        select(func.max(Invoice.period_end)).where(
            Invoice.user_id == user_id, Invoice.status != "void", Invoice.kind == USAGE_INVOICE
        )
    )


def metered_through(user_id: int) -> datetime | None:
    return db.session.scalar(
        select(MeterMark.metered_through).where(MeterMark.chunk == chunk_of(user_id))
    )


# -- the audit: an independent recomputation in Python --------------------------------------


def _expected_rollups(
    intervals: list[DeploymentInterval], marks: dict[int, int]
) -> dict[tuple[int, date], list[int]]:
    expected: dict[tuple[int, date], list[int]] = {}
    for i in intervals:
        mark = marks.get(chunk_of(i.user_id))
        if mark is None:
            continue
        end = mark if i.end_epoch is None else min(i.end_epoch, mark)
        for day, seg_start, seg_end in _days(i.start_epoch, end):
            secs = seg_end - seg_start
            row = expected.setdefault((i.deployment_id, day), [0] * len(USAGE_COLUMNS))
            for n, (qty, rate) in enumerate(
                [
                    (i.cpu_milli, i.cpu_rate_micros),
                    (i.memory_mgb, i.memory_rate_micros),
                    (i.storage_mgb, i.storage_rate_micros),
                    (i.instances, i.instance_rate_micros),
                    (i.public_ips, i.ip_rate_micros),
                ]
            ):
                row[2 * n] += secs * qty
                row[2 * n + 1] += secs * qty * rate
    return {k: v for k, v in expected.items() if any(v)}


def audit_usage() -> list[str]:
    """Differences between the rollups and a recomputation from the intervals up to each
    chunk's mark. Empty when they agree."""
    marks = {
        c: epoch(t)
        for c, t in db.session.execute(select(MeterMark.chunk, MeterMark.metered_through)).all()
    }
    problems: list[str] = []
    last_id = 0
    expected: dict[tuple[int, date], list[int]] = {}
    while True:  # in batches, so a large history does not sit in memory at once
        batch = list(
            db.session.scalars(
                select(DeploymentInterval)
                .where(DeploymentInterval.id > last_id)
                .order_by(DeploymentInterval.id)
                .limit(5000)
            )
        )
        if not batch:
            break
        last_id = batch[-1].id
        for key, values in _expected_rollups(batch, marks).items():
            row = expected.setdefault(key, [0] * len(USAGE_COLUMNS))
            for n, v in enumerate(values):
                row[n] += v
        db.session.expunge_all()
    stored = {
        (r.deployment_id, r.day): [getattr(r, c) for c in USAGE_COLUMNS]
        for r in db.session.execute(select(UsageDaily)).scalars()
    }
    problems += _audit_archived(expected, stored)
    problems += totals.audit()
    for key in sorted(set(expected) | set(stored)):
        want = expected.get(key, [0] * len(USAGE_COLUMNS))
        have = stored.get(key, [0] * len(USAGE_COLUMNS))
        if want != have:
            diffs = ", ".join(
                f"{c} {h} != {w}"
                for c, h, w in zip(USAGE_COLUMNS, have, want, strict=False)
                if h != w
            )
            problems.append(f"deployment {key[0]} on {key[1]}: rollup {diffs} (recomputed)")
    return problems


def _audit_archived(
    expected: dict[tuple[int, date], list[int]], stored: dict[tuple[int, date], list[int]]
) -> list[str]:
    """The archived years (`flask billing archive`): each deployment's recomputed usage over
    such a year against its archived totals. Takes those days out of ``expected`` and
    ``stored`` (rows left in an archived year count against the totals too)."""
    archived = {
        (r.year, r.deployment_id): [getattr(r, c) for c in USAGE_COLUMNS]
        for r in db.session.scalars(select(ArchivedUsage))
    }
    years = set(db.session.scalars(select(ArchivedYear.year)))
    if not years:
        return []
    recomputed: dict[tuple[int, int], list[int]] = {}
    for source, into in ((expected, recomputed), (stored, archived)):
        for day_key in [k for k in source if k[1].year in years]:
            row = into.setdefault((day_key[1].year, day_key[0]), [0] * len(USAGE_COLUMNS))
            for n, v in enumerate(source.pop(day_key)):
                row[n] += v
    problems = []
    for key in sorted(set(recomputed) | set(archived)):
        want = recomputed.get(key, [0] * len(USAGE_COLUMNS))
        have = archived.get(key, [0] * len(USAGE_COLUMNS))
        if want != have:
            diffs = ", ".join(
                f"{c} {h} != {w}"
                for c, h, w in zip(USAGE_COLUMNS, have, want, strict=False)
                if h != w
            )
            problems.append(
                f"deployment {key[1]} in archived {key[0]}: totals {diffs} (recomputed)"
            )
    return problems


def rollup_count() -> int:
    return db.session.scalar(select(func.count()).select_from(UsageDaily)) or 0

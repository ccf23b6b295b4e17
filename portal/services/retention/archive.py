"""The archive of a closed year (`flask billing archive --year 2025 --to DIR`).

It writes the year's usage rollups and ledger entries to CSV files in
``DIR/billing-archive-YEAR/`` with per-deployment and per-account totals, a manifest and a
SHA256SUMS file, records the totals in archived_usage and archived_ledger_totals (and the
year in archived_years), then removes the rows: on PostgreSQL by detaching and dropping the
year's twelve monthly partitions, on SQLite by DELETE. The files are written and flushed to
disk before the database transaction commits, so a failure leaves the rows in place.

Reconcile adds each account's archived movements to its remaining entries and usage-audit
compares each deployment's recomputed usage of an archived year with its archived totals, so
both still prove the books. The ledger transactions stay (their idempotency keys keep
refusing a second posting); only their entries are archived.

A year is refused unless it is closed: it is over, older years are archived already, every
chunk is metered past its end, no invoice overlapping it is a draft or unpaid, every user's
usage in it is invoiced, and its ledger transactions balance within it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exists, func, select, text, update

from ...errors import Conflict
from ...extensions import db
from ...models import (
    ArchivedLedgerTotal,
    ArchivedUsage,
    ArchivedYear,
    Invoice,
    InvoiceKind,
    LedgerEntry,
    LedgerTransaction,
    MeterMark,
    UsageDaily,
    utcnow,
)
from ...models.usage import USAGE_COLUMNS
from ..metering import totals
from . import partitions

log = logging.getLogger(__name__)

OPEN_STATUSES = ("draft", "open", "overdue")


class ArchiveRefused(Conflict):
    code = "archive_refused"


@dataclass
class ArchiveResult:
    year: int
    directory: Path
    usage_rows: int = 0
    ledger_entries: int = 0
    deployments: int = 0
    accounts: int = 0
    files: dict[str, str] = field(default_factory=dict)  # name -> SHA-256


def _start(year: int) -> datetime:
    return datetime(year, 1, 1, tzinfo=UTC)


def _literal(at: datetime | date) -> str:
    """A bound of the year as an SQL literal (our own values, never user text)."""
    if isinstance(at, datetime):
        at = at.astimezone(UTC)
        suffix = "+00" if db.engine.dialect.name == "postgresql" else ""
        return f"'{at:%Y-%m-%d %H:%M:%S}{suffix}'"
    return f"'{at.isoformat()}'"


def refusal(year: int, now: datetime | None = None) -> str | None:
    """Why ``year`` cannot be archived (None: it is closed)."""
    now = now or utcnow()
    start, end = _start(year), _start(year + 1)
    if year >= now.astimezone(UTC).year:
        return f"{year} is not over yet: only a closed year can be archived"
    if db.session.get(ArchivedYear, year) is not None:
        return f"{year} is already archived"
    older = db.session.scalar(
        select(
            exists().where(UsageDaily.day < start.date())
            | exists().where(LedgerEntry.created_at < start)
        )
    )
    if older:
        return f"there are usage rollups or ledger entries before {year}: archive the oldest year first"
    behind = db.session.scalar(
        select(func.count()).select_from(MeterMark).where(MeterMark.metered_through < end)
    )
    if behind:
        return f"usage of {year} is not metered to its end yet ({behind} chunk(s) behind)"
    unpaid = db.session.execute(
        select(Invoice.id, Invoice.number, Invoice.status)
        .where(
            Invoice.status.in_(OPEN_STATUSES),
            Invoice.period_start < end,
            Invoice.period_end > start,
        )
        .order_by(Invoice.id)
    ).all()
    if unpaid:
        first = unpaid[0]
        return (
            f"{year} has {len(unpaid)} draft or unpaid invoice(s) "
            f"(first: {first.number or f'draft {first.id}'}, {first.status})"
        )
    not_invoiced = _users_not_invoiced(start, end)
    if not_invoiced:
        return (
            f"usage of {len(not_invoiced)} user(s) in {year} is not invoiced yet "
            f"(first: user {not_invoiced[0]})"
        )
    unbalanced = _unbalanced_transactions(start, end)
    if unbalanced:
        return (
            f"the ledger of {year} does not balance within the year "
            f"(transaction {unbalanced[0]}): run `flask billing reconcile`"
        )
    return None


def _users_not_invoiced(start: datetime, end: datetime) -> list[int]:
    """Users whose usage in [start, end) goes past the end of their last invoiced period."""
    last_day = (
        select(UsageDaily.user_id, func.max(UsageDaily.day).label("last"))
        .where(UsageDaily.day >= start.date(), UsageDaily.day < end.date())
        .group_by(UsageDaily.user_id)
        .subquery()
    )
    through = (
        select(Invoice.user_id, func.max(Invoice.period_end).label("through"))
        .where(Invoice.status != "void", Invoice.kind == str(InvoiceKind.USAGE))
        .group_by(Invoice.user_id)
        .subquery()
    )
    rows = db.session.execute(
        select(last_day.c.user_id, last_day.c.last, through.c.through)
        .outerjoin(through, through.c.user_id == last_day.c.user_id)
        .order_by(last_day.c.user_id)
    ).all()
    return [
        user_id
        for user_id, last, invoiced in rows
        if invoiced is None or _aware(invoiced).date() <= last
    ]


def _aware(value: datetime) -> datetime:
    # Read through an aggregate, SQLite's value has no type to make it aware.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _unbalanced_transactions(start: datetime, end: datetime) -> list[int]:
    """Transactions of the year whose entries (dated in the year) do not sum to zero, or
    that have entries dated outside the year."""
    in_year = (LedgerEntry.created_at >= start) & (LedgerEntry.created_at < end)
    unbalanced = list(
        db.session.scalars(
            select(LedgerEntry.transaction_id)
            .where(in_year)
            .group_by(LedgerEntry.transaction_id)
            .having(func.sum(LedgerEntry.amount_minor) != 0)
            .limit(10)
        )
    )
    txn_in_year = (LedgerTransaction.created_at >= start) & (LedgerTransaction.created_at < end)
    straddling = list(
        db.session.scalars(
            select(LedgerEntry.transaction_id)
            .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
            .where(in_year, ~txn_in_year)
            .limit(10)
        )
    ) + list(
        db.session.scalars(
            select(LedgerEntry.transaction_id)
            .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
            .where(txn_in_year, ~in_year)
            .limit(10)
        )
    )
    return sorted(set(unbalanced + straddling))


# -- writing the files ------------------------------------------------------------------------

_USAGE_ROWS = (
    "SELECT deployment_id, day, user_id, {columns} FROM usage_daily "
    "WHERE day >= {lo} AND day < {hi} ORDER BY day, deployment_id"
)
_ENTRY_ROWS = (
    "SELECT e.id, e.transaction_id, t.idempotency_key, t.kind AS transaction_kind, e.account_id, "
    "a.user_id, a.kind AS account_kind, e.amount_minor, e.currency, e.created_at "
    "FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id "
    "JOIN ledger_accounts a ON a.id = e.account_id "
    "WHERE e.created_at >= {lo} AND e.created_at < {hi} ORDER BY e.id"
)
_USAGE_TOTALS = (
    "SELECT deployment_id, user_id, days, {columns} FROM archived_usage WHERE year = {year} "
    "ORDER BY deployment_id"
)
_LEDGER_TOTALS = (
    "SELECT s.account_id, a.user_id, a.kind AS account_kind, s.currency, s.amount_minor, "
    "s.entries FROM archived_ledger_totals s JOIN ledger_accounts a ON a.id = s.account_id "
    "WHERE s.year = {year} ORDER BY s.account_id"
)


class _HashingFile:
    """A file written with its SHA-256 and size kept as it goes."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb")
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha256.update(data)
        self.bytes += len(data)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def _write_csv(path: Path, query: str) -> tuple[int, str, int]:
    """The rows of ``query`` as CSV with a header: (rows, SHA-256, bytes). COPY on
    PostgreSQL (in the session's transaction, times in UTC); the csv module elsewhere."""
    out = _HashingFile(path)
    try:
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text("SET LOCAL TimeZone = 'UTC'"))
            connection = db.session.connection().connection.driver_connection
            assert connection is not None
            with connection.cursor() as cursor:
                with cursor.copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
                    for data in copy:
                        out.write(bytes(data))
                rows = cursor.rowcount
        else:
            result = db.session.execute(text(query))
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(list(result.keys()))
            rows = 0
            for row in result:
                writer.writerow(["" if v is None else v for v in row])
                rows += 1
                if rows % 10_000 == 0:
                    out.write(buffer.getvalue().encode())
                    buffer.seek(0)
                    buffer.truncate()
            out.write(buffer.getvalue().encode())
    finally:
        out.close()
    return rows, out.sha256.hexdigest(), out.bytes


def _record_totals(year: int, lo_day: str, hi_day: str, lo_at: str, hi_at: str) -> None:
    sums = ", ".join(f"SUM({c})" for c in USAGE_COLUMNS)
    db.session.execute(
        text(
            f"INSERT INTO archived_usage (year, deployment_id, user_id, days, "
            f"{', '.join(USAGE_COLUMNS)}) "
            f"SELECT {year}, deployment_id, MIN(user_id), COUNT(*), {sums} FROM usage_daily "
            f"WHERE day >= {lo_day} AND day < {hi_day} GROUP BY deployment_id"
        )
    )
    db.session.execute(
        text(
            f"INSERT INTO archived_ledger_totals (year, account_id, currency, amount_minor, "
            f"entries) SELECT {year}, account_id, MIN(currency), SUM(amount_minor), COUNT(*) "
            f"FROM ledger_entries WHERE created_at >= {lo_at} AND created_at < {hi_at} "
            f"GROUP BY account_id"
        )
    )


def archive_year(year: int, to: Path, *, now: datetime | None = None) -> ArchiveResult:
    """Archive the closed ``year`` into ``to``/billing-archive-YEAR. Flushes only: the caller
    commits (the files are complete and on disk by then). Raises ArchiveRefused."""
    if db.engine.dialect.name == "postgresql":
        # One archive at a time (SQLite's transactions already hold the write lock).
        db.session.execute(text("LOCK TABLE archived_years IN EXCLUSIVE MODE"))
    reason = refusal(year, now)
    if reason:
        raise ArchiveRefused(reason)
    start, end = _start(year), _start(year + 1)
    months = [date(year, m, 1) for m in range(1, 13)]
    if partitions.enabled():
        # Every month of the year in a partition of its own (moving any row out of DEFAULT),
        # so that dropping the twelve partitions removes exactly the year.
        for table in partitions.KEYS:
            for month in months:
                partitions.create_partition(table, month)

    result = ArchiveResult(year=year, directory=Path(to) / f"billing-archive-{year}")
    result.directory.mkdir(parents=True, exist_ok=True)
    lo_day, hi_day = _literal(start.date()), _literal(end.date())
    lo_at, hi_at = _literal(start), _literal(end)
    manifest: dict[str, Any] = {"year": year, "files": {}}

    def write(name: str, query: str) -> int:
        rows, sha256, size = _write_csv(result.directory / name, query)
        manifest["files"][name] = {"rows": rows, "bytes": size, "sha256": sha256}
        result.files[name] = sha256
        return rows

    result.usage_rows = write(
        "usage_daily.csv",
        _USAGE_ROWS.format(columns=", ".join(USAGE_COLUMNS), lo=lo_day, hi=hi_day),
    )
    result.ledger_entries = write("ledger_entries.csv", _ENTRY_ROWS.format(lo=lo_at, hi=hi_at))

    archived_at = now or utcnow()
    db.session.add(
        ArchivedYear(
            year=year,
            archived_at=archived_at,
            usage_rows=result.usage_rows,
            ledger_entries=result.ledger_entries,
            manifest_sha256="",
        )
    )
    db.session.flush()
    _record_totals(year, lo_day, hi_day, lo_at, hi_at)
    result.deployments = write(
        "usage_totals.csv", _USAGE_TOTALS.format(columns=", ".join(USAGE_COLUMNS), year=year)
    )
    result.accounts = write("ledger_totals.csv", _LEDGER_TOTALS.format(year=year))

    manifest.update(
        archived_at=archived_at.isoformat(),
        from_=start.isoformat(),
        until=end.isoformat(),
        usage_rows=result.usage_rows,
        ledger_entries=result.ledger_entries,
        deployments=result.deployments,
        accounts=result.accounts,
        usage_totals={
            c: int(v or 0)
            for c, v in zip(
                USAGE_COLUMNS,
                db.session.execute(
                    select(*[func.sum(getattr(ArchivedUsage, c)) for c in USAGE_COLUMNS]).where(
                        ArchivedUsage.year == year
                    )
                ).one(),
                strict=True,
            )
        },
    )
    manifest["from"] = manifest.pop("from_")
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    out = _HashingFile(result.directory / "manifest.json")
    out.write(manifest_bytes)
    out.close()
    result.files["manifest.json"] = out.sha256.hexdigest()
    sums = _HashingFile(result.directory / "SHA256SUMS")
    sums.write("".join(f"{h}  {n}\n" for n, h in sorted(result.files.items())).encode())
    sums.close()
    db.session.execute(
        update(ArchivedYear)
        .where(ArchivedYear.year == year)
        .values(manifest_sha256=result.files["manifest.json"])
    )

    totals.delete_days(start.date(), end.date())
    if partitions.enabled():
        for table in partitions.KEYS:
            for month in months:
                partitions.drop_partition(table, month)
    else:
        db.session.execute(
            delete(UsageDaily).where(UsageDaily.day >= start.date(), UsageDaily.day < end.date())
        )
        db.session.execute(
            delete(LedgerEntry).where(LedgerEntry.created_at >= start, LedgerEntry.created_at < end)
        )
    db.session.flush()
    log.info(
        "archived %d: %d usage rollup rows, %d ledger entries into %s",
        year,
        result.usage_rows,
        result.ledger_entries,
        result.directory,
    )
    return result


def archived_through() -> datetime | None:
    """The end of the newest archived year: nothing before it is in the rollups or entries."""
    year = db.session.scalar(select(func.max(ArchivedYear.year)))
    return None if year is None else _start(year + 1)


def archived_ledger_totals(year: int) -> list[ArchivedLedgerTotal]:
    return list(
        db.session.scalars(
            select(ArchivedLedgerTotal)
            .where(ArchivedLedgerTotal.year == year)
            .order_by(ArchivedLedgerTotal.account_id)
        )
    )

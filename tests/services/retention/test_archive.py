"""The archive of a closed year: its rollups and ledger entries go to files, their totals
stay, and reconcile and usage-audit still prove the books; an open year is refused."""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from portal.extensions import db
from portal.models import (
    ArchivedLedgerTotal,
    ArchivedUsage,
    Invoice,
    LedgerEntry,
    LedgerTransaction,
    UsageDaily,
    User,
)
from portal.money import Money
from portal.services.invoicing import run as invoice_run
from portal.services.metering import deployments, rollups, runs
from portal.services.retention import archive, partitions
from portal.services.wallet import credits
from portal.services.wallet.reconcile import find_discrepancies

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
OCT_2025 = (datetime(2025, 10, 1, tzinfo=UTC), datetime(2025, 11, 1, tzinfo=UTC))
DAY_IN_2025 = datetime(2025, 10, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def user(ctx, make_user):
    return db.session.get(User, make_user().id)


def _move_ledger_to(at: datetime) -> None:
    """Date every ledger transaction so far (and so its entries) at ``at``."""
    for table in ("ledger_transactions", "ledger_entries"):
        db.session.execute(text(f"UPDATE {table} SET created_at = :at"), {"at": at})


def _year_2025(user: User, *, pay: bool = True) -> Invoice:
    """A deployment that ran 10 hours in October 2025, metered through the year and invoiced
    (paid from a credit granted that year when ``pay``); the ledger dated in 2025."""
    if pay:
        credits.grant_credit(
            user=user, amount=Money(5000, "USD"), reason="welcome", idempotency_key="grant-2025"
        )
    dep, _ = deployments.create_deployment(
        external_id="vm-2025",
        user=user,
        kind="vm",
        cpu_cores=2,
        memory_gb=4,
        storage_gb=0,
        started_at=datetime(2025, 10, 1, 10, tzinfo=UTC),
    )
    deployments.delete_deployment(dep, ended_at=datetime(2025, 10, 1, 20, tzinfo=UTC))
    db.session.commit()
    runs.meter_all(datetime(2026, 1, 1, tzinfo=UTC))
    invoice, _ = invoice_run.generate_for_user(user, *OCT_2025)
    db.session.commit()
    db.session.execute(text("UPDATE ledger_transactions SET created_at = :at"), {"at": DAY_IN_2025})
    db.session.execute(text("UPDATE ledger_entries SET created_at = :at"), {"at": DAY_IN_2025})
    db.session.commit()
    return invoice


def _rows(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_closed_year_is_archived_and_the_books_still_prove(user, tmp_path):
    user_id = user.id
    invoice = _year_2025(user)
    assert invoice.status == "paid"
    # and a movement of this year, which stays
    credits.grant_credit(
        user=user, amount=Money(700, "USD"), reason="this year", idempotency_key="grant-2026"
    )
    db.session.commit()
    entries_2025 = db.session.scalar(
        select(func.count()).where(LedgerEntry.created_at < datetime(2026, 1, 1, tzinfo=UTC))
    )
    rollups_2025 = db.session.scalar(select(func.count()).select_from(UsageDaily))
    assert entries_2025 >= 4 and rollups_2025 == 1
    transactions = db.session.scalar(select(func.count()).select_from(LedgerTransaction))

    result = archive.archive_year(2025, tmp_path, now=NOW)
    db.session.commit()

    assert (result.usage_rows, result.ledger_entries) == (1, entries_2025)
    folder = tmp_path / "billing-archive-2025"
    usage = _rows(folder / "usage_daily.csv")
    dep_id = db.session.scalar(text("SELECT id FROM deployments"))
    assert [(r["deployment_id"], r["day"]) for r in usage] == [(str(dep_id), "2025-10-01")]
    assert int(usage[0]["cpu_ms"]) == 10 * 3600 * 2000
    entries = _rows(folder / "ledger_entries.csv")
    assert len(entries) == entries_2025
    assert sum(int(e["amount_minor"]) for e in entries) == 0
    assert "credit-grant:grant-2025" in {e["idempotency_key"] for e in entries}
    totals = _rows(folder / "ledger_totals.csv")
    assert sum(int(t["entries"]) for t in totals) == entries_2025
    assert [int(r["days"]) for r in _rows(folder / "usage_totals.csv")] == [1]
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["ledger_entries"] == entries_2025 and manifest["usage_rows"] == 1

    # the rows are gone, the transactions (and their idempotency keys) and totals stay
    assert db.session.scalar(select(func.count()).select_from(UsageDaily)) == 0
    assert (
        db.session.scalar(
            select(func.count()).where(LedgerEntry.created_at < datetime(2026, 1, 1, tzinfo=UTC))
        )
        == 0
    )
    assert db.session.scalar(select(func.count()).select_from(LedgerTransaction)) == transactions
    assert db.session.scalar(select(func.count()).select_from(ArchivedUsage)) == 1
    assert db.session.scalar(select(func.sum(ArchivedLedgerTotal.amount_minor))) == 0
    if partitions.enabled():
        assert not [p for p in partitions.partitions("usage_daily") if "y2025" in p]
        assert not [p for p in partitions.partitions("ledger_entries") if "y2025" in p]

    assert find_discrepancies() == []
    assert rollups.audit_usage() == []
    # a replayed 2025 grant is still the same movement, not a second one
    _, created = credits.grant_credit(
        user=db.session.get(User, user_id),
        amount=Money(5000, "USD"),
        reason="welcome",
        idempotency_key="grant-2025",
    )
    assert not created
    db.session.commit()
    assert find_discrepancies() == []

    with pytest.raises(archive.ArchiveRefused, match="already archived"):
        archive.archive_year(2025, tmp_path, now=NOW)


def test_a_late_change_to_an_archived_year_is_not_metered_again(user, tmp_path):
    _year_2025(user)
    archive.archive_year(2025, tmp_path, now=NOW)
    db.session.commit()
    dep_id = db.session.scalar(text("SELECT id FROM deployments"))
    rollups.rebuild_deployment(dep_id, datetime(2025, 10, 1, tzinfo=UTC))
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(UsageDaily)) == 0
    assert rollups.audit_usage() == []


@pytest.mark.corrupts_ledger
def test_reconcile_and_audit_see_a_tampered_archive_total(user, tmp_path):
    _year_2025(user)
    archive.archive_year(2025, tmp_path, now=NOW)
    db.session.commit()
    db.session.execute(
        text("UPDATE archived_ledger_totals SET amount_minor = amount_minor + 1 WHERE entries > 0")
    )
    db.session.execute(text("UPDATE archived_usage SET cpu_ms = cpu_ms + 1"))
    db.session.commit()
    problems = find_discrepancies()
    assert any("archived year 2025 sums to" in p for p in problems)
    assert any("entries give" in p for p in problems)
    assert any("in archived 2025" in p for p in rollups.audit_usage())


def test_the_current_year_is_refused(ctx, tmp_path):
    with pytest.raises(archive.ArchiveRefused, match="2026 is not over yet"):
        archive.archive_year(2026, tmp_path, now=NOW)
    assert not list(tmp_path.iterdir())


def test_a_year_with_an_unpaid_invoice_is_refused(user, tmp_path):
    invoice = _year_2025(user, pay=False)
    assert invoice.status == "open"
    with pytest.raises(archive.ArchiveRefused, match="1 draft or unpaid invoice"):
        archive.archive_year(2025, tmp_path, now=NOW)
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(UsageDaily)) == 1


def test_a_year_not_metered_to_its_end_is_refused(user, tmp_path):
    dep, _ = deployments.create_deployment(
        external_id="vm-late",
        user=user,
        kind="vm",
        cpu_cores=1,
        memory_gb=1,
        storage_gb=0,
        started_at=datetime(2025, 12, 1, tzinfo=UTC),
    )
    db.session.commit()
    runs.meter_all(datetime(2025, 12, 2, tzinfo=UTC))
    with pytest.raises(archive.ArchiveRefused, match="not metered to its end"):
        archive.archive_year(2025, tmp_path, now=NOW)


def test_usage_not_invoiced_is_refused_and_the_oldest_year_goes_first(user, tmp_path):
    dep, _ = deployments.create_deployment(
        external_id="vm-2024",
        user=user,
        kind="vm",
        cpu_cores=1,
        memory_gb=1,
        storage_gb=0,
        started_at=datetime(2024, 12, 31, 20, tzinfo=UTC),
    )
    deployments.delete_deployment(dep, ended_at=datetime(2025, 1, 1, 2, tzinfo=UTC))
    db.session.commit()
    runs.meter_all(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(archive.ArchiveRefused, match="archive the oldest year first"):
        archive.archive_year(2025, tmp_path, now=NOW)
    with pytest.raises(archive.ArchiveRefused, match="usage of 1 user.* in 2024 is not invoiced"):
        archive.archive_year(2024, tmp_path, now=NOW + timedelta(days=1))


def test_the_command_archives_a_closed_year_and_refuses_an_open_one(
    app, runner, make_user, tmp_path
):
    user_id = make_user().id
    with app.app_context():
        user = db.session.get(User, user_id)
        _year_2025(user)
        db.session.remove()
    refused = runner.invoke(args=["billing", "archive", "--year", "2099", "--to", str(tmp_path)])
    assert refused.exit_code == 1
    assert "error: 2099 is not over yet: only a closed year can be archived" in refused.output
    done = runner.invoke(args=["billing", "archive", "--year", "2025", "--to", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "archived 2025 into" in done.output and "1 usage rollup row(s)" in done.output
    assert (tmp_path / "billing-archive-2025" / "SHA256SUMS").exists()
    assert runner.invoke(args=["billing", "reconcile"]).exit_code == 0
    audit = runner.invoke(args=["billing", "usage-audit"])
    assert audit.exit_code == 0, audit.output

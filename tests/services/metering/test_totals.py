"""The rollups' daily totals (usage_totals): kept equal to the rollups by every statement
that writes them, per currency, and checked by usage-audit."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from portal.extensions import db
from portal.models import RunningCost, UsageDaily, UsageTotal, User
from portal.services import accounts
from portal.services.admin import overview
from portal.services.metering import deployments, rollups, runs, totals
from tests.support.app import PASSWORD

T0 = datetime(2026, 10, 30, 20, 0, tzinfo=UTC)  # runs over midnight and the month's end


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


@pytest.fixture
def chunked(app, make_app):
    """The test app's database with chunks of two users."""
    chunked = make_app(METER_CHUNK_USERS=2)
    chunked.config["BILLING"] = app.config["BILLING"]
    return chunked


@pytest.fixture
def ctx(chunked):
    with chunked.app_context():
        yield chunked
        db.session.remove()


@pytest.fixture
def runner(chunked):
    return chunked.test_cli_runner()


@pytest.fixture
def users(ctx):
    """Four users over two or three chunks, dollars and euros in the same chunk."""
    ids = []
    for n in range(4):
        ctx.config["CURRENCY"] = ("USD", "EUR")[n % 2]
        ids.append(accounts.create_user(email=f"u{n}@example.com", password=PASSWORD).id)
    db.session.commit()
    return [db.session.get(User, i) for i in ids]


def deploy(user, external_id, start=T0, **spec):
    dep, _ = deployments.create_deployment(
        external_id=external_id,
        user=user,
        kind="vm",
        started_at=start,
        **(spec or {"cpu_cores": 2, "memory_gb": 4, "storage_gb": 10}),
    )
    db.session.commit()
    return dep


def summed_rollups() -> dict:
    """What the totals must hold: the rollups' costs by day and currency, summed here."""
    out: dict = defaultdict(lambda: [0] * len(totals.COSTS))
    for row, currency in db.session.execute(
        select(UsageDaily, User.currency).join(User, User.id == UsageDaily.user_id)
    ):
        for n, c in enumerate(totals.COSTS):
            out[(row.day, currency)][n] += getattr(row, c)
    return dict(out)


def stored_totals() -> dict:
    out: dict = defaultdict(lambda: [0] * len(totals.COSTS))
    for t in db.session.scalars(select(UsageTotal)):
        for n, c in enumerate(totals.COSTS):
            out[(t.day, t.currency)][n] += int(getattr(t, c))
    return {k: v for k, v in out.items() if any(v)}


def test_metering_keeps_a_total_per_day_chunk_and_currency(users):
    for n, user in enumerate(users):
        deploy(user, f"vm-{n}")
    runs.meter_all(at(30))  # Oct 30 20:00 to Nov 1 02:00: three days
    want = summed_rollups()
    assert len(want) == 3 * 2 and all(any(v) for v in want.values())
    assert stored_totals() == want
    # One row per day, chunk and currency, so two chunks' runs never update the same row.
    keys = {(rollups.chunk_of(u.id), u.currency) for u in users}
    assert len({chunk for chunk, _ in keys}) > 1
    rows = db.session.execute(select(UsageTotal.chunk, UsageTotal.currency)).all()
    assert len(rows) == 3 * len(keys) and set(rows) == keys
    assert rollups.audit_usage() == []


def test_hours_metered_one_run_at_a_time_add_up(users):
    deploy(users[0], "vm")
    for hours in (1, 2, 5, 29):
        runs.meter_all(at(hours))
    assert stored_totals() == summed_rollups()
    assert rollups.audit_usage() == []


def test_a_late_change_metered_again_moves_the_totals_with_the_rollups(users):
    dep = deploy(users[1], "vm")
    deploy(users[1], "other")
    runs.meter_all(at(30))
    before = stored_totals()
    # It really ended two hours in, and another was reported late: their days are metered
    # again (by the backfill job, which the tests' queue runs at the commit).
    deployments.delete_deployment(dep, ended_at=at(2))
    late = deploy(users[2], "late", start=at(1))
    after = stored_totals()
    assert after != before
    assert after == summed_rollups()
    # Metering a deployment again with nothing changed changes nothing.
    for deployment_id in (dep.id, late.id):
        rollups.rebuild_deployment(deployment_id, T0)
        db.session.commit()
    assert stored_totals() == after
    assert rollups.audit_usage() == []


def test_usage_audit_reports_a_total_that_disagrees(users, runner):
    deploy(users[0], "vm")
    runs.meter_all(at(5))
    assert runner.invoke(args=["billing", "usage-audit"]).exit_code == 0
    row = db.session.scalars(select(UsageTotal)).first()
    row.storage_cost += 1
    day = row.day
    db.session.commit()
    result = runner.invoke(args=["billing", "usage-audit"])
    assert result.exit_code == 1
    assert f"usage totals on {day} (USD): storage_cost" in result.output


def test_the_dashboard_revenue_reads_the_totals(users):
    """Revenue so far comes from the totals: a total changed by hand shows there, which it
    would not if the rollups were summed again."""
    deploy(users[0], "vm", cpu_cores=1, memory_gb=0, storage_gb=0)
    runs.meter_all(at(4))  # four core-hours at $0.05 in October's period
    [usd] = [f for f in overview.overview(at(5)).figures if f.currency == "USD"]
    assert usd.revenue_so_far.amount_minor == 20
    # One more core-hour at $1.00, as a numerator: 3,600,000 x 1,000,000 micro-units.
    db.session.execute(
        update(UsageTotal)
        .where(UsageTotal.currency == "USD")
        .values(cpu_cost=UsageTotal.cpu_cost + 3_600_000 * 1_000_000)
    )
    [usd] = [f for f in overview.overview(at(5)).figures if f.currency == "USD"]
    assert usd.revenue_so_far.amount_minor == 20 + 100
    db.session.rollback()


def running() -> dict:
    return {
        (r.chunk, r.currency): {c: int(getattr(r, c)) for c in totals.HOURLY}
        for r in db.session.scalars(select(RunningCost))
        if any(getattr(r, c) for c in totals.HOURLY)
    }


def test_running_costs_follow_each_interval_opened_and_closed(users):
    """2 cores ($0.05) and 4 GB ($0.01): cpu 2,000 x 50,000, memory 4,000 x 10,000 per
    hour; 10 GB of storage at $0.10 a month; each change moves the sums by its difference."""
    a, b = users[0], users[1]
    chunk_a, chunk_b = rollups.chunk_of(a.id), rollups.chunk_of(b.id)
    dep = deploy(a, "vm")
    assert running() == {
        (chunk_a, "USD"): {
            "cpu": 2000 * 50_000,
            "memory": 4000 * 10_000,
            "storage": 10_000 * 100_000,
            "instance": 0,
            "ip": 0,
        }
    }
    deploy(b, "eur-vm", cpu_cores=1, memory_gb=0, storage_gb=0)
    assert running()[(chunk_b, "EUR")]["cpu"] == 1000 * 50_000
    deployments.update_deployment(dep, cpu_cores=4, effective_at=at(1))
    assert running()[(chunk_a, "USD")]["cpu"] == 4000 * 50_000
    deployments.update_deployment(dep, state="suspended", effective_at=at(2))  # storage only
    assert running()[(chunk_a, "USD")] == {
        "cpu": 0,
        "memory": 0,
        "storage": 10_000 * 100_000,
        "instance": 0,
        "ip": 0,
    }
    deployments.update_deployment(dep, state="active", effective_at=at(2))  # same instant
    deployments.delete_deployment(dep, ended_at=at(3))
    db.session.commit()
    assert (chunk_a, "USD") not in running()
    assert rollups.audit_usage() == []


def test_usage_audit_reports_running_costs_that_disagree(users, runner):
    deploy(users[1], "vm")
    assert runner.invoke(args=["billing", "usage-audit"]).exit_code == 0
    db.session.execute(update(RunningCost).values(memory=RunningCost.memory + 1))
    db.session.commit()
    result = runner.invoke(args=["billing", "usage-audit"])
    assert result.exit_code == 1
    assert "running costs (EUR): memory" in result.output


def test_the_dashboard_projection_reads_the_running_costs(users):
    """What runs now comes from the running costs: one more core-hour at $1.00 per hour for
    the rest of the period shows in the projection."""
    deploy(users[0], "vm", cpu_cores=1, memory_gb=0, storage_gb=0)
    runs.meter_all(at(4))  # metered to Oct 31 00:00; the period ends Nov 1: 24 hours left
    [usd] = [f for f in overview.overview(at(4)).figures if f.currency == "USD"]
    assert (usd.revenue_so_far.amount_minor, usd.revenue_projected.amount_minor) == (20, 140)
    db.session.execute(update(RunningCost).values(cpu=RunningCost.cpu + 1000 * 1_000_000))
    [usd] = [f for f in overview.overview(at(4)).figures if f.currency == "USD"]
    assert usd.revenue_projected.amount_minor == 140 + 24 * 100
    db.session.rollback()


def test_a_recount_gives_what_the_statements_kept(users):
    for n, user in enumerate(users):
        deploy(user, f"vm-{n}", cpu_cores=n + 1, memory_gb=1, storage_gb=n)
    runs.meter_all(at(30))
    deployments.delete_deployment(deployments.get_for_owner(None, "vm-1"), ended_at=at(31))
    db.session.commit()
    kept = (running(), stored_totals())
    assert all(kept)
    totals.recount(rollups.chunk_size())
    assert (running(), stored_totals()) == kept
    db.session.rollback()

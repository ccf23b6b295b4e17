"""Metering: intervals x snapshotted rates -> rollups, exactly once per hour."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from portal.errors import InvalidTransition, ValidationFailed
from portal.extensions import db
from portal.models import UsageDaily, User
from portal.money import Money
from portal.services.metering import catalog, deployments, rollups, runs, usage

T0 = datetime(2026, 10, 1, 10, 0, tzinfo=UTC)  # a Thursday in a past month
OCT = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))


def at(hours: float = 0, minutes: int = 0, base: datetime = T0) -> datetime:
    return base + timedelta(hours=hours, minutes=minutes)


@pytest.fixture
def user(ctx, make_user):
    return db.session.get(User, make_user().id)


def deploy(user, external_id="vm-1", start=T0, **spec):
    spec = spec or {"cpu_cores": 2, "memory_gb": 4, "storage_gb": 0}
    dep, _ = deployments.create_deployment(
        external_id=external_id, user=user, kind="vm", started_at=start, **spec
    )
    db.session.commit()
    return dep


def meter(upto: datetime) -> rollups.MeterResult:
    return runs.meter_all(upto)


def report(user, period=OCT) -> usage.UsageReport:
    return usage.usage_report(user, *period, now=datetime(2026, 11, 21, tzinfo=UTC))


def item(rep, resource):
    return next(i for i in rep.items if i.resource_type == resource)


def test_the_seed_pricing_example_to_the_cent(user):
    """2 cores for 10 hours at $0.05 = $1.00; 4 GB for 10 hours at $0.01 = $0.40."""
    dep = deploy(user)
    deployments.delete_deployment(dep, ended_at=at(10))
    db.session.commit()
    meter(at(14))
    rep = report(user)
    assert item(rep, "cpu").quantity == Decimal("20") and item(rep, "cpu").unit == "core-hours"
    assert item(rep, "cpu").unit_price == Decimal("0.05")
    assert item(rep, "cpu").total_cost == Money(100, "USD")
    assert item(rep, "memory").quantity == Decimal("40")
    assert item(rep, "memory").total_cost == Money(40, "USD")
    assert rep.total_cost == Money(140, "USD")
    assert rollups.audit_usage() == []


def test_a_deletion_at_14_20_bills_20_minutes_of_that_hour(user):
    dep = deploy(user, start=at(0))  # 10:00
    deployments.delete_deployment(dep, ended_at=at(4, 20))  # 14:20
    db.session.commit()
    meter(at(6))
    rows = db.session.scalars(select(UsageDaily)).all()
    assert sum(r.cpu_ms for r in rows) == 2000 * (4 * 3600 + 20 * 60)
    # 2 cores * 4h20m * 0.05 = 0.4333.. ; 4 GB * 4h20m * 0.01 = 0.17333..
    assert item(report(user), "cpu").total_cost == Money(43, "USD")
    assert report(user).total_cost == Money(43 + 17, "USD")


def test_partial_first_hour_and_resize_mid_hour(user):
    dep = deploy(user, start=at(0, 30))  # 10:30, 2 cores
    deployments.update_deployment(dep, cpu_cores=4, effective_at=at(1, 15))  # 11:15 -> 4 cores
    db.session.commit()
    meter(at(2))  # up to 12:00
    rows = db.session.scalars(select(UsageDaily)).all()
    # 10:30-11:15 at 2 cores (45 min) + 11:15-12:00 at 4 cores (45 min)
    assert sum(r.cpu_ms for r in rows) == 2000 * 2700 + 4000 * 2700
    assert item(report(user), "cpu").quantity == Decimal("4.5")
    assert rollups.audit_usage() == []


def test_a_price_change_applies_to_new_deployments_only(user):
    catalog.ensure_catalog()
    old = deploy(user, "old", start=at(0))
    change_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    catalog.create_version(
        catalog.PriceChange(
            effective_from=change_at,
            cpu_per_core_hour="0.10",
            memory_per_gb_hour="0.01",
            storage_per_gb_month="0.10",
            public_ip_per_hour="0.005",
            sku_hourly={},
        )
    )
    db.session.commit()
    # the new deployment starts after the change took effect

    time.sleep(1.1)
    new, _ = deployments.create_deployment(
        external_id="new", user=user, kind="vm", cpu_cores=2, memory_gb=0, storage_gb=0
    )
    db.session.commit()
    old_rates = {i.cpu_rate_micros for i in old.intervals}
    new_rates = {i.cpu_rate_micros for i in new.intervals}
    assert old_rates == {50_000} and new_rates == {100_000}
    # a resize keeps the deployment's own price version
    deployments.update_deployment(old, cpu_cores=8)
    db.session.commit()
    assert {i.cpu_rate_micros for i in old.intervals} == {50_000}


def test_missed_hours_are_all_metered_on_the_next_run_once(user):
    deploy(user, start=at(0))
    first = meter(at(1))
    assert first.hours == 1
    # the scheduler was down for five hours
    second = meter(at(6))
    assert second.hours == 5
    again = meter(at(6))
    assert again.hours == 0 and again.rows == 0
    rows = db.session.scalars(select(UsageDaily)).all()
    assert sum(r.cpu_ms for r in rows) == 2000 * 6 * 3600
    assert rollups.audit_usage() == []


def test_metering_across_midnight_splits_by_day(user):
    deploy(user, start=at(12))  # 22:00 on Oct 1
    meter(at(16))  # 02:00 on Oct 2
    rows = {r.day.isoformat(): r.cpu_ms for r in db.session.scalars(select(UsageDaily))}
    assert rows == {"2026-10-01": 2000 * 2 * 3600, "2026-10-02": 2000 * 2 * 3600}


def test_storage_for_a_whole_month_costs_the_monthly_rate_whatever_its_length(user):
    feb = datetime(2026, 2, 1, tzinfo=UTC)
    nov = datetime(2025, 11, 1, tzinfo=UTC)
    deploy(user, "feb", start=feb, cpu_cores=0, memory_gb=0, storage_gb=10)
    deploy(user, "nov", start=nov, cpu_cores=0, memory_gb=0, storage_gb=10)
    meter(datetime(2026, 3, 1, tzinfo=UTC))
    feb_rep = report(user, (feb, datetime(2026, 3, 1, tzinfo=UTC)))
    nov_rep = report(user, (nov, datetime(2025, 12, 1, tzinfo=UTC)))
    by_id = {c.deployment.external_id: c.total_cost for c in feb_rep.deployments}
    assert by_id["feb"] == Money(100, "USD")  # 28 days
    by_id = {c.deployment.external_id: c.total_cost for c in nov_rep.deployments}
    assert by_id["nov"] == Money(100, "USD")  # 30 days


def test_a_late_deletion_corrects_hours_already_metered(user):
    dep = deploy(user, start=at(0))
    meter(at(5))  # metered 10:00-15:00 as running
    deployments.delete_deployment(dep, ended_at=at(2, 30))  # it really ended at 12:30
    db.session.commit()
    rows = db.session.scalars(select(UsageDaily)).all()
    assert sum(r.cpu_ms for r in rows) == 2000 * 9000
    meter(at(8))
    assert sum(r.cpu_ms for r in db.session.scalars(select(UsageDaily))) == 2000 * 9000
    assert rollups.audit_usage() == []


def test_a_deployment_reported_late_is_metered_for_its_past_hours(user):
    deploy(user, "first", start=at(0))
    meter(at(5))
    deploy(user, "late", start=at(1, 30))  # started 11:30, reported after 15:00 was metered
    meter(at(6))
    late = deployments.get_for_owner(None, "late")
    secs = sum(
        r.cpu_ms
        for r in db.session.scalars(select(UsageDaily).where(UsageDaily.deployment_id == late.id))
    )
    assert secs == 2000 * int(4.5 * 3600)
    assert rollups.audit_usage() == []


def test_suspended_bills_storage_only_and_resume_bills_all(user):
    dep = deploy(user, start=at(0), cpu_cores=1, memory_gb=1, storage_gb=10)
    deployments.update_deployment(dep, state="suspended", effective_at=at(1))
    deployments.update_deployment(dep, state="active", effective_at=at(3))
    db.session.commit()
    meter(at(4))
    row = db.session.scalars(select(UsageDaily)).one()
    assert row.cpu_ms == 1000 * 2 * 3600
    assert row.storage_ms == 10_000 * 4 * 3600


def test_deleted_deployments_stay_in_history(user):
    dep = deploy(user, start=at(0))
    deployments.delete_deployment(dep, ended_at=at(1))
    db.session.commit()
    meter(at(3))
    rep = report(user)
    assert [c.deployment.external_id for c in rep.deployments] == ["vm-1"]
    assert deployments.get_for_owner(None, "vm-1").state == "terminated"


def test_sku_deployments_bill_their_hourly_price(user):
    catalog.ensure_catalog()
    dep, _ = deployments.create_deployment(
        external_id="sku-1", user=user, kind="vm", sku="vm-small-ip", started_at=at(0)
    )
    db.session.commit()
    meter(at(10))
    rep = report(user)
    assert item(rep, "instance").quantity == Decimal("10")
    assert item(rep, "instance").total_cost == Money(78, "USD")  # 10 h x 0.0780
    assert dep.sku_code == "vm-small-ip" and dep.public_ip


def test_bad_input_changes_nothing(user):
    catalog.ensure_catalog()
    db.session.commit()
    with pytest.raises(ValidationFailed):
        deployments.create_deployment(
            external_id="x", user=user, kind="vm", cpu_cores=-1, memory_gb=1, storage_gb=1
        )
    with pytest.raises(ValidationFailed):
        deployments.create_deployment(external_id="x", user=user, kind="vm", sku="vm-huge")
    with pytest.raises(ValidationFailed):
        deployments.create_deployment(external_id="x", user=user, kind="boat", cpu_cores=1)
    dep = deploy(user, start=at(0))
    deployments.delete_deployment(dep, ended_at=at(1))
    db.session.commit()
    with pytest.raises(InvalidTransition):
        deployments.update_deployment(dep, state="active")
    with pytest.raises(ValidationFailed):
        deployments.update_deployment(
            deploy(user, "y", start=at(2)), cpu_cores=4, effective_at=at(1)
        )
    db.session.rollback()


def test_usage_audit_catches_a_tampered_rollup(user, runner):
    deploy(user, start=at(0))
    meter(at(2))
    assert runner.invoke(args=["billing", "usage-audit"]).exit_code == 0
    row = db.session.scalars(select(UsageDaily)).one()
    row.cpu_ms += 1
    db.session.commit()
    result = runner.invoke(args=["billing", "usage-audit"])
    assert result.exit_code == 1 and "cpu_ms" in result.output

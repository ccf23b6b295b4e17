"""Quotas: a warning once and exceeded once per resource and period, auto-suspension after the
grace period of the deployments that push the user over, resumption on upgrade, and the
check-quotas job run by the daemon at a frozen time (--now)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from portal.extensions import db
from portal.models import Deployment, Event, OutboundEmail, QuotaSuspension
from portal.services.metering import deployments
from portal.services.subscriptions import changes, quotas
from portal.services.wallet.reconcile import find_discrepancies

from .conftest import fund

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def events(name):
    return list(db.session.scalars(select(Event).where(Event.name == name).order_by(Event.id)))


def mails(user):
    return list(
        db.session.scalars(
            select(OutboundEmail).where(OutboundEmail.user_id == user.id).order_by(OutboundEmail.id)
        )
    )


def deploy(user, external_id, cores, started):
    dep, _ = deployments.create_deployment(
        external_id=external_id,
        user=user,
        kind="vm",
        cpu_cores=cores,
        memory_gb=1,
        storage_gb=1,
        started_at=started,
    )
    db.session.commit()
    return dep


def on_pro(user):
    fund(user, "500.00")
    changes.change_plan(user, "pro", now=datetime(2026, 12, 1, tzinfo=UTC))
    db.session.commit()


def test_warning_once_then_exceeded_once(user):
    on_pro(user)
    web = deploy(user, "web", 7, T0 - timedelta(days=1))  # 7 of 8 cores: 87%
    result = quotas.check_quotas(T0)
    db.session.commit()
    assert (result.warnings, result.exceeded) == (1, 0)
    [warning] = events("billing.quota.warning")
    assert warning.payload == {
        "user_id": user.id,
        "resource": "cpu",
        "used": "7",
        "limit": "8",
        "threshold_percent": 80,
    }
    assert mails(user)[-1].subject == "You have reached 87% of your CPU cores quota"
    again = quotas.check_quotas(T0 + timedelta(minutes=15))
    db.session.commit()
    assert (again.warnings, again.exceeded) == (0, 0)
    assert len(events("billing.quota.warning")) == 1

    deployments.update_deployment(web, cpu_cores=9)
    db.session.commit()
    assert quotas.check_quotas(T0 + timedelta(minutes=30)).exceeded == 1
    assert quotas.check_quotas(T0 + timedelta(minutes=45)).exceeded == 0
    db.session.commit()
    [exceeded] = events("billing.quota.exceeded")
    assert exceeded.payload["used"] == "9" and exceeded.payload["threshold_percent"] == 100
    assert mails(user)[-1].subject == "You are over your CPU cores quota"
    # nothing is suspended without autoSuspendOnOverage
    assert db.session.get(Deployment, web.id).state == "active"


def test_auto_suspend_after_the_grace_period_and_resume_on_upgrade(user, billing):
    billing(billing_mode="hybrid", auto_suspend_on_overage=True, grace_period_days=7)
    on_pro(user)
    old = deploy(user, "old", 6, T0 - timedelta(days=2))
    new = deploy(user, "new", 4, T0 - timedelta(days=1))  # 10 of 8 cores: over
    quotas.check_quotas(T0)
    db.session.commit()
    # within the grace period nothing is suspended
    assert quotas.check_quotas(T0 + timedelta(days=6, hours=23)).suspended == 0
    db.session.commit()
    assert db.session.get(Deployment, new.id).state == "active"

    result = quotas.check_quotas(T0 + timedelta(days=7))
    db.session.commit()
    assert result.suspended == 1
    # the newest deployment, which pushes the user over; the older one fits and runs on
    assert db.session.get(Deployment, new.id).state == "suspended"
    assert db.session.get(Deployment, old.id).state == "active"
    [suspended] = events("billing.deployment.suspended")
    assert suspended.payload["external_id"] == "new"
    assert (suspended.payload["state"], suspended.payload["reason"]) == ("suspended", "quota")
    assert "- new (new): over the CPU cores quota" in mails(user)[-1].body_text
    assert changes.describe(user).status == "suspended"
    # a second run, or a second daemon, suspends nothing more
    assert quotas.check_quotas(T0 + timedelta(days=7, minutes=15)).suspended == 0
    db.session.commit()
    assert len(events("billing.deployment.suspended")) == 1

    changes.change_plan(user, "enterprise", now=T0 + timedelta(days=7, hours=1))
    db.session.commit()
    assert db.session.get(Deployment, new.id).state == "active"
    [resumed] = events("billing.deployment.resumed")
    assert resumed.payload["external_id"] == "new"
    row = db.session.scalar(select(QuotaSuspension))
    assert row.resumed_at is not None
    assert changes.describe(user).status == "active"
    assert not find_discrepancies()


def test_back_under_the_limit_resumes(user, billing):
    billing(billing_mode="subscription", auto_suspend_on_overage=True, grace_period_days=0)
    on_pro(user)
    old = deploy(user, "old", 6, T0 - timedelta(days=2))
    new = deploy(user, "new", 4, T0 - timedelta(days=1))
    assert quotas.check_quotas(T0).suspended == 1
    db.session.commit()
    deployments.delete_deployment(db.session.get(Deployment, old.id))
    db.session.commit()
    assert quotas.check_quotas(T0 + timedelta(minutes=15)).resumed == 1
    db.session.commit()
    assert db.session.get(Deployment, new.id).state == "active"


def test_the_daemon_runs_check_quotas_at_its_frozen_time(user, runner):
    on_pro(user)
    deploy(user, "web", 7, T0 - timedelta(days=1))
    first = runner.invoke(args=["billing", "daemon", "--once", "--now", T0.isoformat()])
    assert first.exit_code == 0, first.output
    later = (T0 + timedelta(minutes=31)).isoformat()
    second = runner.invoke(args=["billing", "daemon", "--once", "--now", later])
    assert second.exit_code == 0, second.output
    db.session.remove()
    [warning] = events("billing.quota.warning")
    assert warning.payload["used"] == "7"

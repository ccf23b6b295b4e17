"""The current period's projection reads the meter mark and what runs now in one statement:
the open intervals' hourly cost summed by the database equals the per-interval sum in
Python (``hourly_burn_micros``), exactly."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from portal.extensions import db
from portal.models import User, utcnow
from portal.services import calendar
from portal.services.metering import deployments, rollups, runs, usage


def test_the_mark_and_the_burn_in_one_statement_equal_the_python_sum(app, make_user):
    user_id = make_user().id
    with app.app_context():
        user = db.session.get(User, user_id)
        start, end = calendar.period_containing(utcnow(), calendar.invoice_day())
        assert usage._mark_and_burn(user, end)[1] == 0  # nothing runs yet
        for n, (cores, memory, storage, ip) in enumerate(
            [("1.5", "3.25", "40", True), ("0.25", "0", "1234.567", False), ("4", "16", "0", True)]
        ):
            dep, _ = deployments.create_deployment(
                external_id=f"burn-{user_id}-{n}",
                user=user,
                kind="vm",
                cpu_cores=Decimal(cores),
                memory_gb=Decimal(memory),
                storage_gb=Decimal(storage),
                public_ip=ip,
                started_at=utcnow() - timedelta(hours=3),
            )
        deployments.delete_deployment(dep, ended_at=utcnow() - timedelta(hours=1))  # not running
        db.session.commit()
        runs.meter_all(rollups.last_complete_hour())
        db.session.commit()

        mark, burn = usage._mark_and_burn(user, end)
        assert burn == usage.hourly_burn_micros(user, end) and burn > 0
        assert mark == rollups.metered_through(user.id)
        report = usage.usage_report(user, start, end)
        assert report.metered_through == mark
        assert report.projected_total >= report.total_cost
        db.session.remove()

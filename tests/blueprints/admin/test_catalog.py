"""Admin: price versions and usage reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from portal.extensions import db
from portal.models import PriceVersion, User
from portal.services.metering import deployments, runs


def test_admin_schedules_a_price_change_without_editing_history(app, client, auth, make_user):
    auth.login(make_user(admin=True))
    page = client.get("/admin/prices").get_data(as_text=True)
    assert "vm-small-ip" in page and "(in force)" in page
    when = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:00")
    response = client.submit(
        "/admin/prices",
        {
            "effective_from": when,
            "cpu_per_core_hour": "0.06",
            "memory_per_gb_hour": "0.01",
            "storage_per_gb_month": "0.10",
            "public_ip_per_hour": "0.005",
            "sku-vm-small": "0.08",
            "note": "2027 prices",
        },
    )
    assert response.status_code == 303
    with app.app_context():
        versions = db.session.scalars(select(PriceVersion).order_by(PriceVersion.version)).all()
        assert [v.cpu_per_core_hour_micros for v in versions] == [50_000, 60_000]
        assert versions[1].sku("vm-small").hourly_micros == 80_000
        assert (
            versions[1].sku("vm-medium").hourly_micros == versions[0].sku("vm-medium").hourly_micros
        )
    page = client.get("/admin/prices").get_data(as_text=True)
    assert "(scheduled)" in page and "2027 prices" in page


def test_price_change_in_the_past_or_bad_rate_is_refused(app, client, auth, make_user):
    auth.login(make_user(admin=True))
    client.get("/admin/prices")
    past = client.submit(
        "/admin/prices",
        {
            "effective_from": "2020-01-01T00:00",
            "cpu_per_core_hour": "0.06",
            "memory_per_gb_hour": "0.01",
            "storage_per_gb_month": "0.10",
            "public_ip_per_hour": "0",
        },
    )
    assert past.status_code == 422 and "must not be in the past" in past.get_data(as_text=True)
    when = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:00")
    bad = client.submit(
        "/admin/prices",
        {
            "effective_from": when,
            "cpu_per_core_hour": "-1",
            "memory_per_gb_hour": "0.01",
            "storage_per_gb_month": "0.10",
            "public_ip_per_hour": "0",
        },
    )
    assert bad.status_code == 422 and "must not be negative" in bad.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(db.func.count()).select_from(PriceVersion)) == 1


def test_usage_report_page_filters_and_downloads(app, client, auth, make_user):
    user = make_user("ann@example.com")
    with app.app_context():
        owner = db.session.get(User, user.id)
        deployments.create_deployment(
            external_id="a-1",
            user=owner,
            kind="vm",
            cpu_cores=1,
            memory_gb=1,
            storage_gb=1,
            labels={"team": "red"},
            started_at=datetime(2026, 10, 3, tzinfo=UTC),
        )
        db.session.commit()
        runs.meter_all(datetime(2026, 10, 4, 12, tzinfo=UTC))
    auth.login(make_user(admin=True))
    page = client.get("/admin/reports?from=2026-10-01&to=2026-10-31&label=team=red")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "a-1" in text and "2026-10-04" in text
    none = client.get("/admin/reports?from=2026-10-01&to=2026-10-31&kind=k8s").get_data(
        as_text=True
    )
    assert "No usage matches." in none
    csv = client.get("/admin/reports.csv?from=2026-10-01&to=2026-10-31")
    assert csv.mimetype == "text/csv" and csv.get_data(as_text=True).count("\r\n") == 3

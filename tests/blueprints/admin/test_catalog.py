"""Admin: price versions and usage reports."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import event, insert, select, text

from portal.extensions import db
from portal.models import Deployment, PriceVersion, UsageDaily, User
from portal.services.metering import catalog, deployments, reports, runs


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


def _report_page_rows(html: str) -> list[tuple[str, str, str]]:
    """(date, user, deployment) of each row of the report page's table."""
    return re.findall(r"<tr><td>([0-9-]{10})</td><td>([^<]*)</td><td>([^<]*)</td>", html)


def test_usage_report_rows_by_day_user_and_deployment_on_page_and_csv(app, client, auth, make_user):
    # Emails and external ids sort the other way round from the users and deployments.
    zed = make_user("zed@example.com")
    amy = make_user("amy@example.com")
    with app.app_context():
        for owner_id, external_ids in ((zed.id, ("z-2", "z-1")), (amy.id, ("a-2", "a-1"))):
            for external_id in external_ids:
                deployments.create_deployment(
                    external_id=external_id,
                    user=db.session.get(User, owner_id),
                    kind="vm",
                    cpu_cores=1,
                    memory_gb=1,
                    storage_gb=1,
                    started_at=datetime(2026, 10, 3, 22, tzinfo=UTC),
                )
        db.session.commit()
        runs.meter_all(datetime(2026, 10, 4, 3, tzinfo=UTC))
    expected = [
        (day, email, dep)
        for day in ("2026-10-03", "2026-10-04")
        for email, dep in (
            ("zed@example.com", "z-2"),
            ("zed@example.com", "z-1"),
            ("amy@example.com", "a-2"),
            ("amy@example.com", "a-1"),
        )
    ]
    auth.login(make_user(admin=True))
    page = client.get("/admin/reports?from=2026-10-01&to=2026-10-31").get_data(as_text=True)
    assert _report_page_rows(page) == expected
    assert "the CSV has them all" not in page
    csv = client.get("/admin/reports.csv?from=2026-10-01&to=2026-10-31").get_data(as_text=True)
    lines = [line.split(",") for line in csv.strip().split("\r\n")[1:]]
    assert [(c[0], c[1], c[2]) for c in lines] == expected
    # The user filter keeps the order (the user's deployments by id).
    one = client.get("/admin/reports?from=2026-10-01&to=2026-10-31&user=amy@example.com")
    assert _report_page_rows(one.get_data(as_text=True)) == [r for r in expected if r[1][0] == "a"]


def _seed_report_rows(app, make_user, users: int, deployments_each: int, day: date) -> None:
    """Rollup rows written directly (the plan, not the amounts, is under test)."""
    owners = [make_user(f"r{n:03d}@example.com").id for n in range(users)]
    with app.app_context():
        version = catalog.ensure_catalog()
        db.session.execute(
            insert(Deployment),
            [
                {
                    "external_id": f"r-{owner}-{n}",
                    "user_id": owner,
                    "kind": "vm",
                    "labels": {},
                    "state": "active",
                    "price_version_id": version.id,
                    "cpu_milli": 1000,
                    "memory_mgb": 1000,
                    "storage_mgb": 1000,
                }
                for owner in owners
                for n in range(deployments_each)
            ],
        )
        rows = db.session.execute(select(Deployment.id, Deployment.user_id)).all()
        db.session.execute(
            insert(UsageDaily),
            [
                {"deployment_id": dep_id, "user_id": owner, "day": day + timedelta(days=d)}
                for dep_id, owner in rows
                for d in range(3)
            ],
        )
        db.session.commit()


def test_usage_report_page_reads_only_its_rows(app, client, auth, make_user):
    """The first page is one statement with a LIMIT, planned as an index scan in the shown
    order (no sort of the range's rows): it reads a bounded number of rows however many the
    range holds."""
    day = date(2026, 10, 1)
    _seed_report_rows(app, make_user, users=30, deployments_each=10, day=day)  # 900 rows
    auth.login(make_user(admin=True))
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "usage_daily" in statement:
            statements.append(statement)

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            page = client.get("/admin/reports?from=2026-10-01&to=2026-10-31")
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
    html = page.get_data(as_text=True)
    assert len(_report_page_rows(html)) == 200 and "the CSV has them all" in html
    assert len(statements) == 1 and "LIMIT" in statements[0].upper()

    with app.app_context():
        f = reports.ReportFilter(day_from=day, day_to=date(2026, 10, 31))
        statement = reports._query(f).limit(201)
        sql = str(statement.compile(db.engine, compile_kwargs={"literal_binds": True}))
        if db.engine.dialect.name == "postgresql":
            # Whatever the planner would pick on these few rows: with sorting priced out, an
            # index that yields the order must exist, and the scan stops after 201 rows.
            db.session.execute(text("SET LOCAL enable_sort = off"))
            db.session.execute(text("SET LOCAL enable_seqscan = off"))
            plan = db.session.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)).scalar_one()
            plan = plan if isinstance(plan, list) else json.loads(plan)
            nodes, read = [plan[0]["Plan"]], 0
            while nodes:
                node = nodes.pop()
                assert "Sort" not in node["Node Type"], node
                if str(node.get("Relation Name", "")).startswith("usage_daily"):
                    read += node["Actual Rows"] * node["Actual Loops"]
                nodes.extend(node.get("Plans", []))
            assert 0 < read <= 201
        else:
            details = [
                row[-1] for row in db.session.execute(text("EXPLAIN QUERY PLAN " + sql)).all()
            ]
            assert not any("TEMP B-TREE" in d for d in details), details
            assert any("ix_usage_daily_day_user_id_deployment_id" in d for d in details), details
        db.session.rollback()

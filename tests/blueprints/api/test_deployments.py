"""The platform's deployment API and the usage API, end to end."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import event, select

from portal.extensions import db
from portal.models import Deployment, DeploymentInterval

START = "2026-10-01T10:00:00Z"


@pytest.fixture(autouse=True)
def backdating_allowed(app, monkeypatch):
    """These tests report deployments in October 2026 (fixed figures), further back than
    DEPLOYMENT_BACKDATE_MAX_DAYS allows by default (tests/api/test_validation.py covers
    the bound)."""
    monkeypatch.setitem(app.config, "DEPLOYMENT_BACKDATE_MAX_DAYS", 36500)


@pytest.fixture
def platform(api, make_user):
    return api.token(make_user(admin=True), "platform")


def create(api, token, **body):
    payload = {
        "external_id": "vm-1",
        "user_id": "john@example.com",
        "kind": "vm",
        "cpu_cores": 2,
        "memory_gb": 4,
        "storage_gb": 0,
        "started_at": START,
        **body,
    }
    return api.post("/deployments", json=payload, token=token)


def test_platform_reports_a_deployment_and_the_user_sees_its_usage(
    app, api, make_user, platform, runner
):
    john = make_user("john@example.com")
    created = create(api, platform, labels={"project": "alpha"}, name="web")
    assert created.status_code == 201, created.json
    assert created.json["cpu_cores"] == "2" and created.json["state"] == "active"
    again = create(api, platform, labels={"project": "alpha"}, name="web")
    assert again.status_code == 200
    assert (
        create(api, platform, cpu_cores=3, labels={"project": "alpha"}, name="web").status_code
        == 409
    )
    deleted = api.client.delete(
        "/api/plugins/billing/deployments/vm-1",
        json={"ended_at": "2026-10-01T20:00:00Z"},
        headers={"Authorization": f"Bearer {platform}"},
    )
    assert deleted.status_code == 200 and deleted.json["state"] == "terminated"
    assert runner.invoke(args=["billing", "meter", "--hour", "2026-10-01T23"]).exit_code == 0

    body = api.get("/usage?period=2026-10", token=api.token(john)).json
    assert body["total_cost"] == "1.40" and body["total_cost_minor"] == 140
    assert body["currency"] == "USD"
    items = {i["resource_type"]: i for i in body["items"]}
    assert items["cpu"] == {
        "resource_type": "cpu",
        "quantity": "20.000000",
        "unit": "core-hours",
        "unit_price": "0.050000",
        "total_cost": "1.00",
        "total_cost_minor": 100,
    }
    assert items["memory"]["quantity"] == "40.000000" and items["memory"]["total_cost_minor"] == 40
    assert body["deployments"] == [
        {
            "external_id": "vm-1",
            "name": "web",
            "kind": "vm",
            "state": "terminated",
            "labels": {"project": "alpha"},
            "total_cost": "1.40",
            "total_cost_minor": 140,
        }
    ]
    assert sum(d["total_cost_minor"] for d in body["daily"]) == 140


@pytest.mark.parametrize(
    "body, field",
    [
        ({"user_id": "nobody@example.com"}, "user_id"),
        ({"sku": "vm-huge", "cpu_cores": None}, "sku"),
        ({"cpu_cores": -1}, "cpu_cores"),
        ({"cpu_cores": "1.0005"}, "cpu_cores"),
        ({"kind": "boat"}, "kind"),
        ({"started_at": "2099-01-01T00:00:00Z"}, "started_at"),
        ({"started_at": "yesterday"}, "started_at"),
        ({"labels": ["x"]}, "labels"),
    ],
)
def test_bad_deployments_get_422_and_change_nothing(app, api, make_user, platform, body, field):
    make_user("john@example.com")
    response = create(api, platform, **body)
    assert response.status_code == 422, response.json
    assert field in response.json["error"]["fields"]
    with app.app_context():
        assert db.session.scalar(select(db.func.count()).select_from(Deployment)) == 0


def test_state_changes_and_their_errors(app, api, make_user, platform):
    make_user("john@example.com")
    create(api, platform, state="pending")

    def patch(**body):
        return api.client.patch(
            "/api/plugins/billing/deployments/vm-1",
            json=body,
            headers={"Authorization": f"Bearer {platform}"},
        )

    assert patch(state="active", effective_at="2026-10-01T11:00:00Z").json["state"] == "active"
    assert (
        patch(state="suspended", effective_at="2026-10-01T12:00:00Z").json["state"] == "suspended"
    )
    bad = patch(state="pending")
    assert bad.status_code == 409 and bad.json["error"]["code"] == "invalid_transition"
    early = patch(cpu_cores=8, effective_at="2026-10-01T11:30:00Z")
    assert early.status_code == 422 and "effective_at" in early.json["error"]["fields"]
    assert (
        patch(state="active", cpu_cores=8, effective_at="2026-10-01T13:00:00Z").json["cpu_cores"]
        == "8"
    )
    with app.app_context():
        intervals = db.session.scalars(
            select(DeploymentInterval).order_by(DeploymentInterval.start_epoch)
        ).all()
        assert [(i.state, i.cpu_milli) for i in intervals] == [
            ("active", 2000),
            ("suspended", 0),
            ("active", 8000),
        ]


def test_heartbeat_and_scopes(app, api, make_user, platform):
    john = make_user("john@example.com")
    create(api, platform, kind="session")
    beat = api.post("/deployments/vm-1/heartbeat", token=platform)
    assert beat.status_code == 200 and beat.json["last_heartbeat_at"]
    user_token = api.token(john)
    assert api.post("/deployments", json={}, token=user_token).status_code == 403
    assert api.get("/deployments/vm-1", token=user_token).status_code == 200
    other = api.token(make_user())
    assert api.get("/deployments/vm-1", token=other).status_code == 404
    assert api.get("/deployments/nope", token=platform).status_code == 404


def test_prices_show_the_catalog_in_force(app, api, make_user):
    body = api.get("/prices", token=api.token(make_user())).json
    assert body["version"] == 1 and body["currency"] == "USD"
    assert body["rates"]["cpu_per_core_hour"] == "0.05"
    assert len(body["skus"]) == 12
    assert {s["code"] for s in body["skus"]} >= {"vm-small", "vm-small-ip", "k8s-large-ip"}


def test_admin_reports_filter_and_export_csv(app, api, make_user, platform, runner):
    make_user("john@example.com")
    make_user("mary@example.com")
    create(api, platform, external_id="a", labels={"project": "alpha"})
    create(
        api,
        platform,
        external_id="b",
        user_id="mary@example.com",
        kind="k8s",
        labels={"project": "beta"},
        name="=cmd()",
    )
    runner.invoke(args=["billing", "meter", "--hour", "2026-10-02T03"])
    admin = api.token(make_user(admin=True), "admin")
    rows = api.get(
        "/admin/reports?from=2026-10-01&to=2026-10-31&label=project=alpha", token=admin
    ).json
    assert {r["deployment"] for r in rows["items"]} == {"a"}
    assert (
        api.get("/admin/reports?from=2026-10-01&to=2026-10-31&kind=k8s", token=admin).json["total"]
        == 2
    )  # two days
    response = api.get("/admin/reports?from=2026-10-01&to=2026-10-31&format=csv", token=admin)
    assert response.mimetype == "text/csv"
    text = response.get_data(as_text=True)
    assert text.startswith("\ufeff")
    parsed = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    assert len(parsed) == 4
    assert {r["name"] for r in parsed} == {"", "'=cmd()"}  # no formula injection
    assert api.get("/admin/reports", token=api.token(make_user())).status_code == 403


def test_admin_reports_pages_are_cut_by_the_database_in_the_report_order(
    app, api, make_user, platform, runner
):
    """Page by page the rows come in the report's order (day, user, deployment), none twice,
    and ``total`` counts them all; past the last page: no items, the same total."""
    make_user("john@example.com")
    for name in ("a", "b", "c"):
        create(api, platform, external_id=name)
    runner.invoke(args=["billing", "meter", "--hour", "2026-10-03T03"])  # three days each
    admin = api.token(make_user(admin=True), "admin")
    url = "/admin/reports?from=2026-10-01&to=2026-10-31&per_page=4&page="
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "usage_daily" in statement:
            statements.append(statement.upper())

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            pages = [api.get(url + str(n), token=admin).json for n in (1, 2, 3, 4)]
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
    # Per page: the page's rows (LIMIT ... OFFSET) and a count, not every row of the range.
    assert len(statements) == 8
    assert sum("LIMIT" in s and "OFFSET" in s for s in statements) == 4
    assert sum("COUNT(*)" in s for s in statements) == 4
    assert [p["total"] for p in pages] == [9, 9, 9, 9]
    assert [len(p["items"]) for p in pages] == [4, 4, 1, 0]
    seen = [(r["date"], r["deployment"]) for p in pages for r in p["items"]]
    days = ["2026-10-01", "2026-10-02", "2026-10-03"]
    assert seen == [(d, n) for d in days for n in ("a", "b", "c")]

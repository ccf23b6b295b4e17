"""Admin › Jobs › generate-invoices › Run now, on any day of the month: it invoices the last
billing period that has ended (the schedule, on the invoice day, does the same)."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Invoice, JobRun, User
from portal.models.types import utcnow
from portal.services import calendar
from portal.services.metering import deployments
from portal.tasks import scheduler
from tests.support.app import AuthActions

pytestmark = pytest.mark.redis


@pytest.fixture
def not_the_invoice_day(app):
    """An invoice day that is not today, so the period containing yesterday has not ended
    (the case that used to fail with "period_end has not ended yet")."""
    original = app.config["BILLING"]
    today = utcnow().day
    day = today % 28 + 1
    if day == today:  # pragma: no cover - only when today is the 29th..31st
        day = 1
    app.config["BILLING"] = dataclasses.replace(original, invoice_day=day)
    yield day
    app.config["BILLING"] = original


def _running_last_period(app, user_id: int) -> tuple:
    """One core running through the last ended period; returns that period."""
    with app.app_context():
        start, end = calendar.last_complete_period()
        user = db.session.get(User, user_id)
        dep, _ = deployments.create_deployment(
            external_id=f"vm-{user_id}",
            user=user,
            kind="vm",
            name="web",
            cpu_cores=1,
            memory_gb=0,
            storage_gb=0,
            started_at=start,
        )
        deployments.delete_deployment(dep, ended_at=end)
        db.session.commit()
        db.session.remove()
        return start, end


def _invoices(app) -> list[tuple]:
    with app.app_context():
        rows = db.session.execute(select(Invoice.user_id, Invoice.period_start, Invoice.status))
        result = [(u, s.replace(tzinfo=None), st) for u, s, st in rows]
        db.session.remove()
        return result


def _leader_sweeps(app) -> None:
    """What the daemon's leader does each heartbeat: a run that fanned out into chunks ends
    once they have (the jobs themselves ran synchronously in this app)."""
    with app.app_context():
        scheduler.sweep_runs(now=utcnow() + timedelta(minutes=5), grace=timedelta(minutes=1))
        db.session.commit()
        db.session.remove()


def _run(app, run_id: int) -> JobRun:
    _leader_sweeps(app)
    with app.app_context():
        run = db.session.get(JobRun, run_id)
        db.session.expunge(run)
        db.session.remove()
        return run


def test_run_now_on_the_page_invoices_the_last_ended_period(
    app, client, make_user, not_the_invoice_day
):
    customer = make_user(name="Cora Customer")
    start, end = _running_last_period(app, customer.id)
    assert end <= utcnow() < end + timedelta(days=31)
    admin = make_user(admin=True)
    AuthActions(client).login(admin)

    page = client.get("/admin/jobs").get_data(as_text=True)
    assert 'action="/admin/jobs/generate-invoices/run"' in page
    token = re.search(r'name="request_id" type="hidden" value="(\w+)"', page).group(1)
    response = client.submit("/admin/jobs/generate-invoices/run", {"request_id": token})
    assert response.status_code == 303

    html = client.get("/admin/jobs").get_data(as_text=True)
    run_id = int(re.search(r'<div id="job-run-(\d+)"', html).group(1))
    run = _run(app, run_id)  # jobs run synchronously in this app
    assert run.status == "succeeded", run.error
    assert run.args == [start.strftime("%Y-%m-%d")]
    assert "has not ended" not in html
    assert _invoices(app) == [(customer.id, start.replace(tzinfo=None), "open")]


def test_run_now_through_the_api_invoices_the_last_ended_period(
    app, api, make_user, not_the_invoice_day
):
    customer = make_user(name="Cora Customer")
    start, _ = _running_last_period(app, customer.id)
    token = api.token(make_user(admin=True), "admin")

    answer = api.post("/jobs/generate-invoices", token=token, headers={"Idempotency-Key": "k1"})
    assert answer.status_code == 202, answer.get_json()
    _leader_sweeps(app)
    run = api.get(f"/jobs/runs/{answer.get_json()['run_id']}", token=token).get_json()
    assert run["status"] == "succeeded", run["error"]
    assert run["figures"]["invoices"] == 1
    assert _invoices(app) == [(customer.id, start.replace(tzinfo=None), "open")]

    # Again (another request): the period is invoiced already, nothing new.
    again = api.post("/jobs/generate-invoices", token=token, headers={"Idempotency-Key": "k2"})
    run = api.get(f"/jobs/runs/{again.get_json()['run_id']}", token=token).get_json()
    assert run["status"] == "succeeded", run["error"]
    assert len(_invoices(app)) == 1

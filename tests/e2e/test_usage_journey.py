"""A customer opens Usage and switches the billing period: the breakdown (#usage-report) is
swapped in place and shows the other period's totals."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.sync_api import Page, expect

from portal.extensions import db
from portal.models import User
from portal.services import calendar
from portal.services.metering import deployments, rollups, runs
from tests.support.app import PASSWORD

pytestmark = pytest.mark.browser

USAGE_SHOT = "/tmp/e2e-usage.png"


def log_in(page: Page, email: str, password: str = PASSWORD) -> None:
    page.goto("/auth/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1, name="Overview")).to_be_visible()


def seed_usage(app, user_id: int) -> str:
    """The seed's example in the previous period (2 cores and 4 GB for 10 hours: $1.40) and
    one core for the last hour in the current one ($0.05). Returns the previous period's
    selector value (YYYY-MM)."""
    with app.app_context():
        try:
            user = db.session.get(User, user_id)
            now = rollups.last_complete_hour()
            current, _ = calendar.period_containing(now, app.config["BILLING"].invoice_day)
            previous, _ = calendar.period_containing(
                current - timedelta(days=1), app.config["BILLING"].invoice_day
            )
            start = previous + timedelta(hours=10)
            dep, _ = deployments.create_deployment(
                external_id="web-1",
                user=user,
                kind="vm",
                cpu_cores=2,
                memory_gb=4,
                storage_gb=0,
                name="web",
                labels={"project": "alpha"},
                started_at=start,
            )
            deployments.delete_deployment(dep, ended_at=start + timedelta(hours=10))
            deployments.create_deployment(
                external_id="db-1",
                user=user,
                kind="k8s",
                cpu_cores=1,
                memory_gb=0,
                storage_gb=0,
                name="db",
                started_at=now - timedelta(hours=1),
            )
            db.session.commit()
            runs.meter_all(now)
            return f"{previous:%Y-%m}"
        finally:
            db.session.remove()


def test_switching_the_period_swaps_the_breakdown(
    app, live_server, open_page, make_user, browser_problems
):
    user = make_user(name="Uma User")
    previous = seed_usage(app, user.id)

    page = open_page("customer")
    log_in(page, user.email)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", level=1, name="Usage")).to_be_visible()
    total = page.locator("#usage-report #usage-total")
    expect(total).to_have_text("$0.05")
    expect(page.locator("#resource-cpu")).to_contain_text("1 core-hours")
    expect(page.locator("#usage-report")).to_contain_text("db")
    expect(page.locator("#usage-report")).not_to_contain_text("project=alpha")
    before = total.inner_text()

    page.evaluate("window.__sameDocument = 'yes'")
    swaps = []
    page.on(
        "request",
        lambda r: swaps.append(r.url) if r.headers.get("hx-target") == "usage-report" else None,
    )
    page.get_by_label("Billing period").select_option(previous)

    expect(total).to_have_text("$1.40")
    assert total.inner_text() != before
    expect(page.locator("#usage-projected")).to_have_count(0)  # a past period: one total
    expect(page.locator("#resource-cpu")).to_contain_text("20 core-hours")
    expect(page.locator("#resource-memory")).to_contain_text("40 gb-hours")
    expect(page.locator("#usage-report")).to_contain_text("project=alpha")
    expect(page.get_by_role("heading", level=2, name="Period total")).to_be_visible()
    expect(page).to_have_url(re.compile(rf"/usage/\?period={previous}$"))
    assert page.evaluate("window.__sameDocument") == "yes"
    assert len(swaps) == 1, swaps
    # The deployments list outside the fragment is still there, unchanged.
    expect(page.locator("#deployments-heading")).to_be_visible()
    page.screenshot(path=USAGE_SHOT, full_page=True)

    browser_problems.assert_none()

"""The Usage page: totals, breakdowns, chart, and the htmx period switch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from portal.extensions import db
from portal.models import User
from portal.services.metering import deployments, rollups, runs


def seed_usage(app, user_id: int) -> None:
    """10 hours of 2 cores and 4 GB on Oct 1st; one hour in the current period."""
    with app.app_context():
        user = db.session.get(User, user_id)
        start = datetime(2026, 10, 1, 10, tzinfo=UTC)
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
        now = rollups.last_complete_hour()
        deployments.create_deployment(
            external_id="db-1",
            user=user,
            kind="k8s",
            cpu_cores=1,
            memory_gb=0,
            storage_gb=0,
            started_at=now - timedelta(hours=1),
        )
        db.session.commit()
        runs.meter_all(now)


def test_usage_page_shows_the_period_and_switches_with_htmx(app, client, auth, make_user):
    user = make_user()
    seed_usage(app, user.id)
    auth.login(user)
    page = client.get("/usage/?period=2026-10").get_data(as_text=True)
    assert 'id="usage-total">$1.40<' in page
    assert 'id="resource-cpu"' in page and "20 core-hours" in page and "$0.05" in page
    assert "<svg" in page and "2026-10-01: $1.40" in page
    assert "project=alpha" in page
    assert 'id="deployments-heading"' in page  # the deployments list

    fragment = client.htmx_get("/usage/?period=2026-10", target="usage-report")
    body = fragment.get_data(as_text=True)
    assert body.startswith('<div id="usage-report">') and "<html" not in body
    assert "$1.40" in body
    current = client.htmx_get("/usage/", target="usage-report").get_data(as_text=True)
    assert "$1.40" not in current and "$0.05" in current  # one core-hour now
    assert "Projected for the period" in current


def test_unknown_period_is_404(app, client, auth, make_user):
    auth.login(make_user())
    assert client.get("/usage/?period=next-year").status_code == 404


def test_the_chart_has_axes_and_its_values_are_read_out_and_a_past_period_has_one_total(
    app, client, auth, make_user
):
    user = make_user()
    seed_usage(app, user.id)
    auth.login(user)
    page = client.get("/usage/?period=2026-10").get_data(as_text=True)
    svg = page[page.index("<svg") : page.index("</svg>")]
    # An amount axis (0, half, the highest day) and a date axis.
    assert ">$0.00</text>" in svg and ">$0.70</text>" in svg and ">$1.40</text>" in svg
    assert ">Oct 1</text>" in svg and ">Oct 8</text>" in svg
    assert 'aria-hidden="true"' in svg
    # Each bar's value for screen readers, in a table they read.
    table = page[page.index('<table class="visually-hidden" id="chart-values">') :]
    assert '<th scope="row">2026-10-01</th><td>$1.40</td>' in table
    assert '<th scope="row">2026-10-02</th><td>$0.00</td>' in table
    # A past period: one total, no projection.
    assert page.count('class="amount"') == 1 and "Period total" in page
    assert "Projected for the period" not in page and "Cost so far" not in page
    # Quantities with at most two decimals.
    assert "20 core-hours" in page and "40 gb-hours" in page

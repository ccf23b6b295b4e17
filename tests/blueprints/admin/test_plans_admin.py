"""Admin › Plans: the setting's plans with their versions, creating a plan, a new version from
a date, retiring; a user's billing mode on their admin page. Admins only, CSRF on each form."""

from __future__ import annotations

import html
import re

from sqlalchemy import select

from portal.extensions import db
from portal.models import Plan, User, utcnow
from portal.money import Money
from portal.services.admin import overview
from portal.services.subscriptions import changes
from portal.services.wallet import credits


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def words(response) -> str:
    return " ".join(re.sub(r"<[^>]+>", "", text(response)).split())


def test_plans_page_create_version_retire(app, client, auth, make_user, with_plans):
    auth.login(make_user(admin=True))
    page = text(client.get("/admin/plans"))
    assert "Professional" in page and "(in force)" in page

    bad = client.submit(
        "/admin/plans",
        {
            "plan_id": "Team!",
            "name": "Team",
            "price": "49",
            "interval": "month",
            "cpu_limit": "16",
            "memory_limit": "32",
            "storage_limit": "250",
        },
    )
    assert bad.status_code == 422 and "must be 1 to 40 of a-z" in text(bad)
    made = client.submit(
        "/admin/plans",
        {
            "plan_id": "team",
            "name": "Team",
            "price": "49.00",
            "interval": "month",
            "cpu_limit": "16",
            "memory_limit": "32",
            "storage_limit": "250",
        },
    )
    assert made.status_code == 303
    assert "Plan team is on offer." in text(client.get("/admin/plans"))

    versioned = client.submit(
        "/admin/plans/team/versions",
        {
            "name": "Team",
            "price": "59.00",
            "interval": "month",
            "cpu_limit": "16",
            "memory_limit": "32",
            "storage_limit": "250",
            "effective_from": "2099-01-01T00:00",
        },
    )
    assert versioned.status_code == 303
    assert "(scheduled)" in text(client.get("/admin/plans"))
    client.submit("/admin/plans/team/retire")
    with app.app_context():
        assert db.session.scalar(select(Plan).where(Plan.code == "team")).retired_at is not None
        db.session.remove()
    assert client.post("/admin/plans/team/retire").status_code == 400  # no CSRF token


def test_a_users_billing_mode(app, client, auth, make_user, with_plans):
    user = make_user()
    auth.login(make_user(admin=True))
    assert "Billing mode: hybrid (the installation's)" in words(
        client.get(f"/admin/users/{user.id}")
    )
    client.submit(f"/admin/users/{user.id}/billing-mode", {"billing_mode": "usage"})
    with app.app_context():
        assert db.session.get(User, user.id).billing_mode == "usage"
        db.session.remove()
    assert "Billing mode: usage (set for this account)" in words(
        client.get(f"/admin/users/{user.id}")
    )


def test_plans_page_is_for_admins(app, client, auth, make_user, with_plans):
    auth.login(make_user())
    assert client.get("/admin/plans").status_code == 403


def test_the_overview_counts_subscribers_and_monthly_recurring_revenue(
    app, client, auth, make_user, with_plans
):
    subscribers = [(make_user(), "pro"), (make_user(), "pro"), (make_user(), "enterprise-annual")]
    with app.app_context():
        for n, (u, plan) in enumerate(subscribers):
            row = db.session.get(User, u.id)
            credits.grant_credit(
                user=row, amount=Money(200_000, "USD"), reason="t", idempotency_key=f"mrr:{n}"
            )
            changes.change_plan(row, plan)
        db.session.commit()
        db.session.remove()
    with app.app_context():  # the overview's one statement, and the plans' own query
        o = overview.overview(utcnow())
        assert (o.plans, o.mrr) == overview.plan_figures()
        assert [(p.code, p.subscribers) for p in o.plans] == [
            ("enterprise-annual", 1),
            ("pro", 2),
        ]
        db.session.remove()
    auth.login(make_user(admin=True))
    page = words(client.get("/admin/"))
    # pro: 2 x 29.99 = 59.98; enterprise-annual: 999.99 / 12 = 83.3325 -> 83.33; all: 143.31
    assert "pro2$59.98" in page
    assert "enterprise-annual1$83.33" in page
    assert "All plans (USD)$143.31" in page

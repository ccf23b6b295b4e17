"""The Subscription page: current plan, quota meters, plans side by side; choosing a plan
swaps in the preview (htmx) or shows it on the page (no JavaScript); confirming is one POST
with the CSRF token; cancel and undo; the usage mode lists the prices."""

from __future__ import annotations

import html
import re
from decimal import Decimal

from sqlalchemy import select

from portal.extensions import db
from portal.models import Subscription, User
from portal.money import Money
from portal.services.metering import deployments
from portal.services.wallet import credits


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def funded(app, user, amount="500.00"):
    with app.app_context():
        credits.grant_credit(
            user=db.session.get(User, user.id),
            amount=Money.from_decimal(amount, "USD"),
            reason="test",
            idempotency_key=f"fund:{user.id}",
        )
        db.session.commit()
        db.session.remove()


def plan_of(app, user):
    with app.app_context():
        sub = db.session.scalar(select(Subscription).where(Subscription.user_id == user.id))
        code = sub.plan_version.code if sub else None
        db.session.remove()
        return code


def test_the_page_compares_plans_and_the_preview_swaps_in(app, client, auth, make_user, with_plans):
    user = make_user()
    auth.login(user)
    page = text(client.get("/subscription/"))
    assert "You have no plan" in page
    for name in ("Free Tier", "Professional", "Enterprise"):
        assert f">{name}</th>" in page
    assert 'hx-get="/subscription/preview"' in page and 'id="plan-preview"' in page

    fragment = client.htmx_get("/subscription/preview?plan_id=pro", target="plan-preview")
    assert fragment.status_code == 200
    body = text(fragment)
    assert body.lstrip().startswith('<section id="plan-preview"')
    assert "<html" not in body and "Subscribe to Professional" in body
    assert "Due now" in body and "$29.99" in body  # the renewal amount
    assert "HX-Request" in fragment.headers["Vary"]

    # without JavaScript the same preview is a page of its own
    whole = text(client.get("/subscription/preview?plan_id=pro"))
    assert "<html" in whole and "Subscribe to Professional" in whole


def test_confirming_subscribes_and_upgrading_shows_the_proration(
    app, client, auth, make_user, with_plans
):
    user = make_user()
    funded(app, user)
    auth.login(user)
    client.get("/subscription/")
    answer = client.submit("/subscription/change", {"plan_id": "pro"})
    assert answer.status_code == 303
    page = text(client.get("/subscription/"))
    assert "You are on Professional now." in page
    assert "Professional · $29.99 a month" in page
    assert 'id="quota-cpu"' in page and "alert at 80%" in page

    preview = text(
        client.htmx_get("/subscription/preview?plan_id=enterprise", target="plan-preview")
    )
    assert "Upgrade from Professional to Enterprise" in preview
    assert "Unused time on Professional" in preview and "Remaining time on Enterprise" in preview
    credit, charge, due = (
        re.search(r"Unused time on Professional</td><td class=\"num\">−\$([0-9.]+)", preview).group(
            1
        ),
        re.search(r"Remaining time on Enterprise</td><td class=\"num\">\$([0-9.]+)", preview).group(
            1
        ),
        re.search(r'id="due-now">\$([0-9.]+)', preview).group(1),
    )
    assert Decimal(charge) - Decimal(credit) == Decimal(due)
    client.submit("/subscription/change", {"plan_id": "enterprise"})
    assert plan_of(app, user) == "enterprise"


def test_confirming_needs_the_csrf_token(app, client, auth, make_user, with_plans):
    user = make_user()
    funded(app, user)
    auth.login(user)
    client.get("/subscription/")
    refused = client.post("/subscription/change", data={"plan_id": "pro"})
    assert refused.status_code == 400
    assert plan_of(app, user) is None


def test_a_bad_choice_is_shown_on_the_page(app, client, auth, make_user, with_plans):
    user = make_user()
    auth.login(user)
    client.get("/subscription/")
    answer = client.submit("/subscription/change", {"plan_id": "platinum"})
    assert answer.status_code == 422
    assert "This plan is not a plan on offer." in text(answer)
    fragment = client.htmx_get("/subscription/preview?plan_id=platinum", target="plan-preview")
    assert fragment.status_code == 422 and "This plan is not a plan on offer." in text(fragment)


def test_downgrade_refused_over_quota_then_cancel_and_undo(
    app, client, auth, make_user, with_plans
):
    user = make_user()
    funded(app, user)
    auth.login(user)
    client.get("/subscription/")
    client.submit("/subscription/change", {"plan_id": "enterprise"})
    with app.app_context():
        deployments.create_deployment(
            external_id="big-page",
            user=db.session.get(User, user.id),
            kind="vm",
            cpu_cores=10,
            memory_gb=4,
            storage_gb=0,
        )
        db.session.commit()
        db.session.remove()
    refused = text(client.get("/subscription/preview?plan_id=pro"))
    assert "CPU cores 10 running, the plan allows 8" in refused
    assert 'id="confirm-change"' not in refused

    client.submit("/subscription/cancel")
    page = text(client.get("/subscription/"))
    assert "Your plan ends with this period." in page and "the plan is cancelled" in page
    client.submit("/subscription/undo")
    assert "Your plan stays as it is." in text(client.get("/subscription/"))


def test_the_usage_mode_lists_the_prices(app, client, auth, make_user, with_plans):
    with_plans(billing_mode="usage")
    auth.login(make_user())
    page = text(client.get("/subscription/"))
    assert "You pay for what you use" in page and "Choose" not in page

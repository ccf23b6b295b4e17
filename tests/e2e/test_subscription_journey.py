"""Subscribing and upgrading in the browser, against the Stripe stand-in: compare the plans,
choose one and watch the preview swap in (no page load), confirm, pay the rest on the hosted
checkout page, and see the new plan; then the same without JavaScript, where the preview is a
page of its own."""

from __future__ import annotations

import dataclasses
import re

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from portal.extensions import db
from portal.models import Invoice, Subscription
from tests.support.plans import SEED_PLANS

from .test_payments_journey import CARDS, card_on_sandbox, read

pytestmark = pytest.mark.browser


@pytest.fixture
def live_plans(live_payments):
    config = live_payments.app.config
    original = config["BILLING"]
    config["BILLING"] = dataclasses.replace(
        original, billing_mode="hybrid", subscription_plans=SEED_PLANS
    )
    yield live_payments
    config["BILLING"] = original


def log_in(page: Page, email: str, password: str) -> None:
    page.goto("/auth/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1, name="Overview")).to_be_visible()


def plan_held(app, user_id):
    def query():
        sub = db.session.scalar(select(Subscription).where(Subscription.user_id == user_id))
        return (sub.plan_version.code, sub.status) if sub else None

    return read(app, query)


def test_compare_preview_upgrade_and_pay_on_the_hosted_page(
    app, live_plans, open_page, make_user, browser_problems
):
    live = live_plans
    user = make_user(name="Sam Subscriber")
    page = open_page("subscriber")
    log_in(page, user.email, user.password)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Subscription").click()
    expect(page.get_by_role("heading", level=1, name="Subscription")).to_be_visible()
    expect(page.locator("#current-plan")).to_contain_text("You have no plan")
    for name in ("Free Tier", "Professional", "Enterprise"):
        expect(page.locator("table.compare thead")).to_contain_text(name)

    # Choose swaps the preview in: the URL stays, the page is not loaded again.
    page.evaluate("window.__samePage = true")
    page.locator("#choose-pro").click()
    preview = page.locator("#plan-preview")
    expect(preview.get_by_role("heading", name="Subscribe to Professional")).to_be_visible()
    expect(page).to_have_url(f"{live.url}/subscription/")
    assert page.evaluate("window.__samePage") is True
    due = preview.locator("#due-now").inner_text()
    expect(preview.locator("#renewal-amount")).to_have_text("$29.99")

    # Confirm: nothing in the balances, so the hosted checkout page takes the card.
    preview.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text(due.replace("$", "") + " USD", exact=True)).to_be_visible()
    card_on_sandbox(page, live.standin.base_url, CARDS["ok"], "Pay")
    expect(page).to_have_url(f"{live.url}/subscription/")
    expect(page.locator(".flash-success")).to_have_text("Paid: you are on Professional now.")
    expect(page.locator("#plan-name")).to_contain_text("Professional")
    expect(page.locator("#quota-cpu")).to_contain_text("8")
    assert plan_held(app, user.id) == ("pro", "active")

    # Upgrade: the preview credits the unused Pro time and charges Enterprise for the rest.
    page.locator("#choose-enterprise").click()
    expect(
        preview.get_by_role("heading", name="Upgrade from Professional to Enterprise")
    ).to_be_visible()
    expect(preview).to_contain_text("Unused time on Professional")
    expect(preview).to_contain_text("Remaining time on Enterprise")
    preview.get_by_role("button", name="Upgrade now").click()
    card_on_sandbox(page, live.standin.base_url, CARDS["ok"], "Pay")
    expect(page.locator(".flash-success")).to_have_text("Paid: you are on Enterprise now.")
    expect(page.locator("#plan-name")).to_contain_text("Enterprise")
    assert plan_held(app, user.id) == ("enterprise", "active")
    paid = read(
        app,
        lambda: [
            i.status for i in db.session.scalars(select(Invoice).where(Invoice.user_id == user.id))
        ],
    )
    assert paid == ["paid", "paid"]
    browser_problems.assert_none()


def test_the_same_without_javascript(app, live_plans, open_page, make_user, browser_problems):
    live = live_plans
    user = make_user(name="Nora NoScript")
    page = open_page("no-js", java_script_enabled=False)
    log_in(page, user.email, user.password)
    page.goto("/subscription/")
    page.locator("#choose-pro").click()
    expect(page).to_have_url(re.compile(r"/subscription/preview\?plan_id=pro$"))
    expect(page.get_by_role("heading", name="Subscribe to Professional")).to_be_visible()
    page.get_by_role("button", name="Subscribe").click()
    card_on_sandbox(page, live.standin.base_url, CARDS["ok"], "Pay")
    expect(page).to_have_url(f"{live.url}/subscription/")
    expect(page.locator("#plan-name")).to_contain_text("Professional")
    assert plan_held(app, user.id) == ("pro", "active")
    browser_problems.assert_none()

"""A customer whose deployment was suspended for an invoice past its grace opens the Standing
page from the Overview, sees the countdown and what paying restores, presses Pay to restore,
pays on the card processor's page (the Stripe stand-in, its own process) and is back on the
page with the deployment running. At 1280 px with JavaScript on, and on a 390 px phone with
JavaScript off (the page and the button work without it)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from portal.extensions import db
from portal.models import Deployment
from tests.e2e.test_payments_journey import CARDS, card_on_sandbox, log_in, read, shot
from tests.support.standing import overdue_invoice

pytestmark = pytest.mark.browser


def deployment_state(user_id: int) -> str:
    return db.session.scalar(
        select(Deployment.state).where(Deployment.user_id == user_id, Deployment.name == "api")
    )


@pytest.mark.parametrize(
    "width,height,javascript", [(1280, 900, True), (390, 844, False)], ids=["desktop", "phone-nojs"]
)
def test_a_suspended_customer_pays_to_restore(
    app, live_payments, open_page, make_user, browser_problems, width, height, javascript
):
    live = live_payments
    user = make_user(name="Sue Spended")
    overdue_invoice(app, user.id, days_past_due=10)
    assert read(app, lambda: deployment_state(user.id)) == "suspended"

    page: Page = open_page(
        "customer", viewport={"width": width, "height": height}, java_script_enabled=javascript
    )
    log_in(page, user.email)
    expect(page.locator("#overview-standing-text")).to_have_text("Suspended")
    page.locator("#overview-standing-link").click()
    expect(page.get_by_role("heading", level=1, name="Standing")).to_be_visible()
    expect(page).to_have_url(f"{live.url}/standing/")

    item = page.locator("#resources li").first
    expect(item).to_contain_text("api")
    expect(item.locator(".state")).to_have_text("Suspended")
    expect(item.locator(".countdown")).to_have_text(
        re.compile(
            r"^Suspended on \d+ \w{3} \d{4}; removed on \d+ \w{3} \d{4} \(in .+\) unless paid\.$"
        )
    )
    restore = page.get_by_role("region", name="Pay to restore")
    expect(restore.locator("#restore-names")).to_have_text("api")
    expect(restore.locator("#restore-total")).to_have_text("$37.20")
    expect(page.locator("#forecast-text")).to_have_text("No usage in the last 7 days.")
    if javascript:  # the countdowns refresh themselves: the poll swaps the region in place
        live_region = page.locator("#standing-live")
        expect(live_region).to_have_attribute("hx-trigger", "every 60s")
        with page.expect_response(lambda r: r.url.endswith("/standing/")) as polled:
            page.evaluate(
                "htmx.ajax('GET', '/standing/', {target: '#standing-live', swap: 'outerHTML'})"
            )
        assert "<html" not in polled.value.text()
        expect(page.locator("#standing-live")).to_have_count(1)
        expect(page.locator("#resources li .countdown")).to_have_count(1)
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width
    shot(page, f"/tmp/e2e-standing-{width}.png")

    restore.get_by_role("button", name="Pay $37.20 to restore").click()
    card_on_sandbox(page, live.standin.base_url, CARDS["ok"], "Pay 37.20 USD")

    expect(page).to_have_url(f"{live.url}/standing/")
    expect(page.locator(".flash-success")).to_have_text(
        "Thank you: your card paid $37.20. Running again: api."
    )
    expect(page.locator("#resources li").first.locator(".state")).to_have_text("Running")
    expect(page.get_by_role("region", name="Pay to restore")).to_have_count(0)
    expect(page.locator("#standing-status")).to_have_text(re.compile("Good standing|At risk"))
    shot(page, f"/tmp/e2e-standing-restored-{width}.png")
    assert read(app, lambda: deployment_state(user.id)) == "active"
    live.wait_for_webhooks()
    browser_problems.assert_none()

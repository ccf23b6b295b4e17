"""A customer who owes money logs in and lands on the Overview: the amount due with its Pay
button, the next invoice, balances, standing, what needs action, recent activity; at 1280 px
and on a 390 px phone (no sideways scrolling), with JavaScript on."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from portal.extensions import db
from portal.models import Invoice
from tests.support.app import PASSWORD
from tests.support.invoices import OCT, SEP, issue_invoices

pytestmark = pytest.mark.browser

SHOT = "/tmp/e2e-overview-{width}.png"


def log_in(page: Page, email: str) -> None:
    page.goto("/auth/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


@pytest.mark.parametrize("width,height", [(1280, 900), (390, 844)])
def test_a_customer_lands_on_the_overview_and_pays(
    app, live_server, open_page, make_user, browser_problems, width, height
):
    user = make_user(name="Olive Owing")
    sep, oct_ = issue_invoices(live_server.app, user.id, periods=(SEP, OCT))
    with live_server.app.app_context():
        db.session.get(Invoice, sep).status = "overdue"
        numbers = {i: db.session.get(Invoice, i).number for i in (sep, oct_)}
        db.session.commit()
        db.session.remove()

    page = open_page("customer", viewport={"width": width, "height": height})
    log_in(page, user.email)
    expect(page).to_have_url(re.compile(r"/overview/$"))
    expect(page.get_by_role("heading", level=1, name="Overview")).to_be_visible()
    expect(page.locator("#overview-due-amount")).to_have_text("$73.20")
    expect(page.locator("#overview-standing-text")).to_have_text("Past due")
    actions = page.get_by_role("region", name="Needs your attention")
    expect(actions.get_by_text(f"Invoice {numbers[sep]} is past due since")).to_be_visible()
    expect(page.locator("#overview-next-date")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d$"))
    expect(page.get_by_role("region", name="Balances")).to_be_visible()
    expect(page.get_by_role("region", name="Recent invoices").get_by_role("link")).to_have_count(3)
    # Nothing wider than the screen: no sideways scrolling on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.screenshot(path=SHOT.format(width=width), full_page=True)

    # Pay: Pay now for that invoice. Nothing can pay it here, and the invoice page says so.
    page.get_by_role("button", name="Pay $36.00").click()
    expect(page).to_have_url(re.compile(rf"/invoices/{sep}$"))
    expect(page.locator(".flash-error")).to_contain_text("Nothing could pay this invoice")
    browser_problems.assert_none()

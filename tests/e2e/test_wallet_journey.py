"""A visitor registers (and sets a password from the mailed link) and watches the Wallet
page; an admin grants a credit; the open page shows it without a reload. And the same forms
work with JavaScript turned off."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from portal.extensions import db
from portal.models import OutboundEmail
from tests.support.app import PASSWORD

pytestmark = pytest.mark.browser

REASON = "Goodwill credit for the 3 May outage"
WALLET_SHOT = "/tmp/e2e-wallet.png"
ADMIN_USER_SHOT = "/tmp/e2e-admin-user.png"


def log_in(page: Page, email: str, password: str = PASSWORD) -> None:
    page.goto("/auth/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/overview/$"))  # where users land
    expect(page.get_by_role("heading", level=1, name="Overview")).to_be_visible()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Wallet").click()
    expect(page).to_have_url(re.compile(r"/wallet/$"))
    expect(page.get_by_role("heading", level=1, name="Wallet")).to_be_visible()


def grant_credit(page: Page, email: str, amount: str, reason: str) -> None:
    """Admin > Users > the user > Grant a credit, clicking through as a person would."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", level=1, name="Admin")).to_be_visible()
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Users").click()
    expect(page.get_by_role("heading", level=1, name="Users")).to_be_visible()
    page.get_by_role("link", name=email).click()
    expect(page.get_by_text(email, exact=False).first).to_be_visible()
    page.get_by_label("Amount").fill(amount)
    page.get_by_label("Reason").fill(reason)
    page.get_by_role("button", name="Grant credit").click()
    expect(page.locator(".flash-success")).to_have_text(f"Granted ${amount} of credit to {email}.")
    expect(page).to_have_url(re.compile(r"/admin/users/\d+$"))
    expect(page.locator("#admin-credit-balance")).to_have_text(f"${amount}")


def mailed_link(app, email: str) -> str:
    """The set-password link mailed to ``email`` (the outbox: no SMTP server in tests)."""
    with app.app_context(), db.engine.connect() as conn:
        body = conn.execute(
            select(OutboundEmail.body_text).where(OutboundEmail.to_addr == email)
        ).scalar_one()
    return re.search(r"https?://\S+/auth/reset/\S+", body).group(0)


def history_row(page: Page, text: str):
    return page.locator("#wallet-panel table.history tbody tr").filter(has_text=text)


def test_open_wallet_page_shows_a_new_credit_without_reload(
    app, live_server, open_page, make_user, browser_problems
):
    visitor = open_page("visitor")
    visitor.goto("/")
    visitor.get_by_role("link", name="Create an account").click()
    expect(visitor.get_by_role("heading", level=1, name="Create an account")).to_be_visible()
    visitor.get_by_label("Name").fill("Vera Visitor")
    visitor.get_by_label("Email").fill("vera@example.com")
    visitor.get_by_role("button", name="Create account").click()
    expect(visitor).to_have_url(f"{live_server.url}/auth/login")
    expect(visitor.locator(".flash-info")).to_contain_text(
        "We have sent a message to vera@example.com"
    )

    # The link in the mail sets the password and logs in.
    link = mailed_link(live_server.app, "vera@example.com")
    assert link.startswith(f"{live_server.url}/auth/reset/")
    visitor.goto(link)
    visitor.get_by_label("New password", exact=True).fill(PASSWORD)
    visitor.get_by_label("Repeat new password").fill(PASSWORD)
    visitor.get_by_role("button", name="Set password").click()

    expect(visitor).to_have_url(f"{live_server.url}/overview/")
    expect(visitor.locator(".flash-success")).to_have_text("Your password is set.")
    visitor.get_by_role("navigation", name="Main").get_by_role("link", name="Wallet").click()
    expect(visitor).to_have_url(f"{live_server.url}/wallet/")
    expect(visitor.get_by_role("heading", level=1, name="Wallet")).to_be_visible()
    expect(visitor.locator("#balance-credit .amount")).to_have_text("$0.00")
    expect(visitor.locator("#balance-cash .amount")).to_have_text("$0.00")
    expect(visitor.get_by_text("No money has moved yet.")).to_be_visible()
    # Marks this document: a reload or a full navigation would lose it.
    visitor.evaluate("window.__sameDocument = 'yes'")
    polls = []
    visitor.on(
        "request",
        lambda r: (
            polls.append(r.url)
            if r.url.endswith("/wallet/") and r.headers.get("hx-target") == "wallet-panel"
            else None
        ),
    )

    admin = make_user(admin=True, name="Ada Admin")
    admin_page = open_page("admin")
    log_in(admin_page, admin.email)
    grant_credit(admin_page, "vera@example.com", "50.00", REASON)
    admin_page.screenshot(path=ADMIN_USER_SHOT, full_page=True)

    # The panel polls every second (WALLET_POLL_SECONDS); allow for a slow machine.
    expect(visitor.locator("#balance-credit .amount")).to_have_text("$50.00", timeout=15_000)
    row = history_row(visitor, REASON)
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(1)).to_have_text("Credit")
    expect(row.locator("td").nth(3)).to_have_text("$50.00")
    expect(visitor.locator("#balance-cash .amount")).to_have_text("$0.00")
    assert visitor.evaluate("window.__sameDocument") == "yes"
    assert polls, "the wallet panel never polled for its fragment"
    expect(visitor).to_have_url(f"{live_server.url}/wallet/")
    visitor.screenshot(path=WALLET_SHOT, full_page=True)

    browser_problems.assert_none()


def test_login_and_grant_work_without_javascript(
    app, live_server, open_page, make_user, browser_problems
):
    user = make_user(name="Nora NoScript")
    admin = make_user(admin=True, name="Ada Admin")

    admin_page = open_page("admin (no JS)", java_script_enabled=False)
    log_in(admin_page, admin.email)
    grant_credit(admin_page, user.email, "50.00", REASON)

    user_page = open_page("user (no JS)", java_script_enabled=False)
    log_in(user_page, user.email)
    expect(user_page.locator("#balance-credit .amount")).to_have_text("$50.00")
    row = history_row(user_page, REASON)
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(3)).to_have_text("$50.00")

    browser_problems.assert_none()

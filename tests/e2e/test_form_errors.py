"""Every form's error path in the browser, with JavaScript on (htmx swaps the refused form in
place: the same document, the error shown, an old success message gone, the focus on the
first error) and off (the browser shows the 4xx page with the form and its errors)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from portal.extensions import db
from portal.money import Money
from portal.services.wallet import vouchers
from tests.support.app import PASSWORD
from tests.support.invoices import SEP, issue_invoices
from tests.support.payments import running_deployment, saved_card

pytestmark = pytest.mark.browser

# The first error on the page: a field the server marked invalid, an error message or an
# error page's message.
FIRST_ERROR = '[aria-invalid="true"], .flash-error, .error-page-message'


@pytest.fixture(params=[True, False], ids=["js", "no-js"])
def js(request) -> bool:
    return request.param


def in_app(app, fn: Callable, *args):
    with app.app_context():
        try:
            result = fn(*args)
            db.session.commit()
            return result
        finally:
            db.session.remove()


def log_in(page: Page, email: str, password: str = PASSWORD) -> None:
    page.goto("/auth/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).not_to_have_url(re.compile(r"/auth/login"))


def user_page(open_page, js: bool, email: str, path: str) -> Page:
    page = open_page("js" if js else "no-js", java_script_enabled=js)
    log_in(page, email)
    page.goto(path)
    if js:  # a full load or a reload would lose this mark; an htmx swap keeps it
        page.evaluate("window.__sameDocument = 'yes'")
    return page


def shows_error(page: Page, js: bool, text: str) -> None:
    """``text`` is visible, the focus is on the first error, and with JavaScript the page
    was swapped by htmx rather than loaded again."""
    expect(page.get_by_text(text, exact=False).first).to_be_visible()
    expect(page.locator(FIRST_ERROR).first).to_be_focused()
    if js:
        assert page.evaluate("window.__sameDocument") == "yes"


# -- the user's forms --------------------------------------------------------------------------


def test_redeem_a_voucher(app, live_server, open_page, make_user, browser_problems, js):
    user = make_user()

    def make():
        [voucher] = vouchers.create_vouchers(value=Money(500, "USD"), note="e2e")
        return voucher.code

    code = in_app(live_server.app, make)
    page = user_page(open_page, js, user.email, "/wallet/")
    page.get_by_label("Voucher code").fill(code)
    page.get_by_role("button", name="Redeem").click()
    expect(page.locator(".flash-success")).to_have_text("$5.00 added to your voucher balance.")
    if js:
        page.evaluate("window.__sameDocument = 'yes'")

    page.get_by_label("Voucher code").fill("ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ")
    page.get_by_role("button", name="Redeem").click()
    shows_error(page, js, "No voucher has this code")
    expect(page.locator(".flash-success")).to_have_count(0)  # the old success is gone
    expect(page.get_by_label("Voucher code")).to_be_focused()
    if js:  # the address stays the page's: a reload shows the Wallet, not a 405
        expect(page).to_have_url(re.compile(r"/wallet/$"))
    browser_problems.assert_none(allow=(404, 422))


def test_ask_for_a_voucher(app, live_server, open_page, make_user, browser_problems, js):
    page = user_page(open_page, js, make_user().email, "/wallet/")
    form = page.locator("form", has=page.get_by_role("button", name="Send the request"))
    form.get_by_label("Amount").fill("1e3")
    form.get_by_label("Why you need it").fill("A workshop")
    page.get_by_role("button", name="Send the request").click()
    shows_error(page, js, "digits 0-9")
    expect(form.get_by_label("Amount")).to_be_focused()
    browser_problems.assert_none(allow=(422,))


def test_set_a_budget_cap(app, live_server, open_page, make_user, browser_problems, js):
    page = user_page(open_page, js, make_user().email, "/account/budget")
    page.get_by_label("Monthly cap").fill("12.345")
    page.get_by_label("Suspend my deployments").check()
    page.get_by_role("button", name="Save budget").click()
    shows_error(page, js, "The cap has more than 2 decimal places for USD.")
    expect(page.get_by_label("Monthly cap")).to_be_focused()
    if js:  # the address stays the page's
        expect(page).to_have_url(re.compile(r"/account/budget$"))
    page.get_by_label("Monthly cap").fill("12.34")
    page.get_by_role("button", name="Save budget").click()
    expect(page.locator(".flash-success")).to_have_text("Budget saved.")
    expect(page.get_by_label("Monthly cap")).to_have_value("12.34")
    expect(page.get_by_label("Suspend my deployments")).to_be_checked()
    browser_problems.assert_none(allow=(422,))


def test_remove_the_last_card(app, live_payments, open_page, make_user, browser_problems, js):
    user = make_user()
    card_id = in_app(live_payments.app, saved_card, user.id)
    in_app(live_payments.app, running_deployment, user.id)
    page = user_page(open_page, js, user.email, "/payment-methods/")
    page.get_by_role("button", name="Remove Visa •••• 4242").click()
    expect(page.get_by_role("heading", name="Remove Visa •••• 4242?")).to_be_visible()
    page.get_by_role("button", name="Remove Visa •••• 4242").click()  # are you sure? yes
    shows_error(page, js, "This is your last card and you have active deployments")
    expect(page.locator(".flash-error")).to_be_focused()
    expect(page.locator(f"#card-{card_id}")).to_be_visible()
    browser_problems.assert_none(allow=(409,))


def test_login_rate_limit(app, live_server, open_page, make_user, browser_problems, js):
    user = make_user()
    config = live_server.app.config
    saved = config["LOGIN_RATE_LIMIT"]
    config["LOGIN_RATE_LIMIT"] = "2 per minute"
    try:
        page = open_page("visitor", java_script_enabled=js)
        page.goto("/auth/login")
        if js:
            page.evaluate("window.__sameDocument = 'yes'")
        for _ in range(2):
            page.get_by_label("Email").fill(user.email)
            page.get_by_label("Password").fill("not the password")
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_text("Email or password is incorrect.")).to_be_visible()
            expect(page.get_by_label("Password")).to_be_focused()
        page.get_by_label("Email").fill(user.email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", level=1, name="Too many attempts")).to_be_visible()
        shows_error(page, js, "You tried too often (2 per 1 minute). Wait a minute, then try")
    finally:
        config["LOGIN_RATE_LIMIT"] = saved
    browser_problems.assert_none(allow=(401, 422, 429))


# -- the admin's forms -------------------------------------------------------------------------


def admin_page(open_page, make_user, js: bool, path: str) -> Page:
    return user_page(open_page, js, make_user(admin=True).email, path)


def test_grant_credit(app, live_server, open_page, make_user, browser_problems, js):
    user = make_user()
    page = admin_page(open_page, make_user, js, f"/admin/users/{user.id}")
    page.get_by_label("Amount").fill("12.345")
    page.get_by_label("Reason").fill("Goodwill")
    page.get_by_role("button", name="Grant credit").click()
    shows_error(page, js, "decimal places")
    expect(page.get_by_label("Amount")).to_be_focused()
    expect(page.locator("#admin-credit-balance")).to_have_text("$0.00")
    browser_problems.assert_none(allow=(422,))


def test_manual_invoice(app, live_server, open_page, make_user, browser_problems, js):
    page = admin_page(open_page, make_user, js, "/admin/invoices")
    form = page.locator("form", has=page.get_by_role("button", name="Generate invoice"))
    form.get_by_label("User email").fill("nobody@example.com")
    form.get_by_label("Billing period (YYYY-MM)").fill("2026-09")
    page.get_by_role("button", name="Generate invoice").click()
    expect(page.locator(".field.has-error").first).to_be_visible()
    expect(page.locator(FIRST_ERROR).first).to_be_focused()
    if js:
        assert page.evaluate("window.__sameDocument") == "yes"
    browser_problems.assert_none(allow=(422,))


@pytest.fixture
def open_invoice(app, live_server, make_user) -> int:
    (invoice_id,) = issue_invoices(live_server.app, make_user().id, periods=(SEP,))
    return invoice_id


def test_offline_payment(
    app, live_server, open_page, make_user, browser_problems, js, open_invoice
):
    page = admin_page(open_page, make_user, js, f"/admin/invoices/{open_invoice}")
    form = page.locator("form", has=page.get_by_role("button", name="Record payment"))
    form.get_by_label("Amount").fill("999.00")
    form.get_by_label("Reference").fill("wire 7")
    page.get_by_role("button", name="Record payment").click()
    expect(page.locator(".field.has-error").first).to_be_visible()
    expect(form.get_by_label("Amount")).to_be_focused()
    if js:
        assert page.evaluate("window.__sameDocument") == "yes"
    expect(page.locator("#invoice-status")).to_have_text("Open")
    browser_problems.assert_none(allow=(422,))


def test_void(app, live_server, open_page, make_user, browser_problems, js, open_invoice):
    page = admin_page(open_page, make_user, js, f"/admin/invoices/{open_invoice}")
    page.get_by_role("button", name="Void invoice").click()
    expect(page.get_by_role("heading", name="Void invoice")).to_be_visible()
    page.get_by_role("button", name="Void invoice").click()  # are you sure? yes, no reason
    shows_error(page, js, "This field is required.")
    expect(page.get_by_label("Reason")).to_be_focused()
    expect(page.locator("#invoice-status")).to_have_text("Open")
    browser_problems.assert_none(allow=(422,))


def test_create_vouchers(app, live_server, open_page, make_user, browser_problems, js):
    page = admin_page(open_page, make_user, js, "/admin/vouchers")
    page.get_by_label("Value").fill("-5")
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator(".field.has-error").first).to_be_visible()
    expect(page.get_by_label("Value")).to_be_focused()
    if js:
        assert page.evaluate("window.__sameDocument") == "yes"
    browser_problems.assert_none(allow=(422,))


def test_prices(app, live_server, open_page, make_user, browser_problems, js):
    page = admin_page(open_page, make_user, js, "/admin/prices")
    page.get_by_label("CPU per core-hour").fill("abc")
    page.get_by_role("button", name="Create price version").click()
    expect(page.locator(".field.has-error").first).to_be_visible()
    expect(page.locator(FIRST_ERROR).first).to_be_focused()
    if js:
        assert page.evaluate("window.__sameDocument") == "yes"
    browser_problems.assert_none(allow=(422,))

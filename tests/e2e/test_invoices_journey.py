"""A customer lists their invoices, filters them by status (only the table is swapped, the
page is not reloaded), opens one and downloads its PDF."""

from __future__ import annotations

import hashlib
import re

import pytest
from playwright.sync_api import Page, expect

from portal.extensions import db
from portal.models import Invoice
from tests.support.app import PASSWORD
from tests.support.invoices import OCT_TOTAL, SEP_TOTAL, issue_invoices, pay_offline

pytestmark = pytest.mark.browser

INVOICES_SHOT = "/tmp/e2e-invoices.png"
INVOICE_SHOT = "/tmp/e2e-invoice.png"


def log_in(page: Page, email: str, password: str = PASSWORD) -> None:
    page.goto("/auth/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1, name="Overview")).to_be_visible()


def stored(app, invoice_id: int) -> tuple[str, str]:
    with app.app_context():
        try:
            invoice = db.session.get(Invoice, invoice_id)
            return invoice.number, invoice.pdf_sha256
        finally:
            db.session.remove()


def test_a_customer_filters_opens_and_downloads_an_invoice(
    app, live_server, open_page, make_user, browser_problems
):
    user = make_user(name="Cleo Customer")
    sep, oct_ = issue_invoices(app, user.id)
    pay_offline(app, sep, reference="BANK-0042")
    (sep_number, sep_sha), (oct_number, _) = stored(app, sep), stored(app, oct_)

    page = open_page("customer")
    log_in(page, user.email)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Invoices").click()
    expect(page.get_by_role("heading", level=1, name="Invoices")).to_be_visible()
    table_rows = page.locator("#invoice-table tbody tr")
    expect(table_rows).to_have_count(2)
    expect(table_rows.nth(0)).to_contain_text(oct_number)
    expect(table_rows.nth(0)).to_contain_text("Open")
    expect(table_rows.nth(1)).to_contain_text(sep_number)
    expect(table_rows.nth(1)).to_contain_text(SEP_TOTAL)
    page.screenshot(path=INVOICES_SHOT, full_page=True)

    # Filtering swaps the table alone: the document stays, the address follows.
    page.evaluate("window.__sameDocument = 'yes'")
    swaps = []
    page.on(
        "request",
        lambda r: swaps.append(r.url) if r.headers.get("hx-target") == "invoice-table" else None,
    )
    page.get_by_label("Status").select_option("paid")
    expect(page).to_have_url(re.compile(r"/invoices/\?status=paid$"))
    expect(table_rows).to_have_count(1)
    expect(table_rows.first).to_contain_text(sep_number)
    expect(page.get_by_role("heading", level=2, name="Paid invoices")).to_be_visible()
    page.get_by_label("Status").select_option("sent")
    expect(table_rows).to_have_count(1)
    expect(table_rows.first).to_contain_text(oct_number)
    expect(table_rows.first).to_contain_text(OCT_TOTAL)
    page.get_by_label("Status").select_option("overdue")
    expect(page.locator("#invoice-table")).to_contain_text("No overdue invoices.")
    assert page.evaluate("window.__sameDocument") == "yes"
    assert len(swaps) == 3, swaps

    # Back to all of them, then open September's.
    page.get_by_label("Status").select_option("")
    expect(table_rows).to_have_count(2)
    page.get_by_role("link", name=sep_number).click()
    expect(page.get_by_role("heading", level=1, name=f"Invoice {sep_number}")).to_be_visible()
    expect(page.locator("#invoice-status")).to_have_text("Paid")
    expect(page.locator("#invoice-period")).to_have_text("2026-09-01 – 2026-09-30")
    expect(page.locator("#line-1")).to_contain_text("720 core-hours")
    expect(page.locator("#invoice-subtotal")).to_have_text(SEP_TOTAL)
    expect(page.locator(".invoice-payments tbody tr")).to_contain_text("BANK-0042")
    expect(page.locator("#invoice-due .amount")).to_have_text("$0.00")
    page.screenshot(path=INVOICE_SHOT, full_page=True)

    with page.expect_download() as info:
        page.get_by_role("link", name="Download PDF").click()
    download = info.value
    assert download.suggested_filename == f"{sep_number}.pdf"
    with open(download.path(), "rb") as fh:
        content = fh.read()
    assert content.startswith(b"%PDF")
    assert hashlib.sha256(content).hexdigest() == sep_sha

    browser_problems.assert_none()


def test_the_filter_works_without_javascript(
    app, live_server, open_page, make_user, browser_problems
):
    user = make_user()
    sep, oct_ = issue_invoices(app, user.id)
    pay_offline(app, sep)
    sep_number, _ = stored(app, sep)

    page = open_page("customer (no JS)", java_script_enabled=False)
    log_in(page, user.email)
    page.goto("/invoices/")
    expect(page.locator("#invoice-table tbody tr")).to_have_count(2)
    page.get_by_label("Status").select_option("paid")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"/invoices/\?status=paid$"))
    expect(page.locator("#invoice-table tbody tr")).to_have_count(1)
    page.get_by_role("link", name=sep_number).click()
    expect(page.get_by_role("heading", level=1, name=f"Invoice {sep_number}")).to_be_visible()

    browser_problems.assert_none()

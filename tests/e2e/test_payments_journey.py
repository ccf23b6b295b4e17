"""Card payments in the browser, against the Stripe stand-in running as its own process: the
card number is typed on the stand-in's page (never on the portal's), 3-D Secure is a step on
it, and the events it signs reach the portal's webhook endpoint over HTTP.

1. A customer adds a card, redeems a voucher and pays an invoice with "Pay now": the
   voucher pays part, the card the rest.
2. A 3-D Secure card is saved; its off-session charge needs the customer, who presses
   "Complete payment" on the invoice and confirms on the bank's page.
3. A top-up on the checkout page with a 3-D Secure card lands in the prepaid balance once
   and pays the open invoice.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect
from redis import Redis
from rq import Queue, SimpleWorker
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import (
    Invoice,
    InvoicePayment,
    OutboundEmail,
    PaymentAttempt,
    PaymentMethod,
    WebhookEvent,
)
from portal.money import Money
from portal.services.wallet import vouchers
from tests.support.app import PASSWORD
from tests.support.invoices import OCT, OCT_TOTAL, issue_invoices

pytestmark = pytest.mark.browser

CARDS = {"ok": "4242 4242 4242 4242", "three_d_secure": "4000 0027 6000 3184"}
CARDS_SHOT = "/tmp/e2e-payment-methods.png"
PAID_SHOT = "/tmp/e2e-invoice-paid.png"
TOPUP_SHOT = "/tmp/e2e-topup.png"


# -- helpers ----------------------------------------------------------------------------------
def log_in(page: Page, email: str, password: str = PASSWORD) -> None:
    page.goto("/auth/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1, name="Overview")).to_be_visible()


def go_to(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", level=1, name=name)).to_be_visible()


def read(app, query: Callable):
    """``query()`` in an app context of its own (the database as the portal sees it now)."""
    with app.app_context():
        try:
            return query()
        finally:
            db.session.remove()


def unprocessed_events() -> list[tuple[str, str | None]]:
    """Inbox rows not processed, with their errors (in an app context)."""
    return [
        (row.type, row.error)
        for row in db.session.scalars(
            select(WebhookEvent).where(WebhookEvent.processed_at.is_(None))
        )
    ]


def add_voucher(app, dollars: str) -> str:
    def make():
        [voucher] = vouchers.create_vouchers(
            value=Money.from_decimal(dollars, "USD"), note="browser journey"
        )
        db.session.commit()
        return voucher.code

    return read(app, make)


def invoice_number(app, invoice_id: int) -> str:
    return read(app, lambda: db.session.get(Invoice, invoice_id).number)


def card_on_sandbox(page: Page, standin_url: str, number: str, button: str) -> None:
    """On the card processor's page (the stand-in's origin, not the portal's): type the card
    number (expiry and CVC come filled in) and submit."""
    expect(page).to_have_url(re.compile("^" + re.escape(standin_url) + "/"))
    expect(page.get_by_text("4242 4242 4242 4242 succeeds")).to_be_visible()  # the test cards
    page.get_by_label("Card number").fill(number)
    page.get_by_role("button", name=button).click()


def authenticate_on_sandbox(page: Page, standin_url: str, what: str) -> None:
    """The bank's 3-D Secure step on the stand-in: confirm."""
    expect(page).to_have_url(re.compile("^" + re.escape(standin_url) + "/sandbox/authenticate/"))
    expect(page.get_by_role("heading", level=1, name="3-D Secure authentication")).to_be_visible()
    expect(page.get_by_text(f"Your bank asks you to confirm {what}.")).to_be_visible()
    page.get_by_role("button", name="Complete authentication").click()


def add_card_on_page(page: Page, live, number: str, *, three_d_secure: bool = False) -> None:
    go_to(page, "Payment methods")
    page.get_by_role("button", name="Add a card").click()
    expect(page.get_by_role("heading", level=1, name="Save a card")).to_be_visible()
    card_on_sandbox(page, live.standin.base_url, number, "Save card")
    if three_d_secure:
        authenticate_on_sandbox(page, live.standin.base_url, "saving this card")
    expect(page).to_have_url(f"{live.url}/payment-methods/")


def shot(page: Page, path: str) -> None:
    """A full-page screenshot that leaves the page as it was: hiding the caret (Playwright's
    default) leaves ``style=""`` on inputs, which htmx then copies while swapping the next
    page in, and the CSP refuses."""
    page.screenshot(path=path, full_page=True, caret="initial")


def cell(row, n: int):
    return row.locator("td").nth(n)


@pytest.fixture
def queued_jobs(live_payments, redis_url):
    """The live server enqueues its jobs in Redis for a worker (RQ_ASYNC on, as in
    production) instead of running them after each commit. Yields ``run_worker()``: an
    in-process worker that runs what waits on the settlement queue, each job in an app
    context of its own (as jobs.worker does), and returns the failed jobs' count."""
    app = live_payments.app
    app.config["RQ_ASYNC"] = True
    connection = Redis.from_url(redis_url)

    class Worker(SimpleWorker):
        def perform_job(self, job, queue):
            with app.app_context():
                try:
                    return super().perform_job(job, queue)
                finally:
                    db.session.remove()

    def run_worker() -> int:
        queue = Queue("settlement", connection=connection)
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            Worker([queue], connection=connection).work(burst=True)
        finally:  # the worker installs its own; give pytest back Ctrl+C
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return queue.failed_job_registry.count

    yield run_worker
    app.config["RQ_ASYNC"] = False
    connection.close()


# -- 1. card, voucher, Pay now ----------------------------------------------------------------
def test_a_customer_adds_a_card_redeems_a_voucher_and_pays_an_invoice(
    app, live_payments, queued_jobs, open_page, make_user, browser_problems
):
    """October's invoice ($37.20) is open. The customer redeems a $10.00 voucher, which pays
    $10.00 of it at once (the message says so); the Payment methods page says what a card
    would pay, and the card, once saved, pays the $27.20 left at once (the message says so).
    The settlement jobs each step also asked for wait in the queue (no worker has run yet);
    when the worker catches up (they and the stand-in's webhooks), nothing is paid twice."""
    live = live_payments
    user = make_user(name="Paula Payer")
    [invoice_id] = issue_invoices(app, user.id, periods=(OCT,))
    number = invoice_number(app, invoice_id)
    code = add_voucher(app, "10.00")

    page = open_page("customer")
    log_in(page, user.email)

    # Wallet: redeem the voucher; new money pays the open invoice at once, and says so.
    go_to(page, "Wallet")
    page.get_by_label("Voucher code").fill(code)
    page.get_by_role("button", name="Redeem").click()
    expect(page.locator(".flash-success")).to_have_text(
        f"$10.00 added to your voucher balance. It paid $10.00 of {number}."
    )
    expect(page.locator("#balance-voucher .amount")).to_have_text("$0.00")

    # Payment methods: what a card would pay; add one on the card processor's page.
    go_to(page, "Payment methods")
    expect(page.get_by_text("No saved cards.")).to_be_visible()
    expect(page.locator("#card-would-pay")).to_have_text(
        "Saving this card pays $27.20 of 1 open invoice."
    )
    add_card_on_page(page, live, CARDS["ok"])
    expect(page.locator(".flash-success")).to_have_text(
        f"Visa •••• 4242 is saved. It paid {number} in full ($27.20)."
    )
    cards = page.locator("table.cards tbody tr")
    expect(cards).to_have_count(1)
    expect(cell(cards.first, 0)).to_have_text("Visa •••• 4242")
    expect(cell(cards.first, 1)).to_have_text("12/2034")
    expect(cell(cards.first, 2)).to_have_text("default")
    expect(cards.first.get_by_role("button", name="Make default")).to_have_count(0)
    expect(page.locator("#last-card-rule")).to_contain_text("Your last card can be removed")
    shot(page, CARDS_SHOT)
    go_to(page, "Wallet")
    topup = page.get_by_role("region", name="Top up your prepaid balance")
    expect(topup.get_by_label("Saved card Visa •••• 4242")).to_be_visible()

    # The invoice: the voucher paid $10.00 and the card the rest.
    go_to(page, "Invoices")
    page.get_by_role("link", name=number).click()
    expect(page.get_by_role("heading", level=1, name=f"Invoice {number}")).to_be_visible()
    expect(page.locator("#invoice-status")).to_have_text("Paid")
    expect(page.locator("#invoice-paid .amount")).to_have_text(OCT_TOTAL)
    expect(page.locator("#invoice-due .amount")).to_have_text("$0.00")
    expect(page.locator("#invoice-pay")).to_have_count(0)
    payments = page.locator(".invoice-payments tbody tr")
    expect(payments).to_have_count(2)
    expect(cell(payments.nth(0), 1)).to_have_text("Voucher balance")
    expect(cell(payments.nth(0), 3)).to_have_text("$10.00")
    expect(cell(payments.nth(1), 1)).to_have_text("Card")
    expect(cell(payments.nth(1), 2)).to_contain_text("Visa •••• 4242 pi_")
    expect(cell(payments.nth(1), 3)).to_have_text("$27.20")
    shot(page, PAID_SHOT)

    go_to(page, "Wallet")
    expect(page.locator("#balance-voucher .amount")).to_have_text("$0.00")
    expect(page.locator("#balance-cash .amount")).to_have_text("$0.00")

    # Everything the stand-in sent about the card and the charge has reached the inbox ...
    delivered = live.wait_for_webhooks()
    assert {"setup_intent.succeeded", "checkout.session.completed", "payment_intent.succeeded"} <= {
        e["type"] for e in delivered
    }
    assert read(
        app,
        lambda: db.session.scalar(
            select(func.count())
            .select_from(WebhookEvent)
            .where(WebhookEvent.processed_at.is_(None))
        ),
    ) == len(delivered)
    # ... and the worker catches up: the queued settlements and the events change nothing.
    assert queued_jobs() == 0
    assert (
        read(
            app,
            lambda: db.session.scalar(
                select(func.count())
                .select_from(WebhookEvent)
                .where(WebhookEvent.processed_at.is_(None))
            ),
        )
        == 0
    )
    assert read(
        app,
        lambda: [
            (p.tender, p.amount_minor)
            for p in db.session.scalars(select(InvoicePayment).order_by(InvoicePayment.id))
        ],
    ) == [("voucher", 1000), ("card", 2720)]
    assert (
        read(app, lambda: db.session.scalar(select(func.count()).select_from(PaymentMethod))) == 1
    )
    page.reload()
    expect(page.locator("#balance-cash .amount")).to_have_text("$0.00")

    browser_problems.assert_none()


# -- 2. 3-D Secure on an invoice: "Complete payment" ------------------------------------------
def test_a_3d_secure_card_pays_an_invoice_after_complete_payment(
    app, live_payments, open_page, make_user, browser_problems
):
    """The card is saved after the bank's check; adding it settles the open invoice, but
    the bank wants the customer for the charge too: an email and a "Complete payment"
    step on the invoice, then the bank's page, then the invoice is paid."""
    live = live_payments
    user = make_user(name="Sam Secure")
    [invoice_id] = issue_invoices(app, user.id, periods=(OCT,))
    number = invoice_number(app, invoice_id)

    page = open_page("customer")
    log_in(page, user.email)
    add_card_on_page(page, live, CARDS["three_d_secure"], three_d_secure=True)
    expect(page.locator(".flash-success")).to_have_text("Visa •••• 3184 is saved.")
    cards = page.locator("table.cards tbody tr")
    expect(cards).to_have_count(1)
    expect(cell(cards.first, 2)).to_have_text("default")

    go_to(page, "Invoices")
    page.get_by_role("link", name=number).click()
    expect(page.locator("#invoice-status")).to_have_text("Open")
    expect(page.locator("#payment-action-needed")).to_have_text(
        f"Your bank asks you to confirm the payment of {OCT_TOTAL} with Visa •••• 3184."
    )
    expect(page.get_by_role("button", name="Pay now")).to_have_count(0)
    subjects = read(
        app,
        lambda: list(
            db.session.scalars(
                select(OutboundEmail.subject).where(
                    OutboundEmail.to_addr == user.email,
                    OutboundEmail.subject.like("Confirm your payment%"),
                )
            )
        ),
    )
    assert subjects == [f"Confirm your payment for invoice {number}"]

    page.get_by_role("button", name="Complete payment").click()
    authenticate_on_sandbox(page, live.standin.base_url, "a payment of 37.20 USD")
    expect(page).to_have_url(f"{live.url}/invoices/{invoice_id}")
    expect(page.locator(".flash-success")).to_have_text("Thank you: the card payment went through.")
    expect(page.locator("#invoice-status")).to_have_text("Paid")
    expect(page.locator("#invoice-due .amount")).to_have_text("$0.00")
    payments = page.locator(".invoice-payments tbody tr")
    expect(payments).to_have_count(1)
    expect(cell(payments.first, 1)).to_have_text("Card")
    expect(cell(payments.first, 2)).to_contain_text("Visa •••• 3184")
    expect(cell(payments.first, 3)).to_have_text(OCT_TOTAL)

    # The stand-in's events (the card set up, the charge that needed the customer, its
    # success) are processed as they arrive: they change nothing.
    delivered = live.wait_for_webhooks()
    assert {
        "setup_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.succeeded",
    } <= {e["type"] for e in delivered}
    assert read(app, unprocessed_events) == []
    page.reload()
    expect(payments).to_have_count(1)
    expect(page.locator("#invoice-paid .amount")).to_have_text(OCT_TOTAL)
    assert read(app, lambda: len(db.session.scalars(select(PaymentAttempt)).all())) == 1

    browser_problems.assert_none()


# -- 3. a top-up on the checkout page with 3-D Secure -----------------------------------------
def test_a_checkout_top_up_with_3d_secure_is_credited_once_and_pays_the_open_invoice(
    app, live_payments, open_page, make_user, browser_problems
):
    """$50.00 on the checkout page with a card whose bank asks for 3-D Secure: back on the
    Wallet, the prepaid balance got it once (the return and the webhooks both report it)
    and the open $37.20 invoice was paid from it."""
    live = live_payments
    user = make_user(name="Tom Topup")
    [invoice_id] = issue_invoices(app, user.id, periods=(OCT,))
    number = invoice_number(app, invoice_id)

    page = open_page("customer")
    log_in(page, user.email)
    go_to(page, "Wallet")
    topup = page.get_by_role("region", name="Top up your prepaid balance")
    topup.get_by_label("Amount").fill("50.00")
    expect(topup.get_by_label("Card on the secure checkout page")).to_be_checked()
    topup.get_by_role("button", name="Top up").click()

    expect(page.get_by_text("50.00 USD", exact=True)).to_be_visible()
    card_on_sandbox(page, live.standin.base_url, CARDS["three_d_secure"], "Pay 50.00 USD")
    authenticate_on_sandbox(page, live.standin.base_url, "a payment of 50.00 USD")

    expect(page).to_have_url(f"{live.url}/wallet/")
    # Which invoice the money paid is said when the return page was first to book it.
    expect(page.locator(".flash-success")).to_have_text(
        re.compile(
            r"^\$50\.00 added to your prepaid balance\.( It paid .* in full \(\$37\.20\)\.)?$"
        )
    )
    # The top-up paid the open invoice ($37.20) from the prepaid balance: $12.80 is left.
    expect(page.locator("#balance-cash .amount")).to_have_text("$12.80")
    history = page.locator("#wallet-panel table.history tbody tr")
    expect(history.filter(has_text="Top-up by card (checkout)")).to_have_count(1)
    expect(history.filter(has_text=number)).to_have_count(1)
    shot(page, TOPUP_SHOT)

    # The stand-in's events (the session completed, the payment succeeded) credit nothing more.
    delivered = live.wait_for_webhooks()
    assert {"checkout.session.completed", "payment_intent.succeeded"} <= {
        e["type"] for e in delivered
    }
    assert read(app, unprocessed_events) == []
    page.reload()
    expect(page.locator("#balance-cash .amount")).to_have_text("$12.80")
    expect(history.filter(has_text="Top-up by card (checkout)")).to_have_count(1)

    go_to(page, "Invoices")
    page.get_by_role("link", name=number).click()
    expect(page.locator("#invoice-status")).to_have_text("Paid")
    payments = page.locator(".invoice-payments tbody tr")
    expect(payments).to_have_count(1)
    expect(cell(payments.first, 1)).to_have_text("Prepaid balance")
    expect(cell(payments.first, 3)).to_have_text(OCT_TOTAL)

    browser_problems.assert_none()


@pytest.mark.parametrize("width,height", [(1280, 900), (390, 844)])
def test_an_invoice_nothing_covers_is_paid_by_card_on_the_checkout_page(
    app, live_payments, open_page, make_user, browser_problems, width, height
):
    """No balance, no card: the invoice offers "Pay $37.20 by card"; the card is typed on
    the stand-in's checkout page (3-D Secure included) and kept; back on the invoice it is
    paid once, the card is saved, and the webhooks that follow book nothing more."""
    live = live_payments
    user = make_user(name="Cass Checkout")
    [invoice_id] = issue_invoices(app, user.id, periods=(OCT,))
    number = invoice_number(app, invoice_id)

    page = open_page("customer", viewport={"width": width, "height": height})
    log_in(page, user.email)
    page.goto(f"/invoices/{invoice_id}")
    expect(page.get_by_role("row", name=re.compile("Not covered"))).to_be_visible()
    page.get_by_label("Save this card for future payments").check()
    shot(page, f"/tmp/e2e-pay-by-card-{width}.png")
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width
    page.get_by_role("button", name=f"Pay {OCT_TOTAL} by card").click()

    card_on_sandbox(page, live.standin.base_url, CARDS["three_d_secure"], "Pay 37.20 USD")
    authenticate_on_sandbox(page, live.standin.base_url, "a payment of 37.20 USD")

    expect(page).to_have_url(f"{live.url}/invoices/{invoice_id}")
    expect(page.locator("#invoice-status")).to_have_text("Paid")
    payments = page.locator(".invoice-payments tbody tr")
    expect(payments).to_have_count(1)
    expect(cell(payments.first, 1)).to_have_text("Card")
    expect(cell(payments.first, 3)).to_have_text(OCT_TOTAL)
    expect(page.get_by_role("button", name=re.compile("by card"))).to_have_count(0)
    shot(page, f"/tmp/e2e-paid-by-card-{width}.png")

    live.wait_for_webhooks()
    assert read(app, unprocessed_events) == []
    page.reload()
    expect(payments).to_have_count(1)
    paid = read(
        app,
        lambda: db.session.scalar(
            select(func.count())
            .select_from(InvoicePayment)
            .where(InvoicePayment.invoice_id == invoice_id)
        ),
    )
    assert paid == 1
    go_to(page, "Payment methods")
    expect(page.get_by_text("Visa •••• 3184")).to_be_visible()
    assert number in read(
        app,
        lambda: db.session.scalar(
            select(OutboundEmail.subject).where(OutboundEmail.subject.like("Receipt:%"))
        ),
    )
    browser_problems.assert_none()

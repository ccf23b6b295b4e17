"""Admin: every user's invoices filtered by user, status and period; voiding, offline
payments and generating an invoice by hand, each a CSRF-protected form that answers 303 and a
flash, or the form again with its errors."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from portal.errors import NotFound
from portal.extensions import db
from portal.models import Invoice, InvoicePayment, LedgerTransaction, User
from portal.money import Money
from portal.services.invoicing import invoices as invoicing
from portal.services.metering import deployments
from portal.services.wallet import ledger
from tests.blueprints.test_invoices_pages import number_of
from tests.support.invoices import OCT, empty_invoices, issue_invoices, pay_offline


def rows(page: str) -> list[str]:
    return re.findall(
        r'<tr id="invoice-\d+">\s*<td><a href="/admin/invoices/\d+">([^<]+)</a>', page
    )


def receivable(app, user_id: int) -> Money:
    with app.app_context():
        try:
            return ledger.balances(db.session.get(User, user_id)).receivable
        finally:
            db.session.remove()


def invoice_row(app, invoice_id: int) -> Invoice:
    with app.app_context():
        try:
            invoice = db.session.get(Invoice, invoice_id)
            db.session.expunge(invoice)
            return invoice
        finally:
            db.session.remove()


def count(app, model) -> int:
    with app.app_context():
        try:
            return db.session.scalar(select(func.count()).select_from(model))
        finally:
            db.session.remove()


@pytest.fixture
def shop(app, make_user, auth):
    """Two customers with September and October invoices; an admin logged in."""
    ann, bob = make_user("ann@example.com"), make_user("bob@example.com")
    ids = {"ann": issue_invoices(app, ann.id), "bob": issue_invoices(app, bob.id, name="api")}
    numbers = {who: [number_of(app, i) for i in ids[who]] for who in ids}
    auth.login(make_user("admin@example.com", admin=True))
    return {"ann": ann, "bob": bob, "ids": ids, "numbers": numbers}


def test_the_list_shows_everyones_invoices_and_filters(client, shop):
    ann, bob = shop["numbers"]["ann"], shop["numbers"]["bob"]
    page = client.get("/admin/invoices").get_data(as_text=True)
    assert sorted(rows(page)) == sorted(ann + bob)
    assert "ann@example.com" in page and "bob@example.com" in page
    assert '<a href="/admin/invoices" aria-current="page">Invoices</a>' in page

    by_user = client.get("/admin/invoices?user=bob@example.com").get_data(as_text=True)
    assert sorted(rows(by_user)) == sorted(bob)
    by_period = client.get("/admin/invoices?period=2026-09").get_data(as_text=True)
    assert sorted(rows(by_period)) == sorted([ann[0], bob[0]])
    both = client.get("/admin/invoices?user=ann@example.com&period=2026-10&status=sent")
    assert rows(both.get_data(as_text=True)) == [ann[1]]
    assert rows(client.get("/admin/invoices?status=paid").get_data(as_text=True)) == []
    assert "No invoices match." in client.get("/admin/invoices?status=void").get_data(as_text=True)


@pytest.mark.parametrize(
    "query, message",
    [
        ("period=October", "The period must look like 2026-11."),
        ("user=nobody@example.com", "No user with the email nobody@example.com."),
        ("status=deleted", "Unknown status &#39;deleted&#39;."),
    ],
)
def test_bad_filters_say_what_is_wrong(client, shop, query, message):
    response = client.get(f"/admin/invoices?{query}")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert message in page and rows(page) == []


def test_the_users_page_links_their_invoices(client, shop):
    page = client.get(f"/admin/users/{shop['ann'].id}").get_data(as_text=True)
    assert '<a href="/admin/invoices?user=ann@example.com">Invoices</a>' in page


def test_the_invoice_page_has_the_void_and_payment_forms(client, shop):
    invoice_id = shop["ids"]["ann"][1]
    page = client.get(f"/admin/invoices/{invoice_id}").get_data(as_text=True)
    assert f"<h1>Invoice {shop['numbers']['ann'][1]}</h1>" in page
    assert "ann@example.com" in page and "$37.20" in page
    # Void asks first: the form leads to a confirmation page, which posts.
    assert f'<form method="get" action="/admin/invoices/{invoice_id}/void"' in page
    for action in ("payments",):
        form = re.search(
            rf'<form method="post" action="/admin/invoices/{invoice_id}/{action}"'
            r'[^>]*>\s*<input[^>]*name="csrf_token"[^>]*value="[^"]+"',
            page,
        )
        assert form, action
    assert client.get("/admin/invoices/999999").status_code == 404


def test_void_needs_a_reason_then_reverses_the_invoice(app, client, shop):
    ann = shop["ann"]
    invoice_id = shop["ids"]["ann"][1]
    before = count(app, LedgerTransaction)
    assert receivable(app, ann.id) == Money(3600 + 3720, "USD")

    empty = client.submit(f"/admin/invoices/{invoice_id}/void", {"reason": "  "})
    assert empty.status_code == 422
    assert 'class="error">This field is required.<' in empty.get_data(as_text=True)
    assert invoice_row(app, invoice_id).status == "open"
    assert count(app, LedgerTransaction) == before

    done = client.submit(f"/admin/invoices/{invoice_id}/void", {"reason": "Wrong prices"})
    assert done.status_code == 303 and done.headers["Location"] == f"/admin/invoices/{invoice_id}"
    page = client.get(done.headers["Location"]).get_data(as_text=True)
    assert f"Voided invoice {shop['numbers']['ann'][1]}." in page
    assert re.search(r'id="invoice-status"[^>]*>Void<', page) and "Wrong prices" in page
    assert "Void this invoice" not in page and "Record an offline payment" not in page
    invoice = invoice_row(app, invoice_id)
    assert (invoice.status, invoice.void_reason) == ("void", "Wrong prices")
    assert receivable(app, ann.id) == Money(3600, "USD")  # September still owed
    assert count(app, LedgerTransaction) == before + 1

    again = client.submit(f"/admin/invoices/{invoice_id}/void", {"reason": "twice"})
    assert again.status_code == 409
    assert "a void invoice cannot become void" in again.get_data(as_text=True)


def test_offline_payment_bad_input_is_422_and_writes_nothing(app, client, shop):
    invoice_id = shop["ids"]["bob"][0]
    before = count(app, LedgerTransaction)
    cases = [
        ({"amount": "10.005", "reference": "x"}, "The amount has more than 2 decimal places"),
        ({"amount": "ten", "reference": "x"}, "The amount is not a number."),
        ({"amount": "36.01", "reference": "x"}, "is more than the amount due ($36.00)"),
        ({"amount": "-1", "reference": "x"}, "must be greater than 0"),
        ({"amount": "5.00", "reference": ""}, "This field is required."),
    ]
    for data, message in cases:
        response = client.submit(f"/admin/invoices/{invoice_id}/payments", data)
        assert response.status_code == 422, data
        assert message in response.get_data(as_text=True), data
    assert count(app, LedgerTransaction) == before and count(app, InvoicePayment) == 0


def test_offline_payments_move_the_ledger_and_pay_the_invoice(app, client, shop):
    bob = shop["bob"]
    invoice_id = shop["ids"]["bob"][0]  # September: $36.00
    first = client.submit(
        f"/admin/invoices/{invoice_id}/payments", {"amount": "10.50", "reference": "BANK-1"}
    )
    assert first.status_code == 303
    page = client.get(first.headers["Location"]).get_data(as_text=True)
    assert f"Recorded a payment of $10.50 on {shop['numbers']['bob'][0]}." in page
    assert re.search(r'id="invoice-due"><h2>Amount due</h2><p class="amount">\$25.50<', page)
    assert receivable(app, bob.id) == Money(3600 + 3720 - 1050, "USD")

    second = client.submit(
        f"/admin/invoices/{invoice_id}/payments", {"amount": "25.50", "reference": "BANK-2"}
    )
    assert second.status_code == 303
    invoice = invoice_row(app, invoice_id)
    assert invoice.status == "paid" and invoice.amount_paid_minor == 3600
    assert receivable(app, bob.id) == Money(3720, "USD")
    page = client.get(f"/admin/invoices/{invoice_id}").get_data(as_text=True)
    assert "BANK-1" in page and "BANK-2" in page and "Record an offline payment" not in page

    # A paid invoice takes no more payments and cannot be voided.
    late = client.submit(
        f"/admin/invoices/{invoice_id}/payments", {"amount": "1.00", "reference": "BANK-3"}
    )
    assert late.status_code == 409 and "takes no payments" in late.get_data(as_text=True)
    void = client.submit(f"/admin/invoices/{invoice_id}/void", {"reason": "no"})
    assert void.status_code == 409
    assert invoice_row(app, invoice_id).status == "paid"


def test_generate_an_invoice_by_hand(app, client, make_user, auth):
    carl = make_user("carl@example.com")
    with app.app_context():
        deployments.create_deployment(
            external_id="c-1",
            user=db.session.get(User, carl.id),
            kind="vm",
            cpu_cores=1,
            memory_gb=0,
            storage_gb=0,
            started_at=OCT[0],
            name="calc",
        )
        db.session.commit()
        db.session.remove()
    auth.login(make_user(admin=True))
    page = client.get("/admin/invoices").get_data(as_text=True)
    assert 'action="/admin/invoices"' in page and "Generate invoice" in page

    made = client.submit("/admin/invoices", {"email": "carl@example.com", "period": "2026-10"})
    assert made.status_code == 303
    invoice_id = int(made.headers["Location"].rsplit("/", 1)[1])
    invoice = invoice_row(app, invoice_id)
    assert (invoice.user_id, invoice.period_start, invoice.period_end) == (carl.id, *OCT)
    assert invoice.total_minor == 3720 and invoice.status == "open"
    shown = client.get(made.headers["Location"]).get_data(as_text=True)
    assert f"Issued invoice {invoice.number} to carl@example.com." in shown

    again = client.submit("/admin/invoices", {"email": "carl@example.com", "period": "2026-10"})
    assert again.status_code == 303 and again.headers["Location"] == made.headers["Location"]
    assert f"carl@example.com already has invoice {invoice.number} for this period." in client.get(
        again.headers["Location"]
    ).get_data(as_text=True)
    assert count(app, Invoice) == 1


def test_generate_refuses_bad_input(app, client, make_user, auth):
    make_user("idle@example.com")
    auth.login(make_user(admin=True))
    now = datetime.now(UTC)
    cases = [
        ({"email": "", "period": "2026-10"}, 422, "This field is required."),
        ({"email": "idle@example.com", "period": "Oct"}, 422, "The period must look like"),
        ({"email": "who@example.com", "period": "2026-10"}, 422, "No user has this email."),
        ({"email": "idle@example.com", "period": f"{now:%Y-%m}"}, 422, "has not ended yet"),
        ({"email": "idle@example.com", "period": "2026-10"}, 409, "has no usage for this user"),
    ]
    for data, status, message in cases:
        response = client.submit("/admin/invoices", data)
        assert response.status_code == status, data
        page = response.get_data(as_text=True)
        assert message in page, (data, page)
    assert count(app, Invoice) == 0 and count(app, LedgerTransaction) == 0


def test_double_submitting_an_offline_payment_records_it_once(app, client, shop):
    """The payment form carries a one-time request id: a second submit is a replay."""
    invoice_id = shop["ids"]["ann"][0]
    page = client.get(f"/admin/invoices/{invoice_id}").get_data(as_text=True)
    request_id = re.search(r'name="request_id" type="hidden" value="([0-9a-f]+)"', page).group(1)
    form = {"amount": "1.00", "reference": "wire 7", "request_id": request_id}
    assert client.submit(f"/admin/invoices/{invoice_id}/payments", form).status_code == 303
    assert client.submit(f"/admin/invoices/{invoice_id}/payments", form).status_code == 303
    assert count(app, InvoicePayment) == 1
    assert invoice_row(app, invoice_id).amount_paid_minor == 100


LISTED = (
    "id",
    "number",
    "user_id",
    "status",
    "period_start",
    "period_end",
    "finalized_at",
    "currency",
    "total_minor",
    "amount_paid_minor",
    "display_status",
    "status_css",
    "period_last_day",
    "total",
    "amount_due",
)


def test_the_admin_list_matches_list_invoices(app, shop):
    """Admin › Invoices reads its rows and their count in one statement: the same invoices,
    figures, emails and totals as ``list_invoices``, for every filter and past the last page."""
    ann, bob = shop["ann"], shop["bob"]
    pay_offline(app, shop["ids"]["ann"][0], minor=100)  # partially paid
    pay_offline(app, shop["ids"]["bob"][0])  # paid
    empty_invoices(app, ann.id, 5)
    with app.app_context():
        users = {u.id: u for u in db.session.scalars(select(User))}
        cases = [
            {},
            {"page": 2, "per_page": 3},
            {"page": 3, "per_page": 3},
            {"page": 9, "per_page": 3},
            {"user": users[ann.id]},
            {"user": users[bob.id], "status": "paid"},
            {"status": "sent"},
            {"status": "void"},
            {"period_start": OCT[0]},
            {"user": users[ann.id], "period_start": OCT[0], "status": "sent", "per_page": 1},
        ]
        for case in cases:
            want = invoicing.list_invoices(**case)
            got = invoicing.admin_list(**case)
            assert (got.page, got.per_page, got.total) == (want.page, want.per_page, want.total)
            assert [[getattr(i, a) for a in LISTED] + [i.email] for i in got.items] == [
                [getattr(i, a) for a in LISTED] + [users[i.user_id].email] for i in want.items
            ], case
        db.session.remove()


def test_the_admin_invoice_loads_what_get_for_owner_gives(app, shop):
    invoice_id = shop["ids"]["ann"][1]
    pay_offline(app, invoice_id, minor=250)
    with app.app_context():
        want = invoicing.get_for_owner(None, invoice_id)
        expected = (
            want.number,
            want.user.email,
            [(line.position, line.description, line.amount_minor) for line in want.lines],
            [(p.id, p.tender, p.amount_minor, p.is_issue_credit) for p in want.payments],
            [p.id for p in want.settlement_payments],
        )
        db.session.expunge_all()
        got = invoicing.get_for_admin(invoice_id)
        assert (
            got.number,
            got.user.email,
            [(line.position, line.description, line.amount_minor) for line in got.lines],
            [(p.id, p.tender, p.amount_minor, p.is_issue_credit) for p in got.payments],
            [p.id for p in got.settlement_payments],
        ) == expected
        with pytest.raises(NotFound):
            invoicing.get_for_admin(999999)
        db.session.remove()

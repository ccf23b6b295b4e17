"""The Invoices pages: the user's list (status filter and pager swap the table with htmx, and
work without it), one invoice with its lines, totals, payments and PDF, owner-scoped."""

from __future__ import annotations

import re

import pytest

from portal.extensions import db
from portal.models import Invoice
from tests.support.invoices import (
    OCT_TOTAL,
    SEP,
    SEP_TOTAL,
    empty_invoices,
    issue_invoices,
    pay_offline,
)


def number_of(app, invoice_id: int) -> str:
    with app.app_context():
        try:
            return db.session.get(Invoice, invoice_id).number
        finally:
            db.session.remove()


def rows(page: str) -> list[str]:
    """The invoice numbers in the table, top to bottom."""
    return re.findall(r'<tr id="invoice-\d+">\s*<td><a href="/invoices/\d+">([^<]+)</a>', page)


@pytest.fixture
def customer(app, make_user):
    """A user with two issued invoices: September's paid offline, October's sent."""
    user = make_user(name="Cleo Customer")
    sep, oct_ = issue_invoices(app, user.id)
    pay_offline(app, sep, reference="BANK-0042")
    user.invoices = {"sep": sep, "oct": oct_}
    user.numbers = {k: number_of(app, v) for k, v in user.invoices.items()}
    return user


def test_the_list_shows_the_users_invoices_newest_first(client, auth, customer):
    auth.login(customer)
    response = client.get("/invoices/")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and page.startswith("<!doctype html>")
    assert rows(page) == [customer.numbers["oct"], customer.numbers["sep"]]
    oct_row = page[page.index(f'id="invoice-{customer.invoices["oct"]}"') :]
    oct_row = oct_row[: oct_row.index("</tr>")]
    assert "2026-10-01 – 2026-10-31" in oct_row  # the period's end shown inclusively
    assert ">Open<" in oct_row and oct_row.count(OCT_TOTAL) == 2  # total and amount due
    sep_row = page[page.index(f'id="invoice-{customer.invoices["sep"]}"') :]
    sep_row = sep_row[: sep_row.index("</tr>")]
    assert ">Paid<" in sep_row and SEP_TOTAL in sep_row and "$0.00" in sep_row
    # The filter is a real GET form (works without JavaScript) that htmx turns into a swap.
    assert 'action="/invoices/"' in page and 'method="get"' in page
    assert 'hx-target="#invoice-table"' in page and 'hx-push-url="true"' in page
    assert page.count('id="invoice-table"') == 1
    assert "delete" not in page.lower()  # users cannot delete invoices


@pytest.mark.parametrize(
    "status, expected",
    [("paid", ["sep"]), ("sent", ["oct"]), ("overdue", []), ("void", []), ("", ["oct", "sep"])],
)
def test_the_status_filter(client, auth, customer, status, expected):
    auth.login(customer)
    page = client.get(f"/invoices/?status={status}").get_data(as_text=True)
    assert rows(page) == [customer.numbers[k] for k in expected]
    if not expected:
        assert f"No {status} invoices." in page
    assert re.search(rf'<option value="{status}"\s+selected>', page)


def test_a_fragment_request_gets_the_table_alone(client, auth, customer):
    auth.login(customer)
    response = client.htmx_get("/invoices/?status=paid", target="invoice-table")
    fragment = response.get_data(as_text=True)
    assert response.status_code == 200
    assert fragment.startswith('<div id="invoice-table">') and "<html" not in fragment
    assert rows(fragment) == [customer.numbers["sep"]]
    assert "HX-Request" in response.headers["Vary"]
    # Boosted navigation, or htmx aiming at something else, gets the whole page.
    for headers in ({"HX-Boosted": "true", "HX-Target": "invoice-table"}, {"HX-Target": "main"}):
        whole = client.htmx_get("/invoices/?status=paid", headers=headers)
        assert whole.get_data(as_text=True).startswith("<!doctype html>")


def test_the_pager_keeps_the_filter_and_swaps_the_table(app, client, auth, customer):
    empty_invoices(app, customer.id, 21)  # 23 sent/paid invoices: two pages of 20
    auth.login(customer)
    first = client.get("/invoices/?status=sent").get_data(as_text=True)
    assert len(rows(first)) == 20 and rows(first)[0] == customer.numbers["oct"]
    assert "Page 1 of 2" in first
    next_link = re.search(
        r'<a href="([^"]+)" hx-get="([^"]+)" hx-target="#invoice-table" '
        r'hx-swap="outerHTML" hx-push-url="true" rel="next">',
        first,
    )
    assert next_link and next_link.group(1) == next_link.group(2)
    assert "status=sent" in next_link.group(1) and "page=2" in next_link.group(1)
    second = client.htmx_get(next_link.group(1).replace("&amp;", "&"), target="invoice-table")
    body = second.get_data(as_text=True)
    assert body.startswith('<div id="invoice-table">') and len(rows(body)) == 2
    assert "Page 2 of 2" in body and rel_prev_keeps_status(body)
    unfiltered = client.get("/invoices/?page=2").get_data(as_text=True)
    assert len(rows(unfiltered)) == 3 and "status=" not in unfiltered.split('class="pager"')[1]


def rel_prev_keeps_status(body: str) -> bool:
    prev = re.search(r'<a href="([^"]+)"[^>]*rel="prev">', body)
    return bool(prev) and "status=sent" in prev.group(1) and "page=1" in prev.group(1)


def test_an_unknown_status_is_404(client, auth, customer):
    auth.login(customer)
    assert client.get("/invoices/?status=deleted").status_code == 404


def test_no_invoices_yet(client, auth, make_user):
    auth.login(make_user())
    page = client.get("/invoices/").get_data(as_text=True)
    assert "You have no invoices yet." in page and rows(page) == []


def test_the_invoice_page_shows_lines_totals_payments_and_the_pdf(app, client, auth, customer):
    auth.login(customer)
    response = client.get(f"/invoices/{customer.invoices['sep']}")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f"<h1>Invoice {customer.numbers['sep']}</h1>" in page
    assert re.search(r'id="invoice-status"[^>]*>Paid<', page)
    assert '<td id="invoice-period">2026-09-01 – 2026-09-30</td>' in page
    assert re.search(r"<th scope=\"row\">Issued</th><td>\d{4}-\d\d-\d\d</td>", page)
    assert re.search(r"<th scope=\"row\">Due</th><td>\d{4}-\d\d-\d\d</td>", page)
    # one line: 720 core-hours at $0.05
    line = re.search(
        r'<tr id="line-1"><td>([^<]+)</td>\s*<td class="num">([^<]+)</td>\s*'
        r'<td class="num">([^<]+)</td>\s*<td class="num">([^<]+)</td></tr>',
        page,
    )
    assert line.groups() == (f"web (web-{customer.id}) · CPU", "720 core-hours", "$0.05", SEP_TOTAL)
    assert f'id="invoice-subtotal">{SEP_TOTAL}<' in page
    assert 'id="invoice-credits"' not in page  # no credits applied: no line for them
    assert re.search(r'id="invoice-due"><h2>Amount due</h2><p class="amount">\$0.00<', page)
    payment = re.search(
        r'<tr id="payment-\d+"><td>[^<]+</td><td>Bank transfer</td>'
        r'<td>BANK-0042</td><td class="num">([^<]+)</td></tr>',
        page,
    )
    assert payment and payment.group(1) == SEP_TOTAL
    # The PDF block: rendered after the invoice was issued (jobs run synchronously here).
    assert f'id="invoice-pdf-{customer.invoices["sep"]}"' in page
    assert f'href="/invoices/{customer.invoices["sep"]}/pdf"' in page
    pdf = client.get(f"/invoices/{customer.invoices['sep']}/pdf")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    assert pdf.data.startswith(b"%PDF")
    assert "delete" not in page.lower()


def test_credits_show_on_the_invoice(app, client, auth, make_user, api):
    user = make_user()
    api.post(
        "/credits",
        token=api.token(make_user(admin=True), "admin"),
        json={"user_id": user.email, "amount": "10.00", "reason": "Goodwill"},
    )
    (invoice_id,) = issue_invoices(app, user.id, periods=(SEP,))
    auth.login(user)
    page = client.get(f"/invoices/{invoice_id}").get_data(as_text=True)
    assert 'id="invoice-credits">-$10.00<' in page
    assert re.search(r'id="invoice-total"><h2>Total</h2><p class="amount">\$26.00<', page)
    # Credits appear once: as "Credits applied", not again as a payment.
    assert "<td>Credits</td>" not in page and "No payments yet." in page
    assert re.search(r'id="invoice-paid"><h2>Paid</h2><p class="amount">\$0.00<', page)


def test_another_users_invoice_is_404(app, client, auth, customer, make_user):
    auth.login(make_user())
    for path in (f"/invoices/{customer.invoices['oct']}", "/invoices/999999"):
        response = client.get(path)
        assert response.status_code == 404
        assert customer.numbers["oct"] not in response.get_data(as_text=True)
    assert rows(client.get("/invoices/").get_data(as_text=True)) == []


def test_an_admin_sees_only_their_own_on_the_user_pages(client, auth, customer, make_user):
    """Admins manage everyone's invoices in the admin area; these pages are the user's."""
    auth.login(make_user(admin=True))
    assert client.get(f"/invoices/{customer.invoices['oct']}").status_code == 404
    assert rows(client.get("/invoices/").get_data(as_text=True)) == []

"""Statuses and amounts that add up, the same on the invoice page, in the API and on the PDF:
Draft, Open, Past due, Partially paid, Paid, Void (never "sent"); credits applied at issue
appear once, as "Credits applied"; "Paid" is the sum of the payments listed."""

from __future__ import annotations

import re

import pytest

from portal.extensions import db
from portal.models import Invoice, InvoiceStatus
from portal.models.invoices import display_status
from tests.support.documents import pdf_text
from tests.support.invoices import SEP, issue_invoices, pay_offline


@pytest.mark.parametrize(
    "status, paid, shown",
    [
        (InvoiceStatus.DRAFT, 0, "Draft"),
        (InvoiceStatus.OPEN, 0, "Open"),
        (InvoiceStatus.OPEN, 1, "Partially paid"),
        (InvoiceStatus.OVERDUE, 0, "Past due"),
        (InvoiceStatus.OVERDUE, 1, "Past due"),
        (InvoiceStatus.PAID, 3600, "Paid"),
        (InvoiceStatus.VOID, 0, "Void"),
    ],
)
def test_the_status_people_read(status, paid, shown):
    assert display_status(status, paid) == shown


def _payments_on_page(page: str) -> list[tuple[str, str]]:
    return re.findall(
        r'<tr id="payment-\d+"><td>[^<]+</td><td>([^<]+)</td><td>[^<]*</td>'
        r'<td class="num">([^<]+)</td></tr>',
        page,
    )


def test_credits_once_and_paid_is_the_sum_of_the_payments(app, client, auth, api, make_user):
    """Bob's case: a credit pays part of the invoice when it is issued, then two payments."""
    bob = make_user(name="Bob Builder")
    api.post(
        "/credits",
        token=api.token(make_user(admin=True), "admin"),
        json={"user_id": bob.email, "amount": "25.00", "reason": "Trial credit"},
    )
    (invoice_id,) = issue_invoices(app, bob.id, periods=(SEP,))  # $36.00 of usage
    pay_offline(app, invoice_id, minor=500, reference="wire 1")
    pay_offline(app, invoice_id, minor=300, reference="wire 2")

    auth.login(bob)
    page = client.get(f"/invoices/{invoice_id}").get_data(as_text=True)
    assert re.search(r'id="invoice-status"[^>]*>Partially paid<', page)
    assert ">sent<" not in page.lower()
    assert 'id="invoice-subtotal">$36.00<' in page
    assert 'id="invoice-credits">-$25.00<' in page
    assert re.search(r'id="invoice-total"><h2>Total</h2><p class="amount">\$11.00<', page)
    assert _payments_on_page(page) == [("Bank transfer", "$5.00"), ("Bank transfer", "$3.00")]
    assert 'id="invoice-payments-total">$8.00<' in page
    assert re.search(r'id="invoice-paid"><h2>Paid</h2><p class="amount">\$8.00<', page)
    assert re.search(r'id="invoice-due"><h2>Amount due</h2><p class="amount">\$3.00<', page)
    listed = client.get("/invoices/").get_data(as_text=True)
    assert ">Partially paid<" in listed and ">sent<" not in listed

    token = api.token(bob, "user")
    body = api.get(f"/invoices/{invoice_id}", token=token).get_json()
    assert (body["status"], body["status_display"]) == ("sent", "Partially paid")
    assert [(p["tender"], p["amount"]) for p in body["payments"]] == [
        ("offline", "5.00"),
        ("offline", "3.00"),
    ]
    assert body["subtotal"] == "36.00" and body["credits"] == "25.00" and body["total"] == "11.00"
    assert body["amount_paid"] == "8.00" and body["amount_due"] == "3.00"
    assert sum(p["amount_minor"] for p in body["payments"]) == body["amount_paid_minor"]
    [item] = api.get("/invoices", token=token).get_json()["items"]
    assert item["status_display"] == "Partially paid"

    # The PDF, made when the invoice was issued: Open, the credits once, nothing paid yet.
    text = pdf_text(client.get(f"/invoices/{invoice_id}/pdf").data)
    assert "OPEN" in text and "SENT" not in text
    assert re.search(r"^\s*Credits applied\s+−\$25\.00$", text, re.M), text
    assert re.search(r"^\s*Total\s+\$11\.00$", text, re.M), text
    assert re.search(r"^\s*Paid\s+\$0\.00$", text, re.M), text
    assert "Account credit" not in text and "No payments recorded at the time of issue." in text

    pay_offline(app, invoice_id, minor=300, reference="wire 3")
    page = client.get(f"/invoices/{invoice_id}").get_data(as_text=True)
    assert re.search(r'id="invoice-status"[^>]*>Paid<', page)
    assert sum(int(a.strip("$").replace(".", "")) for _, a in _payments_on_page(page)) == 1100


def test_past_due_on_page_and_api(app, client, auth, api, make_user):
    user = make_user()
    (invoice_id,) = issue_invoices(app, user.id, periods=(SEP,))
    with app.app_context():
        db.session.get(Invoice, invoice_id).status = "overdue"
        db.session.commit()
        db.session.remove()
    auth.login(user)
    page = client.get(f"/invoices/{invoice_id}").get_data(as_text=True)
    assert re.search(r'id="invoice-status"[^>]*>Past due<', page)
    assert '<option value="overdue" >Past due</option>' in client.get("/invoices/").get_data(
        as_text=True
    )
    body = api.get(f"/invoices/{invoice_id}", token=api.token(user, "user")).get_json()
    assert (body["status"], body["status_display"]) == ("overdue", "Past due")

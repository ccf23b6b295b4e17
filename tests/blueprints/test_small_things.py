"""Small things users notice: a confirmation page before Remove card, Revoke token, Void and
Run now (the same with and without JavaScript); the copy button and the loading indicator
in the markup; voucher requests with name and email; "Valid through" as entered; billing
details that the next invoice prints; the usage chart's axes and values for screen readers,
sensible precision and one total for a past period."""

from __future__ import annotations

import html
import re

from sqlalchemy import select

from portal.extensions import db
from portal.models import ApiToken, Invoice, User, Voucher
from portal.money import Money
from portal.services import accounts
from portal.services.wallet import vouchers
from tests.support.payments import OCT, invoice_of, issued_invoice, saved_card


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def test_remove_card_asks_first(pay_app, client, auth, make_user, in_app):
    user, other = make_user(), make_user()
    card = in_app(saved_card, user.id)
    theirs = in_app(saved_card, other.id, "4000000000000259")
    auth.login(user)
    listing = text(client.get("/payment-methods/"))
    assert f'action="/payment-methods/{card}/delete"' in listing
    assert 'method="get"' in listing
    page = text(client.get(f"/payment-methods/{card}/delete"))
    assert "<h1" in page and "Remove Visa •••• 4242?" in page
    assert f'method="post" action="/payment-methods/{card}/delete"' in page
    assert client.get(f"/payment-methods/{theirs}/delete").status_code == 404
    # Nothing is removed by asking.
    assert f'id="card-{card}"' in text(client.get("/payment-methods/"))


def test_revoke_token_asks_first_and_a_new_token_has_a_copy_button(app, client, auth, make_user):
    user, other = make_user(), make_user()
    auth.login(user)
    created = text(client.submit("/account/tokens", {"name": "ci", "scope": "user"}))
    assert 'data-copy="new-token"' in created
    with app.app_context():
        mine = db.session.scalar(select(ApiToken.id).where(ApiToken.user_id == user.id))
        theirs, _ = accounts.create_api_token(
            db.session.get_one(User, other.id), name="x", scope="user"
        )
        theirs_id = theirs.id
        db.session.commit()
    page = text(client.get(f"/account/tokens/{mine}/revoke"))
    assert "Revoke the token “ci”?" in page
    assert f'method="post" action="/account/tokens/{mine}/revoke"' in page
    assert client.get(f"/account/tokens/{theirs_id}/revoke").status_code == 404
    client.submit(f"/account/tokens/{mine}/revoke")
    with app.app_context():
        assert db.session.get_one(ApiToken, mine).revoked_at is not None


def test_void_and_run_now_ask_first(pay_app, client, auth, make_user, in_app):
    user = make_user()
    invoice = in_app(issued_invoice, user.id)
    auth.login(make_user(admin=True))
    page = text(client.get(f"/admin/invoices/{invoice}"))
    assert f'method="get" action="/admin/invoices/{invoice}/void"' in page
    page = text(client.get(f"/admin/invoices/{invoice}/void?reason=Billed+twice"))
    assert "Void invoice INV-" in page and "Billed twice" in page
    assert f'method="post" action="/admin/invoices/{invoice}/void"' in page
    with pay_app.app_context():
        assert db.session.get_one(Invoice, invoice).status == "open"

    page = text(client.get("/admin/jobs/settle-invoices/run"))
    assert "Run settle-invoices now?" in page
    assert 'method="post" action="/admin/jobs/settle-invoices/run"' in page
    assert 'name="request_id"' in page
    assert client.get("/admin/jobs/no-such-job/run").status_code == 404


def test_voucher_requests_show_who_asked_and_valid_through_reads_as_entered(
    app, client, auth, make_user
):
    asker = make_user(name="Dana Reyes")
    with app.app_context():
        vouchers.request_voucher(
            db.session.get_one(User, asker.id), amount=Money(1500, "USD"), reason="A workshop"
        )
        db.session.commit()
    auth.login(make_user(admin=True))
    client.submit(
        "/admin/vouchers",
        {"value": "10.00", "count": 1, "max_redemptions": 1, "expires_on": "2027-01-31"},
    )
    page = text(client.get("/admin/vouchers"))
    row = re.search(r'<tr id="voucher-request-\d+">.*?</tr>', page, re.S).group(0)
    assert "Dana Reyes" in row and asker.email in row and "user " not in row
    assert "Valid through" in page and "2027-01-31" in page and "2027-02-01" not in page
    with app.app_context():
        assert db.session.scalar(select(Voucher.expires_at)).date().isoformat() == "2027-02-01"


def test_billing_details_print_on_the_next_invoice(pay_app, client, auth, make_user, in_app):
    user = make_user()
    auth.login(user)
    long = client.submit("/account/billing", {"company": "x" * 201, "address": "", "tax_id": ""})
    assert long.status_code == 422 and "200 characters" in text(long)
    answer = client.submit(
        "/account/billing",
        {"company": "Acme GmbH", "address": "Hauptstr. 1\n10115 Berlin", "tax_id": "DE123456789"},
    )
    assert answer.status_code == 303
    assert 'value="Acme GmbH"' in text(client.get("/account/billing"))

    def issue() -> dict:
        return invoice_of(db.session.get_one(User, user.id), {"web": 10}, OCT).snapshot["customer"]

    customer = in_app(issue)
    assert customer["company"] == "Acme GmbH"
    assert customer["address"] == ["Hauptstr. 1", "10115 Berlin"]
    assert customer["tax_id"] == "DE123456789"


def test_every_page_has_the_loading_indicator(app, client, auth, make_user):
    auth.login(make_user())
    page = text(client.get("/wallet/"))
    assert 'hx-indicator="#loading"' in page and '<div id="loading"' in page

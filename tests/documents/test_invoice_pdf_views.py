"""Downloading an invoice's PDF (page and API) and the widget that waits for it: owners and
admins only; another user's invoice is not found."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from portal.extensions import db
from portal.models import Invoice
from portal.services.invoicing import documents


@pytest.fixture
def issued(app, make_user, make_invoice):
    """Alice's invoice with its PDF rendered; Bob, another user; an admin."""
    alice, bob, admin = make_user(), make_user(), make_user(admin=True)
    invoice_id = make_invoice(alice.id)
    with app.app_context():
        pdf = documents.render_invoice_pdf(invoice_id)
        db.session.commit()
        content = pdf.content
        db.session.remove()
    return alice, bob, admin, invoice_id, content


def number_of(app, invoice_id: int) -> str:
    with app.app_context():
        try:
            return db.session.get(Invoice, invoice_id).number
        finally:
            db.session.remove()


def assert_pdf_download(response, number: str, content: bytes) -> None:
    assert response.status_code == 200
    assert response.mimetype == "application/pdf"
    assert response.headers["Content-Disposition"] == f"attachment; filename={number}.pdf"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" in response.headers["Cache-Control"]
    assert response.data == content and response.data.startswith(b"%PDF-")


def test_owner_and_admin_download_the_stored_pdf(app, client, auth, issued):
    alice, bob, admin, invoice_id, content = issued
    number = number_of(app, invoice_id)
    auth.login(alice)
    assert_pdf_download(client.get(f"/invoices/{invoice_id}/pdf"), number, content)
    auth.logout()

    auth.login(bob)
    assert client.get(f"/invoices/{invoice_id}/pdf").status_code == 404
    assert client.get(f"/invoices/{invoice_id}/pdf-status").status_code == 404
    assert client.get(f"/invoices/{invoice_id + 1000}/pdf").status_code == 404
    auth.logout()

    auth.login(admin)
    assert_pdf_download(client.get(f"/invoices/{invoice_id}/pdf"), number, content)


@pytest.mark.parametrize("path", ["/invoices/{id}/pdf", "/invoices/{id}/pdf-status"])
def test_login_required(client, issued, path):
    response = client.get(path.format(id=issued[3]))
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/auth/login"


def test_pdf_not_ready_yet(client, auth, make_user, make_invoice):
    alice = make_user()
    pending = make_invoice(alice.id, pdf_status="pending")
    draft = make_invoice(alice.id, draft=True)
    auth.login(alice)
    response = client.get(f"/invoices/{pending}/pdf")
    assert response.status_code == 409
    assert "not ready yet" in response.get_data(as_text=True)
    response = client.get(f"/invoices/{draft}/pdf")
    assert response.status_code == 409
    assert "made when the invoice is issued" in response.get_data(as_text=True)


def widget(html: str, invoice_id: int) -> str:
    match = re.search(rf'<div id="invoice-pdf-{invoice_id}"[^>]*>', html)
    assert match, html
    return match.group(0)


def test_widget_polls_while_pending_and_offers_the_download_when_ready(
    app, client, auth, make_user, make_invoice
):
    alice = make_user()
    invoice_id = make_invoice(alice.id, pdf_status="pending")
    auth.login(alice)
    url = f"/invoices/{invoice_id}/pdf-status"

    response = client.htmx_get(url, target=f"invoice-pdf-{invoice_id}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    root = widget(html, invoice_id)
    assert f'hx-get="{url}"' in root and 'hx-trigger="load delay:1s"' in root
    assert 'hx-target="this"' in root and 'hx-swap="outerHTML"' in root
    assert "Preparing the PDF" in html
    assert '/pdf"' not in html and "<html" not in html  # the fragment alone, no link yet
    assert "style=" not in html and "<script" not in html
    assert "HX-Request" in response.headers["Vary"]

    with app.app_context():  # the job runs
        documents.render_invoice_pdf(invoice_id)
        db.session.commit()
        db.session.remove()
    html = client.htmx_get(url, target=f"invoice-pdf-{invoice_id}").get_data(as_text=True)
    root = widget(html, invoice_id)
    assert "hx-trigger" not in root and "hx-get" not in root  # settled: polling stops
    link = re.search(r'<a href="([^"]+)"[^>]*>Download PDF</a>', html)
    assert link and link.group(1) == f"/invoices/{invoice_id}/pdf"
    assert 'hx-boost="false"' in link.group(0)
    assert client.get(link.group(1)).status_code == 200


def test_widget_when_the_render_failed_or_not_issued(app, client, auth, make_user, make_invoice):
    alice = make_user()
    failed = make_invoice(alice.id, pdf_status="failed")
    draft = make_invoice(alice.id, draft=True)
    auth.login(alice)
    html = client.htmx_get(f"/invoices/{failed}/pdf-status").get_data(as_text=True)
    assert "hx-trigger" not in widget(html, failed)
    assert "The PDF could not be prepared; we'll retry." in html
    html = client.htmx_get(f"/invoices/{draft}/pdf-status").get_data(as_text=True)
    assert "hx-trigger" not in widget(html, draft)
    assert "made when the invoice is issued" in html


def test_api_pdf_own_invoice_only_admin_any(app, api, issued):
    alice, bob, admin, invoice_id, content = issued
    number = number_of(app, invoice_id)
    path = f"/invoices/{invoice_id}/pdf"
    assert_pdf_download(api.get(path, token=api.token(alice)), number, content)

    other = api.get(path, token=api.token(bob))
    assert other.status_code == 404
    assert other.json["error"]["code"] == "not_found"
    assert_pdf_download(api.get(path, token=api.token(admin, "admin")), number, content)
    assert api.get(path, token=api.token(admin, "platform")).status_code == 403
    assert api.get(path).status_code == 401

"""The invoice PDF renderer: what the document shows, and that it reads nothing but our
static files."""

from __future__ import annotations

import io
import os
import re
import subprocess

import pytest
from pypdf import PdfReader

from portal.documents import invoice_pdf
from portal.documents.invoice_pdf import BASE_URL, FETCHER, STATIC_DIR, RefusedURL
from tests.support.documents import pdf_text, text_line


@pytest.fixture
def fetched(monkeypatch):
    """Every URL WeasyPrint asks the fetcher for during the test."""
    urls: list[str] = []
    fetch = FETCHER.fetch

    def recording(url, headers=None):
        urls.append(url)
        return fetch(url, headers)

    monkeypatch.setattr(FETCHER, "fetch", recording)
    return urls


def test_pdf_shows_the_snapshot_figures(snapshot, fetched):
    snap = snapshot()
    content = invoice_pdf.render_pdf_bytes(snap)

    assert content.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(content))
    assert len(reader.pages) == 1
    assert reader.metadata.title == "Invoice INV-2026-000001"
    assert reader.metadata.author == "Example Cloud Ltd."
    text = pdf_text(content)
    # Every line as one row: description (kind tag), quantity, unit, unit price, amount.
    for line in snap["lines"]:
        tag = "" if line["kind"] == "usage" else rf"(\s+{line['kind'].upper()})?"  # may wrap
        row = (
            rf"^\s*{re.escape(line['description'])}{tag}\s+{re.escape(line['quantity'])}\s+"
            rf"{re.escape(line['unit'])}\s+{re.escape(line['unit_price'])}\s+"
            rf"{re.escape(line['amount'])}$"
        )
        assert len(re.findall(row, text, re.M)) == 1, (row, text)
    assert "ADJUSTMENT" in text and "FEE" in text
    assert text_line(text, "Subtotal").split()[-1] == "$36.50"
    assert text_line(text, "Credits applied").split()[-1] == "−$5.00"
    assert re.search(r"^\s*Total\s+\$31\.50$", text, re.M), text
    # Every figure adds up: 36.50 - 5.00 = 31.50; 31.50 - 9.99 (the payments listed) = 21.51.
    assert re.search(r"^\s*Paid\s+−\$9\.99$", text, re.M), text
    assert text_line(text, "Amount due").split()[-1] == "$21.51"
    # Seller, customer, number, dates, period, status, payments.
    for shown in (
        "Example Cloud Ltd.",
        "1 Harbour Street",
        "Dublin D02 XY45",
        "billing@example.cloud",
        "Tax ID IE1234567X",
        "Alice Liddell",
        "alice@example.com",
        "Account 12",
        "PARTIALLY PAID",
    ):
        assert shown in text, shown
    assert text_line(text, "Invoice number").split()[-1] == "INV-2026-000001"
    assert text_line(text, "Issue date").split()[-1] == "2026-11-01"
    assert text_line(text, "Due date").split()[-1] == "2026-11-15"
    assert "2026-10-01 – 2026-10-31" in text_line(text, "Service period")
    assert "Account credit" not in text and "SENT" not in text  # credits appear once
    assert re.search(r"2026-11-03\s+Card\s+pi_3Q0example\s+\$9\.99$", text, re.M), text
    assert "Please pay $21.51 by 2026-11-15, quoting invoice INV-2026-000001." in text
    assert "Page 1 of 1" in text
    # The stylesheet came from portal/static, and nothing else was fetched.
    assert fetched == [BASE_URL + "invoice_v1.css"]


def test_same_snapshot_same_bytes(snapshot):
    assert invoice_pdf.render_pdf_bytes(snapshot()) == invoice_pdf.render_pdf_bytes(snapshot())


def test_paid_invoice_and_long_invoice(snapshot):
    paid = snapshot(
        status="paid", status_display="Paid", amount_paid="$26.50", amount_due="$0.00", due_at=None
    )
    text = pdf_text(invoice_pdf.render_pdf_bytes(paid))
    assert "PAID" in text and "Nothing is due on this invoice." in text
    assert text_line(text, "Due date").split()[-2:] == ["On", "receipt"]
    assert "Credits applied" in text

    lines = [
        {
            "kind": "usage",
            "description": f"node-{i} · CPU",
            "quantity": "1",
            "unit": "core-hours",
            "unit_price": "$0.05",
            "amount": f"$0.{i:02d}",
        }
        for i in range(1, 90)
    ]
    content = invoice_pdf.render_pdf_bytes(snapshot(lines=lines))
    pages = len(PdfReader(io.BytesIO(content)).pages)
    assert pages >= 3
    text = pdf_text(content)
    assert all(f"node-{i} · CPU" in text for i in range(1, 90))
    assert text.count("DESCRIPTION") >= pages - 1  # the table head repeats on each page
    assert f"Page {pages} of {pages}" in text


def test_long_words_wrap_inside_the_page(snapshot):
    """Free text (names, addresses, descriptions, references) never runs off the page."""
    snap = snapshot()
    snap["seller"]["address"] = ["Z" * 120]
    snap["customer"]["name"] = "Y" * 90
    snap["lines"][0]["description"] = "x" * 150
    snap["payments"][0]["reference"] = "R" * 80
    content = invoice_pdf.render_pdf_bytes(snap)
    assert "x" * 20 in pdf_text(content)
    boxes = subprocess.run(
        ["pdftotext", "-bbox", "-", "-"], input=content, capture_output=True, check=True
    ).stdout.decode()
    right_edges = [float(x) for x in re.findall(r'xMax="([0-9.]+)"', boxes)]
    assert right_edges and max(right_edges) <= 595.28 - 45.35 + 0.5  # A4 less the 16 mm margin


def test_snapshot_markup_is_text_and_fetches_nothing(snapshot, fetched):
    hostile = snapshot()
    hostile["seller"]["name"] = '<img src="http://127.0.0.1:9/x">'
    hostile["customer"]["name"] = (
        "</style><style>body { background: url(file:///etc/passwd) }</style>"
    )
    hostile["lines"][0]["description"] = '<link rel="stylesheet" href="file:///etc/passwd">'
    html = invoice_pdf.render_html(hostile)
    assert '<img src="http' not in html and "&lt;img src=&#34;http://127.0.0.1:9/x&#34;&gt;" in html

    text = pdf_text(invoice_pdf.render_pdf_bytes(hostile))
    assert '<img src="http://127.0.0.1:9/x">' in text
    # (long names wrap)
    assert "</style><style>body { background: url(file:///" in text
    assert "etc/passwd) }</style>" in text
    assert '<linkrel="stylesheet"href="file:///etc/passwd">' in "".join(text.split())
    assert fetched == [BASE_URL + "invoice_v1.css"]


@pytest.mark.parametrize(
    "markup",
    [
        '<img src="http://127.0.0.1:9/x">',
        '<link rel="stylesheet" href="file:///etc/passwd">',
        "<style>body { background: url(file:///etc/passwd) }</style>",
        "<style>@import url(https://example.com/x.css);</style>",
        '<img src="../../config.py">',
        '<img src="data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22/%3E">',
    ],
)
def test_a_template_that_reaches_outside_fails_the_render(monkeypatch, snapshot, markup):
    """Were a template ever to ask for an outside URL, the render stops instead of fetching
    it or quietly leaving it out."""
    render_html = invoice_pdf.render_html
    monkeypatch.setattr(
        invoice_pdf,
        "render_html",
        lambda snap: render_html(snap).replace("<body>", "<body>" + markup),
    )
    with pytest.raises(RefusedURL):
        invoice_pdf.render_pdf_bytes(snapshot())


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "file://localhost/etc/hostname",
        "file://other-host/srv/portal/static/pdf/invoice_v1.css",
        "http://127.0.0.1:9/x",
        "https://example.com/invoice_v1.css",
        "ftp://example.com/x",
        "data:text/css,body{}",
        "data:image/png;base64,iVBORw0KGgo=",
        BASE_URL + "../../config.py",
        BASE_URL + "..%2F..%2Fconfig.py",
        BASE_URL + "missing.css",
        BASE_URL,  # a directory
    ],
)
def test_fetcher_refuses_everything_but_static_files(url):
    with pytest.raises(RefusedURL):
        FETCHER.fetch(url)


def test_fetcher_serves_static_files():
    response = FETCHER.fetch(BASE_URL + "invoice_v1.css?v=1")
    assert response.content_type == "text/css"
    assert response.read() == (STATIC_DIR / "pdf" / "invoice_v1.css").read_bytes()
    response.close()
    image = FETCHER.fetch(BASE_URL + "../images/favicon.svg")
    assert image.content_type == "image/svg+xml"
    image.close()


def test_fetcher_refuses_a_symlink_out_of_static(monkeypatch, tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "ok.css").write_text("p {}")
    os.symlink("/etc/passwd", static / "passwd.css")
    monkeypatch.setattr(invoice_pdf, "STATIC_DIR", static.resolve())
    base = static.resolve().as_uri()
    assert FETCHER.fetch(base + "/ok.css").read() == b"p {}"
    with pytest.raises(RefusedURL):
        FETCHER.fetch(base + "/passwd.css")


@pytest.mark.parametrize("version", [2, True, 1.0, "1", None])
def test_unknown_template_version_is_refused(snapshot, version):
    with pytest.raises(ValueError, match="template version"):
        invoice_pdf.render_pdf_bytes(snapshot(template_version=version))


def test_incomplete_snapshot_is_refused(snapshot):
    snap = snapshot()
    del snap["amount_due"], snap["lines"]
    with pytest.raises(ValueError, match="lacks lines, amount_due"):
        invoice_pdf.render_pdf_bytes(snap)

"""Hostile input to the HTML pages: every form and filter answers a clear 4xx naming the field
(a money form: the form again, 422, with the error on the field), writes nothing, and never
answers 500. The ledger reconciles after each test (the ``app`` fixture checks it)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import (
    CheckoutSession,
    CreditLot,
    Invoice,
    InvoicePayment,
    LedgerEntry,
    LedgerTransaction,
    OutboundEmail,
    PaymentAttempt,
    PriceVersion,
    Voucher,
    VoucherRequest,
    WebhookEvent,
)
from portal.money import Money
from portal.services.metering import catalog
from portal.services.wallet import vouchers
from tests.support.invoices import OCT, issue_invoices

# Everything an HTML form could write.
WRITTEN = (
    LedgerTransaction,
    LedgerEntry,
    CreditLot,
    Voucher,
    VoucherRequest,
    InvoicePayment,
    Invoice,
    PriceVersion,
    CheckoutSession,
    PaymentAttempt,
    OutboundEmail,
    WebhookEvent,
)


def written(app) -> dict[str, int]:
    with app.app_context():
        try:
            return {
                model.__name__: db.session.scalar(select(func.count()).select_from(model))
                for model in WRITTEN
            }
        finally:
            db.session.remove()


def text(response) -> str:
    return unescape(response.get_data(as_text=True))


def field_error(response, field_id: str) -> str:
    """The error shown under a form field (the forms macro's ``<id>-error``)."""
    found = re.findall(
        rf'<small id="{re.escape(field_id)}-error" class="error">([^<]*)</small>',
        response.get_data(as_text=True),
    )
    assert found, f"no error under {field_id}"
    return unescape(found[0])


@pytest.fixture
def site(app, make_user, auth):
    """An admin (logged in; an admin has a wallet too), card payments configured (nothing
    reaches the gateway: every case here is refused before), a customer, and an issued
    invoice of theirs when a test asks for it (``site["invoice"]()``)."""
    saved = {k: app.config.get(k) for k in ("STRIPE_SECRET_KEY",)}
    app.config["STRIPE_SECRET_KEY"] = "sk_test_bad_input"
    admin = make_user(admin=True)
    customer = make_user()
    invoices: list[int] = []

    def invoice() -> int:
        if not invoices:
            invoices.extend(issue_invoices(app, customer.id, periods=(OCT,)))
        return invoices[0]

    with app.app_context():
        sku = catalog.version_at(datetime.now(UTC)).skus[0].code
        db.session.commit()
        db.session.remove()
    auth.login(admin)
    yield {"admin": admin, "customer": customer, "invoice": invoice, "sku": sku}
    app.config.update(saved)


def money_form(site, form: str) -> tuple[str, dict, str, str]:
    """(url, valid data but the money field, the field's name, its element id)."""
    if form == "offline payment":
        return (
            f"/admin/invoices/{site['invoice']()}/payments",
            {"reference": "wire", "request_id": "r-2"},
            "amount",
            "amount",
        )
    later = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
    rates = {
        "effective_from": later,
        "cpu_per_core_hour": "0.05",
        "memory_per_gb_hour": "0.01",
        "storage_per_gb_month": "0.10",
        "public_ip_per_hour": "0.005",
    }
    return {
        "top-up": ("/wallet/top-up", {"method": "checkout", "nonce": "n-1"}, "amount", "amount"),
        "voucher request": (
            "/wallet/voucher-requests",
            {"reason": "a project"},
            "amount",
            "amount",
        ),
        "grant credit": (
            f"/admin/users/{site['customer'].id}/credits",
            {"reason": "sorry", "request_id": "r-1"},
            "amount",
            "amount",
        ),
        "voucher value": (
            "/admin/vouchers",
            {"count": "1", "max_redemptions": "1"},
            "value",
            "value",
        ),
        "price rate": (
            "/admin/prices",
            {k: v for k, v in rates.items() if k != "cpu_per_core_hour"},
            "cpu_per_core_hour",
            "cpu_per_core_hour",
        ),
        "size price": ("/admin/prices", rates, f"sku-{site['sku']}", f"sku-{site['sku']}"),
    }[form]


MONEY_FORMS = (
    "top-up",
    "voucher request",
    "grant credit",
    "offline payment",
    "voucher value",
    "price rate",
    "size price",
)
NOT_DIGITS = "must be written with the digits 0-9 and at most one decimal point"
TOO_MUCH = "must be at most 1,000,000,000"


BAD_AMOUNTS = [
    ("1e30", NOT_DIGITS),
    ("1e309", NOT_DIGITS),
    ("١٢٣", NOT_DIGITS),  # Arabic-Indic digits: Decimal() would take them
    ("1_000", NOT_DIGITS),
    ("1,000.5", NOT_DIGITS),
    ("99999999999999999999999", TOO_MUCH),
    ("1000000000.01", TOO_MUCH),
    ("Infinity", "is not a number"),
]


@pytest.mark.parametrize("form", MONEY_FORMS)
def test_a_money_field_refuses_what_is_not_an_amount_on_the_form(app, client, site, form):
    url, data, name, field_id = money_form(site, form)
    client.get("/wallet/")
    before = written(app)
    for amount, problem in BAD_AMOUNTS:
        answer = client.submit(url, {**data, name: amount})
        assert answer.status_code == 422, amount
        assert problem in field_error(answer, field_id), amount
    assert written(app) == before


def test_an_amount_up_to_the_limit_is_taken(app, client, site):
    answer = client.submit(
        f"/admin/users/{site['customer'].id}/credits",
        {"amount": "1000000000.00", "reason": "big", "request_id": "r-9"},
    )
    assert answer.status_code == 303
    assert written(app)["CreditLot"] == 1


PAGED = (
    "/wallet/",
    "/invoices/",
    "/admin/users",
    "/admin/users/{user}",
    "/admin/outbox",
    "/admin/vouchers",
    "/admin/invoices",
)


@pytest.mark.parametrize("path", PAGED)
def test_a_page_number_that_is_not_one_is_400(app, client, site, path):
    before = written(app)
    for page in ("99999999999999999999", "-1", "0", "abc", "1e3", "١", "1000001"):
        answer = client.get(path.format(user=site["customer"].id), query_string={"page": page})
        assert answer.status_code == 400, page
        assert "The page must be a whole number from 1 to 1,000,000" in text(answer), page
    assert written(app) == before


@pytest.mark.parametrize("path", PAGED)
def test_the_last_allowed_page_is_an_empty_page(client, site, path):
    answer = client.get(path.format(user=site["customer"].id), query_string={"page": "1000000"})
    assert answer.status_code == 200


@pytest.mark.parametrize(
    "form, field, value, problem",
    [
        ("grant credit", "expires_on", "9999-12-31", "Must not be after"),
        ("grant credit", "expires_on", "1999-12-31", "Must not be before 2000-01-01."),
        ("voucher value", "expires_on", "9999-12-31", "Must not be after"),
        ("voucher value", "expires_on", "0001-01-01", "Must not be before 2000-01-01."),
        ("price rate", "effective_from", "9999-12-31T23:59", "Must not be after"),
    ],
)
def test_a_far_away_date_is_a_form_error(app, client, site, form, field, value, problem):
    url, data, name, _ = money_form(site, form)
    before = written(app)
    answer = client.submit(url, {**data, name: "5", field: value})
    assert answer.status_code == 422
    assert problem in field_error(answer, field)
    assert written(app) == before


@pytest.mark.parametrize(
    "path, problem",
    [
        ("/admin/reports?to=9999-12-31", "to must not be after"),
        ("/admin/reports?from=0001-01-01", "from must not be before 2000-01-01"),
        ("/admin/reports?from=2026-13-01", "from must be a date like 2026-11-01"),
        ("/admin/invoices?period=2999-12", "The period must not be after"),
        ("/admin/invoices?period=9999-12", "The period must look like 2026-11."),
        ("/admin/invoices?period=0001-01", "The period must not be before 2000-01-01"),
    ],
)
def test_a_far_away_date_in_a_filter_is_said_on_the_page(client, site, path, problem):
    answer = client.get(path)
    assert answer.status_code == 200
    assert problem in text(answer)


def test_a_far_away_date_in_a_report_download_is_400(client, site):
    answer = client.get("/admin/reports.csv?to=9999-12-31")
    assert answer.status_code == 400
    assert "to must not be after" in text(answer)


TEXT_FIELDS = [  # (form, text field)
    ("voucher request", "reason"),
    ("grant credit", "reason"),
    ("offline payment", "reference"),
    ("voucher value", "note"),
]


@pytest.mark.parametrize("form, field", TEXT_FIELDS)
def test_a_nul_character_in_a_form_field_is_400_naming_it(app, client, site, form, field):
    url, data, name, _ = money_form(site, form)
    before = written(app)
    answer = client.submit(url, {**data, name: "5", field: "before\x00after"})
    assert answer.status_code == 400
    assert f"The field “{field}” contains a NUL character. Nothing was changed." in text(answer)
    assert written(app) == before


@pytest.mark.parametrize("form, field", TEXT_FIELDS)
def test_bytes_that_are_not_utf8_in_a_form_field_are_400(app, client, site, form, field):
    """An encoded lone surrogate (U+D800 as "UTF-8") or broken UTF-8: Werkzeug would have
    turned it into U+FFFD and stored that."""
    url, data, name, _ = money_form(site, form)
    before = written(app)
    fields = {**data, name: "5", "csrf_token": client.fetch_csrf()}
    for encoded in ("%ED%A0%80", "ok%ED%B0%80", "%C3", "%FF%FE"):
        body = "&".join(f"{k}={v}" for k, v in fields.items()) + f"&{field}={encoded}"
        answer = client.post(
            url, data=body.encode(), content_type="application/x-www-form-urlencoded"
        )
        assert answer.status_code == 400, encoded
        assert f"The field “{field}” is not valid UTF-8 text" in text(answer), encoded
    assert written(app) == before


@pytest.mark.parametrize(
    "path, name",
    [
        ("/admin/users?q=a%00b", "q"),
        ("/invoices/?status=%00", "status"),
        ("/admin/reports?label=project%3D%ED%A0%80", "label"),
        ("/admin/vouchers?batch=%ED%A0%80", "batch"),
        ("/admin/invoices?user=%FF", "user"),
        ("/wallet/?page=1%00", "page"),
        ("/usage/?period=2026-11%00", "period"),
        ("/admin/reports.csv?kind=vm%00", "kind"),
    ],
)
def test_a_nul_or_non_utf8_query_value_is_400_naming_it(app, client, site, path, name):
    before = written(app)
    answer = client.get(path)
    assert answer.status_code == 400
    assert re.search(
        f"The parameter “{name}” (contains a NUL character|is not valid UTF-8)", text(answer)
    )
    assert written(app) == before


@pytest.mark.parametrize(
    "path", ["/admin/jobs/calculate%00usage/run", "/admin/jobs/failed/job%ED%A0%80/retry"]
)
def test_a_nul_or_non_utf8_path_is_400(app, client, site, path):
    before = written(app)
    answer = client.submit(path)
    assert answer.status_code == 400
    assert "The address holds a NUL character or bytes that are not UTF-8 text." in text(answer)
    assert written(app) == before


def test_the_guard_covers_every_html_form_even_the_login_page(app, client):
    answer = client.submit("/auth/login", {"email": "a\x00@example.com", "password": "x"})
    assert answer.status_code == 400
    assert "The field “email” contains a NUL character." in text(answer)


@pytest.mark.parametrize(
    "form, field, too_long, problem",
    [
        ("voucher request", "reason", "x" * 1001, "Field cannot be longer than 1000 characters."),
        ("offline payment", "reference", "x" * 201, "Field cannot be longer than 200 characters."),
        ("voucher value", "note", "x" * 501, "Field cannot be longer than 500 characters."),
        ("grant credit", "amount", "1" * 33, "Field cannot be longer than 32 characters."),
    ],
)
def test_a_text_field_over_its_maximum_is_refused_not_truncated(
    app, client, site, form, field, too_long, problem
):
    url, data, name, _ = money_form(site, form)
    before = written(app)
    answer = client.submit(url, {**data, name: "5", field: too_long})
    assert answer.status_code == 422
    assert problem in field_error(answer, field)
    assert written(app) == before


def test_any_field_past_the_backstop_is_400(app, client, site):
    url, data, name, _ = money_form(site, "voucher request")
    before = written(app)
    answer = client.submit(url, {**data, name: "5", "extra": "x" * 20_001})
    assert answer.status_code == 400
    assert "The field “extra” is longer than 20,000 characters." in text(answer)
    assert written(app) == before


@pytest.mark.parametrize(
    "path, name, limit",
    [
        ("/admin/users?q=", "q", 254),
        ("/admin/invoices?user=", "user", 254),
        ("/admin/reports?label=", "label", 200),
        ("/wallet/top-up/done?session_id=", "session_id", 255),
    ],
)
def test_a_filter_over_its_maximum_is_400(client, site, path, name, limit):
    answer = client.get(path + "a" * (limit + 1))
    assert answer.status_code == 400
    assert f"The parameter “{name}” must be at most {limit} characters." in text(answer)


def test_a_user_filter_with_an_id_too_big_for_the_database_finds_nobody(client, site):
    huge = "99999999999999999999"
    assert "No user with the email" in text(client.get(f"/admin/invoices?user={huge}"))
    assert client.get(f"/admin/reports?user={huge}").status_code == 200
    answer = client.submit("/admin/invoices", {"email": huge, "period": "2026-10"})
    assert answer.status_code == 422 and "No user has this email." in text(answer)


@pytest.mark.parametrize(
    "batch", ["a\r\nSet-Cookie: stolen=1", 'x"; filename=evil.exe', "a" * 41, "../../etc"]
)
def test_the_voucher_export_refuses_a_batch_that_is_not_a_batch_name(client, site, batch):
    answer = client.get("/admin/vouchers.csv", query_string={"batch": batch})
    assert answer.status_code == 400
    # Nothing of the batch reaches a header (the portal's own session cookie may be set).
    assert "Content-Disposition" not in answer.headers
    assert all("stolen" not in value and "evil" not in value for _, value in answer.headers.items())
    assert re.search(
        "The batch must be a batch name like 20261121-a1b2c3|"
        "The parameter “batch” must be at most 40 characters",
        text(answer),
    )
    listing = client.get("/admin/vouchers", query_string={"batch": batch})
    assert listing.status_code == 400


def test_the_voucher_export_of_a_real_batch_names_the_file_after_it(app, client, site):
    with app.app_context():
        batch = vouchers.create_vouchers(value=Money(500, "USD"), count=2)[0].batch
        db.session.commit()
        db.session.remove()
    answer = client.get("/admin/vouchers.csv", query_string={"batch": batch})
    assert answer.status_code == 200
    assert answer.headers["Content-Disposition"] == f"attachment; filename=vouchers-{batch}.csv"
    assert len(answer.get_data(as_text=True).strip().splitlines()) == 3

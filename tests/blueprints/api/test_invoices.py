"""Invoices in the JSON API: the seed's Invoice fields, lines and
payments, owner scoping, the seed's manual-invoice curl example, admin listing, void and
offline payments through the ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import Invoice, LedgerTransaction, User
from portal.money import Money
from portal.services.metering import deployments
from portal.services.wallet import ledger
from tests.support.invoices import empty_invoices, issue_invoices

PREFIX = "/api/plugins/billing"
# The seed's documented curl example, byte for byte.
SEED_BODY = """{
    "user_id": "john@example.com",
    "period_start": "2025-01-01",
    "period_end": "2025-01-31"
  }"""
SEED_FIELDS = {
    "id",
    "user_id",
    "invoice_number",
    "period_start",
    "period_end",
    "subtotal",
    "subtotal_minor",
    "credits",
    "credits_minor",
    "total",
    "total_minor",
    "currency",
    "status",
    "due_date",
    "paid_at",
    "created_at",
    "pdf_sha256",
}


def post_raw(client, path, body: str, token: str, content_type="application/json"):
    return client.post(
        PREFIX + path,
        data=body,
        content_type=content_type,
        headers={"Authorization": f"Bearer {token}"},
    )


def count(app, model) -> int:
    with app.app_context():
        try:
            return db.session.scalar(select(func.count()).select_from(model))
        finally:
            db.session.remove()


def receivable(app, user_id: int) -> Money:
    with app.app_context():
        try:
            return ledger.balances(db.session.get(User, user_id)).receivable
        finally:
            db.session.remove()


@pytest.fixture
def john(app, make_user):
    """john@example.com ran 2 cores and 4 GB for 10 hours on 2 January 2025 (the seed's
    pricing example: $1.00 + $0.40)."""
    user = make_user("john@example.com", name="John Example")
    with app.app_context():
        start = datetime(2025, 1, 2, 8, tzinfo=UTC)
        dep, _ = deployments.create_deployment(
            external_id="vm-1",
            user=db.session.get(User, user.id),
            kind="vm",
            cpu_cores=2,
            memory_gb=4,
            storage_gb=0,
            started_at=start,
        )
        deployments.delete_deployment(dep, ended_at=datetime(2025, 1, 2, 18, tzinfo=UTC))
        db.session.commit()
        db.session.remove()
    return user


@pytest.fixture
def admin_token(api, make_user):
    return api.token(make_user("admin@example.com", admin=True), "admin")


@pytest.mark.parametrize("path", ["/invoices", "/admin/invoices"])
def test_the_seed_curl_example_generates_a_manual_invoice(
    app, client, api, john, admin_token, path
):
    response = post_raw(client, path, SEED_BODY, admin_token)
    assert response.status_code == 201, response.json
    body = response.json
    assert SEED_FIELDS <= set(body)
    assert body["user_id"] == john.id
    assert body["invoice_number"].startswith("INV-")
    # bare dates are whole days: the period is [Jan 1, Feb 1); period_end is the exclusive end
    assert (body["period_start"], body["period_end"]) == (
        "2025-01-01T00:00:00Z",
        "2025-02-01T00:00:00Z",
    )
    assert (body["subtotal"], body["subtotal_minor"]) == ("1.40", 140)
    assert (body["credits"], body["credits_minor"]) == ("0.00", 0)
    assert (body["total"], body["total_minor"], body["currency"]) == ("1.40", 140, "USD")
    assert body["status"] == "sent" and body["paid_at"] is None
    assert body["due_date"].endswith("Z") and body["created_at"].endswith("Z")
    # The answer is written before the request's commit; the PDF job runs after it (here at
    # once: the tests' queues are synchronous), so the invoice read back has its PDF.
    assert body["pdf_status"] == "pending"
    shown = client.get(
        f"/api/plugins/billing/invoices/{body['id']}",
        headers={"Authorization": f"Bearer {admin_token}"},
    ).json
    assert shown["pdf_status"] == "ready" and len(shown["pdf_sha256"]) == 64
    assert {k: v for k, v in shown.items() if not k.startswith("pdf_")} == {
        k: v for k, v in body.items() if not k.startswith("pdf_")
    }
    body = shown
    lines = {
        (
            l["description"],
            l["quantity"],
            l["unit"],
            l["unit_price"],
            l["amount"],
            l["amount_minor"],
        )
        for l in body["lines"]
    }
    assert lines == {
        ("vm-1 · CPU", "20", "core-hours", "0.05", "1.00", 100),
        ("vm-1 · Memory", "40", "gb-hours", "0.01", "0.40", 40),
    }
    assert body["payments"] == []
    assert receivable(app, john.id) == Money(140, "USD")

    # The same call again returns the same invoice with 200 and writes nothing.
    before = count(app, LedgerTransaction)
    again = post_raw(client, path, SEED_BODY, admin_token)
    assert again.status_code == 200 and again.json["id"] == body["id"]
    assert count(app, Invoice) == 1 and count(app, LedgerTransaction) == before

    # John sees it in his list, with the same figures.
    mine = api.get("/invoices", token=api.token(john)).json
    assert mine["total"] == 1 and mine["page"] == 1 and mine["per_page"] == 50
    assert {k: mine["items"][0][k] for k in SEED_FIELDS} == {k: body[k] for k in SEED_FIELDS}


def test_the_curl_example_as_curl_sends_it(client, john, admin_token):
    """`curl -d` labels the JSON application/x-www-form-urlencoded; it works all the same."""
    response = post_raw(
        client,
        "/invoices",
        SEED_BODY,
        admin_token,
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 201
    assert response.json["total_minor"] == 140


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"period_start": "2025-01-01", "period_end": "2025-01-31"}, 422, "user_id"),
        (
            {
                "user_id": "nobody@example.com",
                "period_start": "2025-01-01",
                "period_end": "2025-01-31",
            },
            422,
            "user_id",
        ),
        ({"user_id": "john@example.com", "period_end": "2025-01-31"}, 422, "period_start"),
        ({"user_id": "john@example.com", "period_start": "2025-01-01"}, 422, "period_end"),
        (
            {
                "user_id": "john@example.com",
                "period_start": "2025-01-01",
                "period_end": "2025-01-30",
            },
            422,
            "period_start",
        ),  # not a billing period (one day short)
        (
            {
                "user_id": "john@example.com",
                "period_start": "2025-01-05",
                "period_end": "2025-02-04",
            },
            422,
            "period_start",
        ),  # a month, but not from the invoice day (1)
        (
            {"user_id": "john@example.com", "period_start": "January", "period_end": "2025-01-31"},
            422,
            "period_start",
        ),
        (
            {
                "user_id": "john@example.com",
                "period_start": "2025-02-01",
                "period_end": "2025-02-28",
            },
            409,
            "period_start",
        ),  # nothing to invoice
    ],
)
def test_bad_manual_invoices_are_refused_and_write_nothing(
    app, api, john, admin_token, body, status, field
):
    before = count(app, LedgerTransaction)
    response = api.post("/invoices", json=body, token=admin_token)
    assert response.status_code == status, response.json
    error = response.json["error"]
    assert error["code"] == ("validation_failed" if status == 422 else "conflict")
    assert field in error["fields"]
    assert count(app, Invoice) == 0 and count(app, LedgerTransaction) == before


def test_a_period_that_has_not_ended_is_422(api, john, admin_token):
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    response = api.post(
        "/admin/invoices",
        token=admin_token,
        json={
            "user_id": "john@example.com",
            "period_start": start.isoformat().replace("+00:00", "Z"),
            "period_end": end.isoformat().replace("+00:00", "Z"),
        },
    )
    assert response.status_code == 422
    assert response.json["error"]["fields"] == {"period_end": "has not ended yet"}


@pytest.fixture
def two_customers(app, make_user):
    ann, bob = make_user("ann@example.com"), make_user("bob@example.com")
    ids = {"ann": issue_invoices(app, ann.id), "bob": issue_invoices(app, bob.id, name="api")}
    return ann, bob, ids


def test_a_user_sees_only_their_own_invoices(app, api, two_customers):
    ann, bob, ids = two_customers
    token = api.token(ann)
    listing = api.get("/invoices", token=token).json
    assert [i["id"] for i in listing["items"]] == list(reversed(ids["ann"]))  # newest first
    assert [i["total"] for i in listing["items"]] == ["37.20", "36.00"]
    detail = api.get(f"/invoices/{ids['ann'][0]}", token=token)
    assert detail.status_code == 200 and len(detail.json["lines"]) == 1
    assert detail.json["lines"][0]["quantity"] == "720"

    # Bob's invoice does not exist for Ann.
    other = api.get(f"/invoices/{ids['bob'][0]}", token=token)
    assert other.status_code == 404 and other.json["error"]["code"] == "not_found"
    assert "36.00" not in other.get_data(as_text=True)
    assert api.get(f"/invoices/{ids['bob'][0]}/pdf", token=token).status_code == 404
    # ...and a user token cannot ask for Bob's list.
    assert api.get(f"/invoices?user_id={bob.email}", token=token).status_code == 403


def test_status_filter_and_paging(app, api, two_customers):
    ann, _, ids = two_customers
    token = api.token(ann)
    assert api.get("/invoices?status=sent", token=token).json["total"] == 2
    assert api.get("/invoices?status=paid", token=token).json["items"] == []
    page = api.get("/invoices?per_page=1&page=2", token=token).json
    assert (page["total"], page["page"], page["per_page"]) == (2, 2, 1)
    assert [i["id"] for i in page["items"]] == [ids["ann"][0]]
    bad = api.get("/invoices?status=open", token=token)
    assert bad.status_code == 422 and "status" in bad.json["error"]["fields"]


def test_an_admin_lists_everyones_invoices_with_filters(app, api, make_user, two_customers):
    ann, bob, ids = two_customers
    token = api.token(make_user(admin=True), "admin")
    everyone = api.get("/admin/invoices", token=token).json
    assert everyone["total"] == 4
    assert {
        i["id"] for i in api.get(f"/admin/invoices?user_id={bob.email}", token=token).json["items"]
    } == set(ids["bob"])
    september = api.get("/admin/invoices?period=2026-09", token=token).json["items"]
    assert {i["id"] for i in september} == {ids["ann"][0], ids["bob"][0]}
    assert all(
        i["period_start"] == "2026-09-01T00:00:00Z" and i["period_end"] == "2026-10-01T00:00:00Z"
        for i in september
    )
    one = api.get(f"/admin/invoices?user_id={ann.id}&period=2026-10&status=sent", token=token)
    assert [i["id"] for i in one.json["items"]] == [ids["ann"][1]]
    assert api.get("/admin/invoices?period=Oct", token=token).status_code == 422
    assert api.get("/admin/invoices?user_id=nobody@example.com", token=token).status_code == 404
    # admins read any invoice, and may list a user's through GET /invoices?user_id=
    assert api.get(f"/invoices/{ids['bob'][1]}", token=token).status_code == 200
    assert api.get(f"/invoices?user_id={bob.id}", token=token).json["total"] == 2


@pytest.mark.parametrize(
    "method, path, body",
    [
        (
            "POST",
            "/invoices",
            {
                "user_id": "john@example.com",
                "period_start": "2025-01-01",
                "period_end": "2025-01-31",
            },
        ),
        (
            "POST",
            "/admin/invoices",
            {
                "user_id": "john@example.com",
                "period_start": "2025-01-01",
                "period_end": "2025-01-31",
            },
        ),
        ("GET", "/admin/invoices", None),
        ("POST", "/admin/invoices/{id}/void", {"reason": "mine"}),
        ("POST", "/admin/invoices/{id}/payments", {"amount": "1.00", "reference": "me"}),
    ],
)
@pytest.mark.parametrize("scope", ["user", "platform"])
def test_user_and_platform_tokens_get_403_on_admin_endpoints(
    app, api, make_user, john, method, path, body, scope
):
    (own,) = empty_invoices(app, john.id, 1)  # the caller's own invoice, even so
    token = api.token(john if scope == "user" else make_user(), scope)
    before = count(app, LedgerTransaction)
    url = path.format(id=own)
    response = (
        api.get(url, token=token) if method == "GET" else api.post(url, json=body, token=token)
    )
    assert response.status_code == 403 and response.json["error"]["code"] == "forbidden"
    assert count(app, LedgerTransaction) == before and count(app, Invoice) == 1


def test_offline_payments_through_the_api_move_the_ledger(app, api, make_user, two_customers):
    ann, _, ids = two_customers
    token = api.token(make_user(admin=True), "admin")
    sep = ids["ann"][0]
    assert receivable(app, ann.id) == Money(3600 + 3720, "USD")

    for body, field in [
        ({"amount": "36.001", "reference": "x"}, "amount"),
        ({"amount": 0, "reference": "x"}, "amount"),
        ({"amount": "36.01", "reference": "x"}, "amount"),
        ({"amount": "1.00"}, "reference"),
        ({"reference": "x"}, "amount"),
    ]:
        bad = api.post(f"/admin/invoices/{sep}/payments", json=body, token=token)
        assert bad.status_code == 422 and field in bad.json["error"]["fields"], body
    assert receivable(app, ann.id) == Money(3600 + 3720, "USD")

    # The amount as an exact JSON number, as the seed's examples write money.
    part = post_raw(
        api.client,
        f"/admin/invoices/{sep}/payments",
        '{"amount": 10.50, "reference": "BANK-1"}',
        token,
    )
    assert part.status_code == 200
    assert (part.json["amount_paid_minor"], part.json["amount_due"], part.json["status"]) == (
        1050,
        "25.50",
        "sent",
    )
    assert [(p["tender"], p["amount"], p["reference"]) for p in part.json["payments"]] == [
        ("offline", "10.50", "BANK-1")
    ]
    assert receivable(app, ann.id) == Money(3600 + 3720 - 1050, "USD")

    rest = api.post(
        f"/admin/invoices/{sep}/payments",
        json={"amount": "25.50", "reference": "BANK-2"},
        token=token,
    )
    assert rest.status_code == 200
    assert rest.json["status"] == "paid" and rest.json["paid_at"].endswith("Z")
    assert receivable(app, ann.id) == Money(3720, "USD")
    again = api.post(
        f"/admin/invoices/{sep}/payments",
        json={"amount": "1.00", "reference": "BANK-3"},
        token=token,
    )
    assert again.status_code == 409 and again.json["error"]["code"] == "invalid_transition"
    assert (
        api.post(f"/admin/invoices/{sep}/void", json={"reason": "x"}, token=token).status_code
        == 409
    )
    # The user sees the payments on the invoice.
    mine = api.get(f"/invoices/{sep}", token=api.token(ann)).json
    assert [p["reference"] for p in mine["payments"]] == ["BANK-1", "BANK-2"]


def test_void_through_the_api_reverses_the_ledger_and_allows_a_reissue(
    app, api, make_user, two_customers
):
    ann, _, ids = two_customers
    token = api.token(make_user(admin=True), "admin")
    oct_ = ids["ann"][1]
    before = count(app, LedgerTransaction)
    missing = api.post(f"/admin/invoices/{oct_}/void", json={"reason": " "}, token=token)
    assert missing.status_code == 422 and missing.json["error"]["fields"] == {
        "reason": "is required"
    }
    assert (
        api.post("/admin/invoices/999999/void", json={"reason": "x"}, token=token).status_code
        == 404
    )

    voided = api.post(f"/admin/invoices/{oct_}/void", json={"reason": "Wrong prices"}, token=token)
    assert voided.status_code == 200
    assert voided.json["status"] == "void" and voided.json["void_reason"] == "Wrong prices"
    assert receivable(app, ann.id) == Money(3600, "USD")
    assert count(app, LedgerTransaction) == before + 1

    reissued = api.post(
        "/admin/invoices",
        token=token,
        json={"user_id": ann.id, "period_start": "2026-10-01", "period_end": "2026-10-31"},
    )
    assert reissued.status_code == 201 and reissued.json["id"] != oct_
    assert reissued.json["total"] == "37.20"
    assert receivable(app, ann.id) == Money(3600 + 3720, "USD")
    statuses = {
        i["id"]: i["status"]
        for i in api.get("/invoices?per_page=10", token=api.token(ann)).json["items"]
    }
    assert statuses == {ids["ann"][0]: "sent", oct_: "void", reissued.json["id"]: "sent"}


def test_money_is_never_a_float_in_the_json(api, two_customers):
    ann, _, ids = two_customers
    raw = api.get(f"/invoices/{ids['ann'][0]}", token=api.token(ann)).get_data(as_text=True)

    def no_floats(value):
        if isinstance(value, float):
            raise AssertionError(f"a float in the JSON: {value!r}")
        if isinstance(value, dict):
            for v in value.values():
                no_floats(v)
        if isinstance(value, list):
            for v in value:
                no_floats(v)

    no_floats(json.loads(raw))

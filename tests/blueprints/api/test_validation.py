"""The API's one validation layer, probe by probe: each bad input is a 4xx naming the field
(in error.fields) and writes nothing. Each of these was a 500, or was taken and stored
wrongly, before the layer (issue #10)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import (
    CheckoutSession,
    CreditLot,
    Deployment,
    DeploymentInterval,
    InvoicePayment,
    LedgerTransaction,
    MeterMark,
    UsageDaily,
    Voucher,
)
from portal.services.metering import rollups
from portal.services.metering.jobs import backfill_deployment
from portal.tasks import queues
from tests.support.invoices import empty_invoices

PREFIX = "/api/plugins/billing"
WRITTEN = (
    LedgerTransaction,
    CreditLot,
    Deployment,
    DeploymentInterval,
    Voucher,
    CheckoutSession,
    InvoicePayment,
    MeterMark,
    UsageDaily,
)


def rows(app) -> dict[str, int]:
    """How many rows each table a bad request could touch holds."""
    with app.app_context():
        try:
            return {
                m.__tablename__: db.session.scalar(select(func.count()).select_from(m))
                for m in WRITTEN
            }
        finally:
            db.session.remove()


def send(
    client,
    method: str,
    path: str,
    token: str,
    body: object = None,
    *,
    raw: str | None = None,
    headers: dict | None = None,
):
    data = raw if raw is not None else (None if body is None else json.dumps(body))
    return client.open(
        PREFIX + path,
        method=method,
        data=data,
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
    )


def refused(response, field: str, status: int = 422) -> str:
    """The response is ``status`` with ``field`` named; returns what it says about it."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    error = response.json["error"]
    if status == 422:
        assert error["code"] == "validation_failed"
        assert field in error["fields"], error
        return error["fields"][field]
    return error["message"]


@pytest.fixture
def john(make_user):
    return make_user("john@example.com")


@pytest.fixture
def tokens(api, john, make_user):
    return {
        "user": api.token(john),
        "admin": api.token(make_user(admin=True), "admin"),
        "platform": api.token(make_user(admin=True), "platform"),
    }


@pytest.fixture
def invoice_id(app, john) -> int:
    """An issued invoice of john's (of nothing: quick to make; the requests never reach it)."""
    return empty_invoices(app, john.id, 1)[0]


def credit(**change):
    return {"user_id": "john@example.com", "amount": "5.00", "reason": "r", **change}


def deployment(**change):
    return {
        "external_id": "vm-1",
        "user_id": "john@example.com",
        "kind": "vm",
        "cpu_cores": 2,
        "memory_gb": 4,
        "storage_gb": 0,
        **change,
    }


# -- money ---------------------------------------------------------------------------------

AMOUNT_FIELDS = [  # (method, path, scope, body with the amount at {}, field)
    ("POST", "/create-checkout", "user", '{"purpose": "topup", "amount": %s}', "amount"),
    (
        "POST",
        "/credits",
        "admin",
        '{"user_id": "john@example.com", "reason": "r", "amount": %s}',
        "amount",
    ),
    ("POST", "/admin/vouchers", "admin", '{"value": %s}', "value"),
    (
        "POST",
        "/admin/invoices/{invoice}/payments",
        "admin",
        '{"reference": "wire", "amount": %s}',
        "amount",
    ),
]


@pytest.mark.parametrize(
    "amount, problem",
    [
        ("1e30", "at most 1000000000"),  # was a 500
        ("1e309", "at most 1000000000"),  # was a 500 (beyond a float)
        ("99999999999999999999", "at most 1000000000"),  # beyond 64-bit minor units
        ('"99999999999999999999.99"', "at most 1000000000"),
        ("1000000000.01", "at most 1000000000"),
        ('"1_000"', "digits 0-9"),  # was taken as 1000
        ('"\u0661\u0660"', "digits 0-9"),  # Arabic-Indic 10, was taken as 10
        ('"1e3"', "digits 0-9"),
        ('" 5"', "digits 0-9"),
        ('"5."', "digits 0-9"),
        ('"-5"', "digits 0-9"),
        ("-5", "greater than 0"),
        ("NaN", "not valid JSON"),
        ("true", "must be a number"),
        ("[5]", "must be a number"),
        ('"5.001"', "at most 2 decimal places"),
        ("5.000", "at most 2 decimal places"),
    ],
)
@pytest.mark.parametrize(
    "method, path, scope, template, field", AMOUNT_FIELDS, ids=[p for _, p, *_ in AMOUNT_FIELDS]
)
def test_amounts_are_ascii_decimals_within_bounds(
    app, client, tokens, invoice_id, amount, problem, method, path, scope, template, field
):
    before = rows(app)
    response = send(
        client, method, path.format(invoice=invoice_id), tokens[scope], raw=template % amount
    )
    said = refused(response, "body" if problem == "not valid JSON" else field)
    assert problem in said
    assert rows(app) == before


def test_the_largest_amount_is_taken(app, api, john, tokens):
    response = api.post("/credits", json=credit(amount="1000000000.00"), token=tokens["admin"])
    assert response.status_code == 201
    assert response.json["amount_minor"] == 100_000_000_000


# -- wrong JSON types are refused, never coerced ----------------------------------------------


@pytest.mark.parametrize(
    "change, field",
    [
        ({"reason": []}, "reason"),  # was stored as "[]"
        ({"reason": {"a": 1}}, "reason"),
        ({"reason": 5}, "reason"),
        ({"user_id": True}, "user_id"),
        ({"user_id": 1.5}, "user_id"),
        ({"user_id": 99999999999999999999}, "user_id"),  # was a 500 (integer overflow)
        ({"expires_at": 20300101}, "expires_at"),
        ({"surprise": "field"}, "surprise"),
    ],
)
def test_wrong_types_are_refused(app, api, john, tokens, change, field):
    before = rows(app)
    refused(api.post("/credits", json=credit(**change), token=tokens["admin"]), field)
    assert rows(app) == before


@pytest.mark.parametrize("ref", ["\u00b2", "\u0661", "not-an-id"])
def test_a_user_id_that_names_nobody_is_404(app, api, john, tokens, ref):
    """ "²" is a digit to str.isdigit but not to int(): a 500 before."""
    before = rows(app)
    refused(api.post("/credits", json=credit(user_id=ref), token=tokens["admin"]), "", 404)
    assert rows(app) == before


@pytest.mark.parametrize(
    "value", [False, True, "", "two", [], {}, 1e19, "1e19", 10**19, "1025", -1]
)
def test_cpu_cores_must_be_a_number_within_bounds(app, api, john, tokens, value):
    """false and "" were taken as 0 cores, 1e19 was a 500."""
    before = rows(app)
    body = deployment(cpu_cores=value)
    raw = json.dumps(body).replace('"cpu_cores": 1e+19', '"cpu_cores": 1e19')
    refused(send(api.client, "POST", "/deployments", tokens["platform"], raw=raw), "cpu_cores")
    assert rows(app) == before


@pytest.mark.parametrize(
    "change, field",
    [
        ({"public_ip": "yes"}, "public_ip"),
        ({"public_ip": 1}, "public_ip"),
        ({"memory_gb": 65537}, "memory_gb"),
        ({"storage_gb": "100001"}, "storage_gb"),
        ({"kind": ["vm"]}, "kind"),
        ({"state": "terminated"}, "state"),
    ],
)
def test_deployment_fields_are_typed(app, api, john, tokens, change, field):
    before = rows(app)
    refused(api.post("/deployments", json=deployment(**change), token=tokens["platform"]), field)
    assert rows(app) == before


def test_counts_are_json_integers(app, api, tokens):
    before = rows(app)
    for body, field in [
        ({"value": "5", "count": "2"}, "count"),
        ({"value": "5", "count": 10001}, "count"),
        ({"value": "5", "max_redemptions": True}, "max_redemptions"),
        ({"value": "5", "max_redemptions": 1000001}, "max_redemptions"),
    ]:
        refused(api.post("/admin/vouchers", json=body, token=tokens["admin"]), field)
    assert rows(app) == before


# -- text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, scope, body, field, limit",
    [
        ("POST", "/credits", "admin", credit(reason="x" * 501), "reason", 500),
        ("POST", "/deployments", "platform", deployment(name="n" * 201), "name", 200),  # was cut
        ("POST", "/admin/vouchers", "admin", {"value": "5", "note": "n" * 501}, "note", 500),
        ("POST", "/users", "platform", {"email": "a" * 250 + "@x.io"}, "email", 254),
        ("POST", "/users", "platform", {"email": "p@example.com", "name": "n" * 201}, "name", 200),
        ("POST", "/vouchers/redeem", "user", {"code": "A" * 65}, "code", 64),
        ("POST", "/admin/invoices/{invoice}/void", "admin", {"reason": "r" * 401}, "reason", 400),
        (
            "POST",
            "/admin/invoices/{invoice}/payments",
            "admin",
            {"amount": "1.00", "reference": "r" * 201},
            "reference",
            200,
        ),
    ],
)
def test_text_too_long_is_refused_not_truncated(
    app, client, tokens, invoice_id, method, path, scope, body, field, limit
):
    before = rows(app)
    said = refused(
        send(client, method, path.format(invoice=invoice_id), tokens[scope], body), field
    )
    assert said == f"must be at most {limit} characters"
    assert rows(app) == before


@pytest.mark.parametrize(
    "method, path, scope, body, field",
    [
        ("POST", "/credits", "admin", credit(reason="a\x00b"), "reason"),
        ("POST", "/deployments", "platform", deployment(name="web\x00"), "name"),
        ("POST", "/deployments", "platform", deployment(labels={"project": "a\x00"}), "labels"),
        ("POST", "/deployments", "platform", deployment(user_id="john@example.com\x00"), "user_id"),
        ("POST", "/users", "platform", {"email": "nul\x00@example.com"}, "email"),
        ("POST", "/vouchers/redeem", "user", {"code": "\x00" * 20}, "code"),
        ("POST", "/admin/vouchers", "admin", {"value": "5", "note": "\x00"}, "note"),
    ],
)
def test_nul_characters_are_refused(app, client, tokens, method, path, scope, body, field):
    """PostgreSQL refuses NUL in text: a 500 before."""
    before = rows(app)
    said = refused(send(client, method, path, tokens[scope], body), field)
    assert "NUL" in said
    assert rows(app) == before


@pytest.mark.parametrize(
    "path, field",
    [
        ("/admin/vouchers?batch=a%00b", "batch"),
        ("/admin/reports?label=project%3Da%00", "label"),
        ("/admin/invoices?user_id=x%00@example.com", "user_id"),
        ("/admin/reports?kind=vm%00", "kind"),
    ],
)
def test_nul_characters_in_filters_are_refused(app, api, tokens, path, field):
    said = refused(api.get(path, token=tokens["admin"]), field)
    assert "NUL" in said or "must be one of" in said


@pytest.mark.parametrize(
    "raw, field",
    [
        ('{"user_id": "john@example.com", "amount": "5", "reason": "\\ud800"}', "reason"),
        ('{"user_id": "john@example.com", "amount": "5", "reason": "a\\udfffb"}', "reason"),
        ('{"user_id": "john@example.com\\ud800", "amount": "5", "reason": "r"}', "user_id"),
    ],
)
def test_lone_surrogates_are_refused(app, client, tokens, raw, field):
    before = rows(app)
    said = refused(send(client, "POST", "/credits", tokens["admin"], raw=raw), field)
    assert "surrogate" in said
    assert rows(app) == before


def test_a_lone_surrogate_as_a_field_name_is_refused_in_printable_json(app, client, tokens):
    before = rows(app)
    raw = '{"user_id": "john@example.com", "amount": "5", "reason": "r", "\\ud800": 1}'
    response = send(client, "POST", "/credits", tokens["admin"], raw=raw)
    assert response.status_code == 422
    (name,) = response.json["error"]["fields"]
    name.encode("utf-8")  # the error names it in encodable text
    assert rows(app) == before


# -- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"reason": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"labels": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001,
    ],
)
def test_deeply_nested_json_is_refused(app, client, tokens, raw):
    """RecursionError, a 500, before."""
    before = rows(app)
    response = send(client, "POST", "/credits", tokens["admin"], raw=raw)
    assert response.status_code == 422
    assert response.json["error"]["fields"] == {"body": "nests too deeply"}
    assert rows(app) == before


@pytest.mark.parametrize(
    "labels, problem",
    [
        ({f"k{n}": "v" for n in range(33)}, "at most 32 labels"),
        ({"project": "v" * 257}, "at most 256 characters"),
        ({"k" * 64: "v"}, "keys must be"),
        ({"": "v"}, "keys must be"),
        ({"bad key": "v"}, "keys must be"),
        ({"project": 5}, "must be a string"),
        (["project"], "object of strings"),
    ],
)
def test_label_maps_have_a_bounded_count_and_size(app, api, john, tokens, labels, problem):
    before = rows(app)
    said = refused(
        api.post("/deployments", json=deployment(labels=labels), token=tokens["platform"]), "labels"
    )
    assert problem in said
    assert rows(app) == before


def test_the_largest_label_map_is_taken(app, api, john, tokens):
    labels = {f"team.example/k{n:02d}": "v" * 256 for n in range(32)}
    response = api.post("/deployments", json=deployment(labels=labels), token=tokens["platform"])
    assert response.status_code == 201
    assert response.json["labels"] == labels


# -- dates and times -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31",
        "9999-12-31T00:00:00Z",
        "2100-01-01",
        "1999-12-31",
        "0001-01-01T00:00:00Z",
        "2030-02-30",
        "2030-01-31T25:00:00Z",
        "2030-01-31T10:00:00+24:00",
        "\u0662\u0660\u0663\u0660-01-01",
        "2030-1-1",
    ],
)
def test_dates_out_of_bounds_or_malformed_are_refused(app, api, john, tokens, value):
    """expires_at 9999-12-31 was a 500 (its next day overflows)."""
    before = rows(app)
    refused(
        api.post("/credits", json=credit(expires_at=value), token=tokens["admin"]), "expires_at"
    )
    refused(
        api.post(
            "/admin/vouchers", json={"value": "5", "expires_at": value}, token=tokens["admin"]
        ),
        "expires_at",
    )
    assert rows(app) == before


@pytest.mark.parametrize(
    "path, field",
    [
        ("/wallet/transactions?page=99999999999999999999", "page"),  # was a 500
        ("/invoices?page=99999999999999999999", "page"),
        ("/invoices?page=1000001", "page"),
        ("/invoices?per_page=201", "per_page"),
        ("/invoices?per_page=0", "per_page"),
        ("/invoices?page=%D9%A1", "page"),  # Arabic-Indic 1
        ("/invoices?page=1&page=2", "page"),
        ("/invoices?status=open", "status"),
        ("/usage?period=9999-12", "period"),
        ("/usage?period=%D9%A2%D9%A0%D9%A2%D9%A6-11", "period"),
        ("/usage?user_id=99999999999999999999", "user_id"),
    ],
)
def test_query_strings_are_validated_by_the_same_layer(api, tokens, path, field):
    refused(api.get(path, token=tokens["user"]), field)


@pytest.mark.parametrize(
    "path, field",
    [
        ("/admin/invoices?page=99999999999999999999", "page"),
        ("/admin/invoices?period=2026-13", "period"),
        ("/admin/vouchers?page=99999999999999999999", "page"),
        ("/admin/reports?from=9999-12-31", "from"),
        ("/admin/reports?to=2026-02-30", "to"),
        ("/admin/reports?from=2026-11-02&to=2026-11-01", "to"),
        ("/admin/reports?from=2026-11-02&to=2026-11-01&format=csv", "to"),
        ("/admin/reports?label=project", "label"),
        ("/admin/reports?format=xml", "format"),
    ],
)
def test_admin_query_strings_are_validated(api, tokens, path, field):
    refused(api.get(path, token=tokens["admin"]), field)


@pytest.mark.parametrize(
    "path",
    [
        "/invoices/99999999999999999999",
        "/invoices/2147483648/pdf",
        "/jobs/runs/99999999999999999999",
        "/admin/invoices/99999999999999999999/void",
    ],
)
def test_ids_beyond_a_database_integer_are_not_found(api, tokens, path):
    """Integer overflow in the query: a 500 before."""
    response = (
        api.get(path, token=tokens["admin"])
        if "void" not in path
        else api.post(path, json={"reason": "x"}, token=tokens["admin"])
    )
    refused(response, "", 404)


def test_an_idempotency_key_is_bounded(app, api, john, tokens):
    before = rows(app)
    refused(
        api.post(
            "/credits", json=credit(), token=tokens["admin"], headers={"Idempotency-Key": "k" * 101}
        ),
        "Idempotency-Key",
    )
    assert rows(app) == before


# -- deployments: addressable, and reports bounded in the past -------------------------------


@pytest.mark.parametrize(
    "external_id",
    ["a/b", "..", ".hidden", "a b", "a?b", "a#b", "é", "x" * 129, "", "a%2Fb", "a\x00b"],
)
def test_external_ids_have_a_declared_character_set(app, api, john, tokens, external_id):
    """ "a/b" was taken with 201, and then GET, PATCH and DELETE were all 404: it billed
    forever."""
    before = rows(app)
    said = refused(
        api.post(
            "/deployments", json=deployment(external_id=external_id), token=tokens["platform"]
        ),
        "external_id",
    )
    assert said.startswith("must be 1 to 128 letters, digits and . _ : -")
    assert rows(app) == before


@pytest.mark.parametrize("external_id", ["vm-1", "ns:pod_7.web-0", "A" * 128, "0"])
def test_every_accepted_external_id_can_be_read_changed_and_ended(
    app, api, john, tokens, external_id
):
    token = tokens["platform"]
    assert (
        api.post("/deployments", json=deployment(external_id=external_id), token=token).status_code
        == 201
    )
    url = f"/deployments/{external_id}"
    assert api.get(url, token=token).json["external_id"] == external_id
    patched = api.client.patch(
        PREFIX + url, json={"cpu_cores": 1}, headers={"Authorization": f"Bearer {token}"}
    )
    assert patched.status_code == 200 and patched.json["cpu_cores"] == "1"
    ended = api.client.delete(PREFIX + url, headers={"Authorization": f"Bearer {token}"})
    assert ended.status_code == 200 and ended.json["state"] == "terminated"


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    "started_at, problem",
    [
        ("1900-01-01T00:00:00Z", "between 2000-01-01 and 2099-12-31"),
        ("2001-01-01T00:00:00Z", "must not be more than 31 days in the past"),
    ],
)
def test_a_start_far_in_the_past_is_refused_at_once(app, api, john, tokens, started_at, problem):
    """started_at 1900 metered 46,360 rollup rows inside the request (15.6 s, another
    user's write blocked for 14 s)."""
    before = rows(app)
    said = refused(
        api.post("/deployments", json=deployment(started_at=started_at), token=tokens["platform"]),
        "started_at",
    )
    assert problem in said
    assert rows(app) == before


def test_changes_and_ends_are_bounded_in_the_past_too(app, api, john, tokens, monkeypatch):
    token = tokens["platform"]
    assert api.post("/deployments", json=deployment(), token=token).status_code == 201
    before = rows(app)
    old = iso(datetime.now(UTC) - timedelta(days=32))
    headers = {"Authorization": f"Bearer {token}"}
    said = refused(
        api.client.patch(
            PREFIX + "/deployments/vm-1",
            headers=headers,
            json={"cpu_cores": 4, "effective_at": old},
        ),
        "effective_at",
    )
    assert said == "must not be more than 31 days in the past"
    said = refused(
        api.client.delete(PREFIX + "/deployments/vm-1", headers=headers, json={"ended_at": old}),
        "ended_at",
    )
    assert said == "must not be more than 31 days in the past"
    assert rows(app) == before
    # The bound is the operator's setting.
    monkeypatch.setitem(app.config, "DEPLOYMENT_BACKDATE_MAX_DAYS", 2)
    recent = iso(datetime.now(UTC) - timedelta(days=3))
    refused(
        api.post(
            "/deployments", json=deployment(external_id="vm-2", started_at=recent), token=token
        ),
        "started_at",
    )


def test_a_backdated_start_is_metered_by_a_job_after_the_answer(
    app, api, john, tokens, runner, monkeypatch
):
    token = tokens["platform"]
    now = datetime.now(UTC)
    # john's chunk is metered up to the last complete hour
    assert (
        api.post(
            "/deployments",
            json=deployment(external_id="first", started_at=iso(now - timedelta(hours=3))),
            token=token,
        ).status_code
        == 201
    )
    assert runner.invoke(args=["billing", "meter"]).exit_code == 0
    with app.app_context():
        mark = db.session.scalar(select(MeterMark.metered_through))
        db.session.remove()
    assert mark > now - timedelta(hours=2)

    enqueued = []
    monkeypatch.setattr(queues, "enqueue", lambda *args, **kwargs: enqueued.append(args))
    start = (now - timedelta(days=10)).replace(minute=30, second=0, microsecond=0)
    response = api.post(
        "/deployments", json=deployment(external_id="late", started_at=iso(start)), token=token
    )
    assert response.status_code == 201
    with app.app_context():
        late = db.session.scalar(select(Deployment.id).where(Deployment.external_id == "late"))
        metered = db.session.scalar(
            select(func.count()).select_from(UsageDaily).where(UsageDaily.deployment_id == late)
        )
        db.session.remove()
    assert metered == 0  # the request metered nothing itself
    [(queue, func_name, deployment_id, since)] = enqueued
    assert (queue, func_name, deployment_id) == (
        "metering",
        "metering.backfill_deployment",
        late,
    )
    assert datetime.fromisoformat(since) == start

    monkeypatch.undo()
    with app.app_context():
        figures = backfill_deployment(deployment_id, since)
        days = db.session.scalars(
            select(UsageDaily.day).where(UsageDaily.deployment_id == late)
        ).all()
        cpu_seconds = db.session.scalar(
            select(func.sum(UsageDaily.cpu_ms)).where(UsageDaily.deployment_id == late)
        )
        assert rollups.audit_usage() == []
        again = backfill_deployment(deployment_id, since)  # a retried job changes nothing
        assert rollups.audit_usage() == []
        db.session.remove()
    assert (
        figures["rows"] == len(days) == (mark.date() - start.date()).days + (mark.hour > 0)
        and len(days) <= 32
    )
    assert cpu_seconds == 2000 * int((mark - start).total_seconds())
    assert again["rows"] == figures["rows"]

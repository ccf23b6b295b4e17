"""The OpenAPI document: it lists every API route, is valid OpenAPI 3.1, is shown as a page,
and the API keeps to it under property-based testing (schemathesis over the document,
against the app on this run's database, with user, admin and platform tokens)."""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.generation.drivers import CoverageGenerator
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.generation.overrides import Override
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from portal import create_app
from portal.blueprints.api.spec import document
from portal.extensions import db
from portal.models import User
from portal.services.metering import deployments
from tests.support.app import BASE_CONFIG
from tests.support.invoices import SEP, issue_invoices
from tests.support.payments import (
    saved_card,  # noqa: F401
)

PREFIX = "/api/plugins/billing"
SIGNED = {"/webhook"}  # the gateway's events: a signature over the body, no token to fuzz


def api_routes(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) for every route the app has under the API's prefix."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(PREFIX + "/"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule[len(PREFIX) :])
        routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def test_the_document_lists_every_api_route(app, client):
    doc = client.get(PREFIX + "/openapi.json").json
    listed = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert listed == api_routes(app)
    assert len(listed) >= 30


def test_the_document_is_valid_openapi_3_1(client):
    response = client.get(PREFIX + "/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    doc = response.json
    assert doc["openapi"] == "3.1.0"
    OPENAPI_31_VALIDATOR.validate(doc)
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(api_routes(client.application))


def test_each_operation_names_its_scopes_and_errors(client):
    doc = client.get(PREFIX + "/openapi.json").json
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            if path in SIGNED or path in ("/openapi.json", "/docs"):
                assert op["security"] == [], where
                continue
            scopes = {scope for requirement in op["security"] for scope in requirement["bearer"]}
            assert scopes and scopes <= {"user", "admin", "platform"}, where
            assert {"401", "403"} <= set(op["responses"]), where
            if "requestBody" in op or op.get("parameters"):
                assert "422" in op["responses"] or all(
                    p["in"] == "path" for p in op["parameters"]
                ), where
            for status, response in op["responses"].items():
                if status >= "400":
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorBody"
                    }, where
    webhook = doc["paths"]["/webhook"]["post"]
    assert webhook["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StripeEvent"
    }
    events = str(doc["components"]["schemas"])
    for event_type in (
        "checkout.session.completed",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.requires_action",
        "payment_intent.processing",
        "setup_intent.succeeded",
        "charge.refunded",
        "charge.dispute.created",
    ):
        assert event_type in events
    assert [p["name"] for p in webhook["parameters"]] == ["Stripe-Signature"]


def test_the_reference_page_shows_the_document(app, client, auth, make_user):
    page = client.get(PREFIX + "/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "<script>" not in html and "<script " not in html.replace(
        '<script src="/static/js/htmx.min.js" defer>', ""
    ).replace('<script src="/static/js/portal.js" defer>', "")
    for text in (
        "POST /api/plugins/billing/credits",
        "GrantCredit",
        "validation_failed",
        "Token scopes: admin",
        "Idempotency-Key",
        "checkout.session.completed",
        'href="/api/plugins/billing/openapi.json"',
    ):
        assert text in html, text
    # Linked from the account menu.
    auth.login(make_user())
    assert 'href="/api/plugins/billing/docs"' in client.get("/wallet/").get_data(as_text=True)


# -- property-based: the API against its document ------------------------------------------


def _document() -> dict:
    """The document as the app serves it; it depends on no database, so an app on an
    in-memory one gives it at collection time."""
    app = create_app({**BASE_CONFIG, "DATABASE_URL": "sqlite://", "REDIS_URL": ""})
    with app.app_context():
        doc = document(app)
        db.engine.dispose()
    return doc


SCHEMA = schemathesis.openapi.from_dict(_document())
OPERATIONS = [
    op for op in (result.ok() for result in SCHEMA.get_all_operations()) if op.path not in SIGNED
]
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def tokens(pay_app, api, make_user, in_app):
    """A user with a saved card, a running deployment (vm-1) and an issued invoice, an
    admin and the platform: a token for each scope. Ids restart at 1 in every test, so
    generated ids meet these objects now and then."""
    user = make_user("john@example.com")
    issue_invoices(pay_app, user.id, (SEP,))
    in_app(saved_card, user.id)
    with pay_app.app_context():
        deployments.create_deployment(
            external_id="vm-1",
            user=db.session.get(User, user.id),
            kind="vm",
            cpu_cores=1,
            memory_gb=2,
            storage_gb=10,
        )
        db.session.commit()
        db.session.remove()
    return {
        "user": api.token(user),
        "admin": api.token(make_user(admin=True), "admin"),
        "platform": api.token(make_user(admin=True), "platform"),
    }


TAGS = sorted({op.definition.raw["tags"][0] for op in OPERATIONS})


def _call(app, operation, case) -> None:
    if (
        operation.label == "POST /admin/vouchers"
        and isinstance(case.body, dict)
        and isinstance(case.body.get("count"), int)
        and case.body["count"] > 20
    ):
        case.body["count"] = 20  # a batch of 10,000 codes is valid, and slow to make
    response = case.call(app=app)
    assert response.status_code < 500, f"{case.as_curl_command()}\n{response.text}"
    case.validate_response(response, checks=CHECKS)


def _check_operation(app, operation, tokens) -> None:
    scopes = operation.definition.raw.get("x-scopes") or []
    headers = {"Authorization": f"Bearer {tokens[scopes[0]]}"} if scopes else {}
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    # Schemathesis' coverage phase: each parameter and field at and beyond its bounds
    # (the largest page, one past it, a string one character too long, a wrong type...).
    coverage = CoverageGenerator(
        operation=operation,
        generation_modes=modes,
        generation_config=SCHEMA.config.generation_for(operation=operation, phase="coverage"),
        auth_storage=None,
        override=Override(headers=headers),
        feedback=FeedbackSources(),
    )
    for case in coverage:
        _call(app, operation, case)

    # Then random requests, valid and invalid.
    @settings(
        max_examples=12,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    @given(case=st.one_of(*(operation.as_strategy(mode, headers=headers) for mode in modes)))
    def fuzz(case):
        _call(app, operation, case)

    fuzz()


@pytest.mark.parametrize("tag", TAGS)
def test_the_api_keeps_to_its_document(pay_app, tokens, tag):
    """Valid and invalid requests (schemathesis' positive and negative data) for every
    operation of one tag: no 5xx, every status documented, every body as its schema
    says. Each operation is called with a token of the first scope it names.
    Derandomized, a dozen requests per operation, one after another on the same data."""
    failures = []
    for operation in (op for op in OPERATIONS if op.definition.raw["tags"][0] == tag):
        try:
            _check_operation(pay_app, operation, tokens)
        except Exception as exc:  # each operation's failure is reported, not just the first
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)

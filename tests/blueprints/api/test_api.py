"""The JSON API's accounts endpoints: credits, users, wallet."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import CreditLot, LedgerTransaction, OutboundEmail, User

PREFIX = "/api/plugins/billing"
# The seed's documented curl example, byte for byte: 50.00 is a JSON number.
SEED_BODY = (
    '{"user_id": "john@example.com", "amount": 50.00, "reason": "Service credit for downtime"}'
)


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def written(app) -> tuple[int, int]:
    return count(app, LedgerTransaction), count(app, CreditLot)


@pytest.fixture
def john(make_user):
    return make_user("john@example.com", name="John Example")


@pytest.fixture
def admin_token(api, make_user):
    return api.token(make_user("admin@example.com", admin=True), "admin")


def post_raw(client, path, body: str, token: str, headers=None):
    return client.post(
        PREFIX + path,
        data=body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
    )


# -- credits -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/credits", "/admin/credits"])
def test_the_seed_curl_example_grants_credit(app, client, api, john, admin_token, path):
    response = post_raw(client, path, SEED_BODY, admin_token)
    assert response.status_code == 201
    assert response.is_json
    body = response.json
    assert body["amount"] == "50.00"
    assert body["amount_minor"] == 5000
    assert body["currency"] == "USD"
    assert body["remaining_minor"] == 5000
    assert body["reason"] == "Service credit for downtime"
    assert body["user_id"] == john.id
    assert body["expires_at"] is None

    wallet = api.get("/wallet", token=api.token(john)).json
    assert wallet["credit_minor"] == 5000
    assert wallet["credit"] == "50.00"
    assert wallet["cash_minor"] == 0 and wallet["voucher_minor"] == 0
    assert written(app) == (1, 1)


def test_without_an_idempotency_key_every_call_is_a_new_grant(app, client, api, john, admin_token):
    assert post_raw(client, "/credits", SEED_BODY, admin_token).status_code == 201
    assert post_raw(client, "/credits", SEED_BODY, admin_token).status_code == 201
    assert api.get("/wallet", token=api.token(john)).json["credit_minor"] == 10000


@pytest.mark.parametrize(
    "amount,minor", [('"50.00"', 5000), ("50", 5000), ("0.01", 1), ('"1234.5"', 123450)]
)
def test_amounts_are_parsed_exactly(app, client, john, admin_token, amount, minor):
    body = f'{{"user_id": "john@example.com", "amount": {amount}, "reason": "r"}}'
    response = post_raw(client, "/credits", body, admin_token)
    assert response.status_code == 201
    assert response.json["amount_minor"] == minor


def test_user_id_may_be_the_numeric_id(api, john, admin_token):
    for ref in (john.id, str(john.id)):
        response = api.post(
            "/credits", token=admin_token, json={"user_id": ref, "amount": "1.00", "reason": "r"}
        )
        assert response.status_code == 201
        assert response.json["user_id"] == john.id


@pytest.mark.parametrize(
    "amount,problem",
    [
        ("50.001", "decimal places"),
        ('"50.001"', "decimal places"),
        ("0", "greater than 0"),
        ("0.00", "greater than 0"),
        ("-5.00", None),
        ('"-5"', None),
        ('"fifty"', None),
        ("true", None),
        ("null", "is required"),
        ("[50]", None),
        ('""', "is required"),
    ],
)
def test_bad_amounts_are_422_and_write_nothing(app, client, john, admin_token, amount, problem):
    body = f'{{"user_id": "john@example.com", "amount": {amount}, "reason": "r"}}'
    response = post_raw(client, "/credits", body, admin_token)
    assert response.status_code == 422
    error = response.json["error"]
    assert error["code"] == "validation_failed"
    assert "amount" in error["fields"]
    if problem:
        assert problem in error["fields"]["amount"]
    assert written(app) == (0, 0)


@pytest.mark.parametrize(
    "body,field",
    [
        ({"user_id": "john@example.com", "amount": "5.00"}, "reason"),
        ({"user_id": "john@example.com", "amount": "5.00", "reason": "   "}, "reason"),
        ({"amount": "5.00", "reason": "r"}, "user_id"),
        ({"user_id": "john@example.com", "reason": "r"}, "amount"),
        ({"user_id": "john@example.com", "amount": "5.00", "reason": "x" * 501}, "reason"),
        (
            {
                "user_id": "john@example.com",
                "amount": "5.00",
                "reason": "r",
                "expires_at": "2001-01-01",
            },
            "expires_at",
        ),
        (
            {"user_id": "john@example.com", "amount": "5.00", "reason": "r", "expires_at": "soon"},
            "expires_at",
        ),
        (
            {
                "user_id": "john@example.com",
                "amount": "5.00",
                "reason": "r",
                "expires_at": "2030-01-31T10:00:00",
            },
            "expires_at",
        ),
    ],
)
def test_missing_or_bad_fields_are_422(app, api, john, admin_token, body, field):
    response = api.post("/credits", token=admin_token, json=body)
    assert response.status_code == 422
    assert field in response.json["error"]["fields"]
    assert written(app) == (0, 0)


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '"a string"', ""])
def test_a_body_that_is_not_a_json_object_is_422(app, client, john, admin_token, body):
    response = post_raw(client, "/credits", body, admin_token)
    assert response.status_code == 422
    assert response.json["error"]["code"] == "validation_failed"
    assert written(app) == (0, 0)


@pytest.mark.parametrize("ref", ["nobody@example.com", 999999, "not-an-id"])
def test_an_unknown_user_is_404(app, api, admin_token, ref):
    response = api.post(
        "/credits", token=admin_token, json={"user_id": ref, "amount": "5.00", "reason": "r"}
    )
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    assert written(app) == (0, 0)


def test_an_idempotency_key_grants_once(app, client, api, john, admin_token):
    key = {"Idempotency-Key": "grant-7f3a"}
    first = post_raw(client, "/credits", SEED_BODY, admin_token, headers=key)
    second = post_raw(client, "/credits", SEED_BODY, admin_token, headers=key)
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json == first.json
    assert written(app) == (1, 1)
    assert api.get("/wallet", token=api.token(john)).json["credit_minor"] == 5000


@pytest.mark.parametrize(
    "change", [{"amount": 60.00}, {"reason": "Another reason"}, {"expires_at": "2030-01-31"}]
)
def test_the_same_idempotency_key_with_other_content_is_409(app, api, john, admin_token, change):
    body = {
        "user_id": "john@example.com",
        "amount": "50.00",
        "reason": "Service credit for downtime",
    }
    key = {"Idempotency-Key": "grant-7f3a"}
    assert api.post("/credits", token=admin_token, json=body, headers=key).status_code == 201
    response = api.post("/credits", token=admin_token, json={**body, **change}, headers=key)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "idempotency_conflict"
    assert written(app) == (1, 1)
    assert api.get("/wallet", token=api.token(john)).json["credit_minor"] == 5000


def test_the_same_key_for_another_user_is_409(app, api, john, make_user, admin_token):
    other = make_user()
    key = {"Idempotency-Key": "grant-1"}
    body = {"amount": "5.00", "reason": "r"}
    api.post("/credits", token=admin_token, json={"user_id": john.id, **body}, headers=key)
    response = api.post(
        "/credits", token=admin_token, json={"user_id": other.id, **body}, headers=key
    )
    assert response.status_code == 409
    assert written(app) == (1, 1)


def test_a_bare_expiry_date_is_valid_through_that_day(app, api, john, admin_token):
    response = api.post(
        "/credits",
        token=admin_token,
        json={"user_id": john.email, "amount": "5.00", "reason": "r", "expires_at": "2030-01-31"},
    )
    assert response.status_code == 201
    assert response.json["expires_at"] == "2030-02-01T00:00:00Z"
    response = api.post(
        "/credits",
        token=admin_token,
        json={
            "user_id": john.email,
            "amount": "5.00",
            "reason": "r",
            "expires_at": "2030-01-31T12:30:00+02:00",
        },
    )
    assert response.json["expires_at"] == "2030-01-31T10:30:00Z"
    with app.app_context():
        lots = db.session.scalars(select(CreditLot).order_by(CreditLot.id)).all()
        assert [lot.expires_at.isoformat() for lot in lots] == [
            "2030-02-01T00:00:00+00:00",
            "2030-01-31T10:30:00+00:00",
        ]


# -- users (the platform's OnUserCreated) ------------------------------------------------


@pytest.fixture
def platform_token(api, make_user):
    return api.token(make_user("platform@example.com"), "platform")


def test_the_platform_creates_a_user_once(app, api, platform_token):
    body = {"email": "New.Person@Example.com", "name": "New Person"}
    first = api.post("/users", token=platform_token, json=body)
    assert first.status_code == 201
    assert first.json["email"] == "new.person@example.com"
    assert first.json["name"] == "New Person"
    assert first.json["currency"] == "USD"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first.json["created_at"])

    second = api.post("/users", token=platform_token, json=body)
    assert second.status_code == 200
    assert second.json == first.json
    # Without a name it is the same user too.
    third = api.post("/users", token=platform_token, json={"email": "new.person@example.com"})
    assert third.status_code == 200
    assert third.json["id"] == first.json["id"]

    with app.app_context():
        user = db.session.get(User, first.json["id"])
        assert user.password_hash is None and not user.is_admin
        messages = db.session.scalars(select(OutboundEmail)).all()
    assert len(messages) == 1  # one welcome email, however often the platform calls
    [message] = messages
    assert message.to_addr == "new.person@example.com"
    assert message.user_id == first.json["id"]
    assert message.status == "outbox"
    match = re.search(r"http://portal\.test(/auth/reset/\S+)", message.body_text)
    assert match, message.body_text

    # The link lets the new user set a password and log in.
    browser = app.test_client()
    assert "For new.person@example.com." in browser.get(match.group(1)).get_data(as_text=True)
    response = browser.submit(
        match.group(1), {"password": "my-first-password", "confirm": "my-first-password"}
    )
    assert response.status_code == 303
    assert browser.get("/wallet/").status_code == 200


def test_the_same_email_with_another_name_is_409(app, api, platform_token):
    api.post("/users", token=platform_token, json={"email": "p@example.com", "name": "Pat"})
    response = api.post(
        "/users", token=platform_token, json={"email": "p@example.com", "name": "Patricia"}
    )
    assert response.status_code == 409
    assert response.json["error"]["code"] == "conflict"
    with app.app_context():
        assert db.session.scalar(select(User.name).where(User.email == "p@example.com")) == "Pat"


@pytest.mark.parametrize(
    "body", [{"email": "not-an-email"}, {"email": ""}, {}, {"email": "a@b"}, {"name": "No Email"}]
)
def test_a_bad_email_is_422(app, api, platform_token, body):
    response = api.post("/users", token=platform_token, json=body)
    assert response.status_code == 422
    assert "email" in response.json["error"]["fields"]
    assert count(app, User) == 1  # the platform's own account
    assert count(app, OutboundEmail) == 0


# -- wallet ------------------------------------------------------------------------------


def grant(api, admin_token, email, amount, reason="r"):
    response = api.post(
        "/credits", token=admin_token, json={"user_id": email, "amount": amount, "reason": reason}
    )
    assert response.status_code == 201


def test_the_wallet_of_the_tokens_user(api, john, make_user, admin_token):
    other = make_user()
    grant(api, admin_token, john.email, "7.25")
    grant(api, admin_token, other.email, "1.00")
    body = api.get("/wallet", token=api.token(john)).json
    assert body == {
        "user_id": john.id,
        "currency": "USD",
        "cash": "0.00",
        "cash_minor": 0,
        "voucher": "0.00",
        "voucher_minor": 0,
        "credit": "7.25",
        "credit_minor": 725,
    }


def test_an_admin_reads_any_wallet_by_email_or_id(api, john, admin_token):
    grant(api, admin_token, john.email, "3.00")
    for ref in (john.email, john.id):
        body = api.get("/wallet", token=admin_token, query_string={"user_id": ref}).json
        assert body["user_id"] == john.id
        assert body["credit_minor"] == 300
    # Without user_id an admin sees their own wallet.
    assert api.get("/wallet", token=admin_token).json["credit_minor"] == 0
    response = api.get("/wallet", token=admin_token, query_string={"user_id": "x@example.com"})
    assert response.status_code == 404


def test_a_user_token_cannot_read_another_users_wallet(api, john, make_user, admin_token):
    other = make_user()
    grant(api, admin_token, other.email, "9.00")
    token = api.token(john)
    for path in ("/wallet", "/wallet/transactions"):
        for ref in (other.email, other.id):
            response = api.get(path, token=token, query_string={"user_id": ref})
            assert response.status_code == 403
            assert response.json["error"]["code"] == "forbidden"
            assert "9.00" not in response.get_data(as_text=True)
    # Naming oneself is fine.
    assert api.get("/wallet", token=token, query_string={"user_id": john.email}).status_code == 200


def test_wallet_transactions_are_paginated(api, john, admin_token):
    for n in range(1, 6):
        grant(api, admin_token, john.email, f"{n}.00", reason=f"grant {n}")
    token = api.token(john)
    first = api.get(
        "/wallet/transactions", token=token, query_string={"page": 1, "per_page": 2}
    ).json
    assert (first["page"], first["per_page"], first["total"]) == (1, 2, 5)
    assert len(first["items"]) == 2
    item = first["items"][0]
    assert set(item) >= {
        "id",
        "created_at",
        "wallet",
        "kind",
        "description",
        "currency",
        "amount",
        "amount_minor",
    }
    assert item["wallet"] == "credit" and item["kind"] == "credit_grant"
    assert item["currency"] == "USD"

    pages = [first] + [
        api.get("/wallet/transactions", token=token, query_string={"page": p, "per_page": 2}).json
        for p in (2, 3, 4)
    ]
    assert [len(p["items"]) for p in pages] == [2, 2, 1, 0]
    seen = [i for p in pages for i in p["items"]]
    assert len({i["id"] for i in seen}) == 5
    assert sorted(i["amount_minor"] for i in seen) == [100, 200, 300, 400, 500]
    assert {i["description"] for i in seen} == {f"grant {n}" for n in range(1, 6)}

    default = api.get("/wallet/transactions", token=token).json
    assert (default["page"], default["per_page"], default["total"]) == (1, 50, 5)
    bad = api.get("/wallet/transactions", token=token, query_string={"page": "two"})
    assert bad.status_code == 422


def test_wallet_transactions_for_a_user_via_admin(api, john, admin_token):
    grant(api, admin_token, john.email, "2.00")
    body = api.get(
        "/wallet/transactions", token=admin_token, query_string={"user_id": john.email}
    ).json
    assert body["total"] == 1
    assert body["items"][0]["amount"] == "2.00"


# -- unknown paths and methods -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/wallet/nope", "/users/1/nope"])
def test_an_unknown_api_path_is_404_json(api, john, path):
    response = api.get(path, token=api.token(john))
    assert response.status_code == 404
    assert response.is_json
    assert response.json["error"]["code"] == "not_found"


def test_a_wrong_method_is_405_json(api, john):
    response = api.get("/credits", token=api.token(john))
    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"

"""Subscriptions in the JSON API: the plans, the subscription with its quotas, a preview to
the cent, subscribing and upgrading, downgrade and cancel at the period end, the hosted
checkout for what the balances do not cover; owner scoping and bad input."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Invoice, User
from portal.money import Money
from portal.services.metering import deployments
from portal.services.wallet import credits
from tests.support.payments import TEST_CARDS, type_card


def funded(app, user, amount="500.00"):
    with app.app_context():
        credits.grant_credit(
            user=db.session.get(User, user.id),
            amount=Money.from_decimal(amount, "USD"),
            reason="test",
            idempotency_key=f"fund:{user.id}",
        )
        db.session.commit()
        db.session.remove()


def test_the_plans_on_offer(app, api, make_user, with_plans):
    answer = api.get("/plans", token=api.token(make_user()))
    assert answer.status_code == 200
    pro = next(p for p in answer.json["items"] if p["plan_id"] == "pro")
    assert pro == {
        "plan_id": "pro",
        "name": "Professional",
        "version": 1,
        "effective_from": "2000-01-01T00:00:00Z",
        "price": "29.99",
        "price_minor": 2999,
        "currency": "USD",
        "interval": "month",
        "cpu_limit": "8",
        "memory_limit": "16",
        "storage_limit": "100",
        "retired": False,
    }
    assert [p["plan_id"] for p in answer.json["items"]][0] == "free"  # cheapest first


def test_subscribe_preview_upgrade_downgrade_cancel_undo(app, api, make_user, with_plans):
    user = make_user()
    token = api.token(user)
    none = api.get("/subscription", token=token).json
    assert (none["status"], none["plan"], none["plans_offered"]) == ("none", None, True)

    preview = api.post("/subscription/preview", {"plan_id": "pro"}, token=token)
    assert preview.status_code == 200
    assert preview.json["kind"] == "subscribe"
    assert preview.json["lines"][0]["description"] == "Remaining time on Professional plan"
    assert preview.json["due_now_minor"] == preview.json["lines"][0]["amount_minor"] > 0
    assert preview.json["renewal"] == "29.99"

    funded(app, user)
    answer = api.post("/subscription", {"plan_id": "pro"}, token=token)
    assert answer.status_code == 200, answer.json
    body = answer.json
    assert (body["status"], body["plan"]["plan_id"], body["renewal_minor"]) == (
        "active",
        "pro",
        2999,
    )
    assert [q["resource"] for q in body["quotas"]] == ["cpu", "memory", "storage"]
    assert body["quotas"][0] == {
        "resource": "cpu",
        "limit": "8",
        "allocated": "0",
        "percent": 0,
        "level": "ok",
    }

    up = api.post("/subscription/preview", {"plan_id": "enterprise"}, token=token).json
    assert up["kind"] == "upgrade" and up["current_plan_id"] == "pro"
    assert [l["amount_minor"] < 0 for l in up["lines"]] == [True, False]
    assert up["due_now_minor"] == sum(l["amount_minor"] for l in up["lines"])
    assert (
        api.post("/subscription", {"plan_id": "enterprise"}, token=token).json["plan"]["plan_id"]
        == "enterprise"
    )

    down = api.post("/subscription", {"plan_id": "pro"}, token=token).json
    assert down["plan"]["plan_id"] == "enterprise" and down["scheduled_plan_id"] == "pro"
    assert down["renewal_minor"] == 2999
    undone = api.post("/subscription/undo", token=token).json
    assert undone["scheduled_plan_id"] is None and undone["renewal_minor"] == 9999

    canceled = api.delete("/subscription", token=token).json
    assert canceled["cancel_at_period_end"] is True and canceled["renewal"] is None
    assert canceled["status"] == "active"  # until the period ends
    assert api.post("/subscription/undo", token=token).json["cancel_at_period_end"] is False


def test_an_upgrade_nothing_covers_is_pending_and_can_be_cancelled(app, api, make_user, with_plans):
    user = make_user()
    token = api.token(user)
    answer = api.post("/subscription", {"plan_id": "pro"}, token=token).json
    assert answer["status"] == "pending"
    pending = answer["pending"]
    assert pending["change"] == "subscribe" and pending["plan_id"] == "pro"
    assert pending["amount_due_minor"] > 0
    again = api.post("/subscription", {"plan_id": "enterprise"}, token=token)
    assert again.status_code == 409
    canceled = api.delete("/subscription/pending", token=token).json
    assert canceled["status"] == "canceled" and canceled["pending"] is None
    with app.app_context():
        assert db.session.get(Invoice, pending["invoice_id"]).status == "void"
        db.session.remove()


def test_a_downgrade_below_what_runs_is_refused(app, api, make_user, with_plans):
    user = make_user()
    token = api.token(user)
    funded(app, user)
    api.post("/subscription", {"plan_id": "enterprise"}, token=token)
    with app.app_context():
        deployments.create_deployment(
            external_id="big-1",
            user=db.session.get(User, user.id),
            kind="vm",
            cpu_cores=10,
            memory_gb=4,
            storage_gb=0,
        )
        db.session.commit()
        db.session.remove()
    preview = api.post("/subscription/preview", {"plan_id": "pro"}, token=token).json
    assert "CPU cores 10 running, the plan allows 8" in preview["refused"]
    refused = api.post("/subscription", {"plan_id": "pro"}, token=token)
    assert refused.status_code == 409
    assert "plan_id" in refused.json["error"]["fields"]
    assert api.get("/subscription", token=token).json["quotas"][0]["allocated"] == "10"


@pytest.mark.parametrize(
    "payload, field",
    [
        ({}, "plan_id"),
        ({"plan_id": "platinum"}, "plan_id"),
        ({"plan_id": 7}, "plan_id"),
        ({"plan_id": "pro", "extra": 1}, "extra"),
        ({"plan_id": "x" * 41}, "plan_id"),
    ],
)
def test_bad_input_is_422_and_changes_nothing(app, api, make_user, with_plans, payload, field):
    user = make_user()
    token = api.token(user)
    for path in ("/subscription", "/subscription/preview"):
        answer = api.post(path, payload, token=token)
        assert answer.status_code == 422, answer.json
        assert field in answer.json["error"]["fields"]
    assert api.get("/subscription", token=token).json["status"] == "none"


def test_usage_mode_offers_no_plans(app, api, make_user, with_plans):
    with_plans(billing_mode="usage")
    token = api.token(make_user())
    assert api.get("/subscription", token=token).json["plans_offered"] is False
    assert api.post("/subscription", {"plan_id": "pro"}, token=token).status_code == 409


def test_owner_scoping_and_admin_access(app, api, make_user, with_plans):
    user, other = make_user(), make_user()
    funded(app, user)
    api.post("/subscription", {"plan_id": "pro"}, token=api.token(user))
    assert api.get(f"/subscription?user_id={user.id}", token=api.token(other)).status_code == 403
    admin = api.token(make_user(admin=True), scope="admin")
    seen = api.get(f"/subscription?user_id={user.email}", token=admin).json
    assert seen["plan"]["plan_id"] == "pro" and seen["user_id"] == user.id
    assert api.get("/subscription").status_code == 401


def test_admin_plans_versions_retire_and_a_users_mode(app, api, make_user, with_plans):
    admin = api.token(make_user(admin=True), scope="admin")
    created = api.post(
        "/admin/plans",
        {
            "plan_id": "team",
            "name": "Team",
            "price": "49.00",
            "cpu_limit": 16,
            "memory_limit": 32,
            "storage_limit": "250.5",
        },
        token=admin,
    )
    assert created.status_code == 201, created.json
    assert created.json["storage_limit"] == "250.5" and created.json["price_minor"] == 4900
    assert (
        api.post(
            "/admin/plans",
            {
                **{"plan_id": "team"},
                "name": "T",
                "price": 1,
                "cpu_limit": 1,
                "memory_limit": 1,
                "storage_limit": 1,
            },
            token=admin,
        ).status_code
        == 409
    )
    later = api.post(
        "/admin/plans/team/versions",
        {
            "name": "Team",
            "price": "59.00",
            "cpu_limit": 16,
            "memory_limit": 32,
            "storage_limit": 250,
            "effective_from": "2099-01-01",
        },
        token=admin,
    )
    assert later.status_code == 201 and later.json["version"] == 2
    past = api.post(
        "/admin/plans/team/versions",
        {
            "name": "Team",
            "price": 1,
            "cpu_limit": 1,
            "memory_limit": 1,
            "storage_limit": 1,
            "effective_from": "2001-01-01",
        },
        token=admin,
    )
    assert past.status_code == 422 and "effective_from" in past.json["error"]["fields"]
    assert api.post("/admin/plans/nope/retire", token=admin).status_code == 404
    assert api.post("/admin/plans/team/retire", token=admin).json["retired"] is True
    user = make_user()
    assert "team" not in [
        p["plan_id"] for p in api.get("/plans", token=api.token(user)).json["items"]
    ]

    with_plans(billing_mode="usage")
    set_mode = api.put(
        f"/admin/users/{user.id}/subscription", {"billing_mode": "subscription"}, token=admin
    )
    assert set_mode.status_code == 200, set_mode.json
    assert set_mode.json["billing_mode"] == "subscription" and set_mode.json["plans_offered"]
    followed = api.put(
        f"/admin/users/{user.email}/subscription", {"follow_installation": True}, token=admin
    )
    assert followed.json["billing_mode"] == "usage"
    user_token = api.token(make_user())
    assert api.post("/admin/plans", {}, token=user_token).status_code == 403


def test_checkout_for_a_subscription(pay_app, api, make_user, with_plans, client, auth):
    user = make_user()
    token = api.token(user)
    answer = api.post(
        "/create-checkout", {"purpose": "subscription", "plan_id": "pro"}, token=token
    )
    assert answer.status_code == 201, answer.json
    body = answer.json
    assert body["purpose"] == "subscription" and body["invoice_id"]
    with pay_app.app_context():
        invoice = db.session.get(Invoice, body["invoice_id"])
        assert body["amount_minor"] == invoice.total_minor > 0
        db.session.remove()
    back = type_card(body["checkout_url"], TEST_CARDS["ok"])
    assert back.status_code == 303
    auth.login(user)
    done = client.get(back.headers["Location"].replace("http://portal.test", ""))
    assert done.status_code == 303
    status = api.get("/subscription", token=token).json
    assert (status["status"], status["plan"]["plan_id"]) == ("active", "pro")
    with pay_app.app_context():
        paid = db.session.scalar(select(Invoice).where(Invoice.id == body["invoice_id"]))
        assert paid.status == "paid"
        db.session.remove()
    # a funded user's checkout has nothing left to pay: the plan is active at once
    rich = make_user()
    funded(pay_app, rich)
    covered = api.post(
        "/create-checkout", {"purpose": "subscription", "plan_id": "pro"}, token=api.token(rich)
    ).json
    assert covered["checkout_url"] is None and covered["amount_minor"] == 0

"""GET /standing and POST /can-deploy over HTTP: scopes, owner scoping, the answer's fields
and refusals with their reason, and bad input as a 422 naming the field."""

from __future__ import annotations

from datetime import datetime, timedelta

from portal.extensions import db
from portal.models import Invoice, User, utcnow
from portal.services.metering import deployments
from portal.services.standing import prepaid
from tests.support.invoices import OCT, issue_invoices


def ask(api, token, **body):
    payload = {"user_id": "pat@example.com", "kind": "vm", "cpu_cores": 1, **body}
    return api.post("/can-deploy", json=payload, token=token)


def test_can_deploy_answers_and_refuses_an_overdue_account(app, api, make_user):
    pat = make_user("pat@example.com")
    platform = api.token(make_user(admin=True), "platform")
    first = ask(api, platform, memory_gb=2, storage_gb=0)
    assert first.status_code == 200, first.json
    body = first.json
    assert body["allowed"] is False and body["reason"] == "card_required"
    assert body["hourly_cost"] == "0.07" and body["hourly_cost_minor"] == 7  # 0.05 + 2 x 0.01
    assert body["currency"] == "USD" and body["required_minor"] > 0
    assert body["runway_hours"] == 0
    # a SKU's hourly price (0.0730 for vm-small, its disk included), rounded once
    small = ask(api, platform, cpu_cores=None, sku="vm-small").json
    assert (small["hourly_cost"], small["hourly_cost_minor"]) == ("0.07", 7)
    sku = ask(api, platform, cpu_cores=None, sku="nope")
    assert sku.status_code == 422 and "sku" in sku.json["error"]["fields"]
    assert ask(api, platform, cpu_cores="two").status_code == 422
    assert ask(api, platform, user_id="nobody@example.com").status_code == 422
    # users and admins may not ask
    assert ask(api, api.token(pat)).status_code == 403

    [invoice_id] = issue_invoices(app, pat.id, periods=(OCT,))
    with app.app_context():
        invoice = db.session.get(Invoice, invoice_id)
        invoice.due_at = invoice.due_at - timedelta(days=3650)
        invoice.status = "overdue"
        db.session.commit()
    refused = ask(api, platform).json
    assert (refused["allowed"], refused["reason"]) == (False, "overdue")
    assert refused["message"] == "An invoice is overdue: pay it first."

    mine = api.get("/standing", token=api.token(pat))
    assert mine.status_code == 200
    assert mine.json["status"] == "overdue" and mine.json["user_id"] == pat.id
    assert "an invoice is overdue" in mine.json["reasons"]
    admin = api.token(make_user(admin=True), "admin")
    assert api.get(f"/standing?user_id={pat.id}", token=admin).json["status"] == "overdue"
    # another user's standing is not for a user token
    other = api.token(make_user())
    assert api.get(f"/standing?user_id={pat.id}", token=other).status_code == 403
    assert api.get("/standing?user_id=999999", token=admin).status_code == 404


def test_a_prepaid_account_out_of_funds_shows_its_countdown(app, api, make_user):
    pat = make_user("pat@example.com")
    with app.app_context():
        user = db.session.get(User, pat.id)
        user.billing_mode = "prepaid"
        deployments.create_deployment(
            external_id="vm-dry", user=user, kind="vm", cpu_cores=1, memory_gb=0, storage_gb=0
        )
        db.session.commit()
        now = utcnow().replace(microsecond=0)
        prepaid.run(now)  # no funds for the next hour (0.05): removing for a day
        db.session.commit()
    body = api.get("/standing", token=api.token(pat)).json
    assert body["status"] == "removing"
    assert (body["amount_needed"], body["amount_needed_minor"], body["currency"]) == (
        "0.05",
        5,
        "USD",
    )
    assert datetime.fromisoformat(body["removal_at"]) == now + timedelta(hours=24)
    assert body["reasons"][0].startswith("the prepaid funds ran out: add $0.05 before")
    refused = ask(api, api.token(make_user(admin=True), "platform")).json
    assert (refused["allowed"], refused["reason"]) == (False, "removing")

"""The events catalogue: every event name the code records is catalogued and documented in
the OpenAPI document's webhooks section, names outside it are refused, and what the code
records validates against each event's schema."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Event, Invoice, User
from portal.money import Money
from portal.services import events
from portal.services.events import catalog
from portal.services.invoicing import invoices
from portal.services.payments import settlement
from portal.services.wallet import credits, vouchers
from tests.support.invoices import issue_invoices

PORTAL = Path(__file__).resolve().parents[3] / "portal"
NAME = re.compile(r"""["'](billing\.[a-z_]+\.[a-z_]+)["']""")
ISSUE_16 = {
    "billing.invoice.created",
    "billing.invoice.paid",
    "billing.invoice.overdue",
    "billing.invoice.voided",
    "billing.payment.succeeded",
    "billing.payment.failed",
    "billing.payment.refunded",
    "billing.payment.disputed",
    "billing.credit.granted",
    "billing.credit.expired",
    "billing.voucher.redeemed",
    "billing.quota.warning",
    "billing.quota.exceeded",
    "billing.deployment.suspended",
    "billing.deployment.resumed",
    "billing.deployment.removing",
    "billing.deployment.restored",
    "billing.deployment.removed",
    "billing.budget.warning",
    "billing.budget.reached",
    "billing.subscription.changed",
}


def names_in_code() -> dict[str, str]:
    found = {}
    for path in PORTAL.rglob("*.py"):
        if path.name == "catalog.py" and path.parent.name == "events":
            continue
        for name in NAME.findall(path.read_text()):
            found[name] = str(path.relative_to(PORTAL))
    return found


def test_every_event_name_in_the_code_is_catalogued():
    found = names_in_code()
    assert found, "no event names found: the pattern is wrong"
    missing = {n: where for n, where in found.items() if n not in catalog.NAMES}
    assert not missing
    assert set(catalog.NAMES) == ISSUE_16


def test_the_catalogue_is_the_openapi_webhooks_section(client):
    doc = client.get("/api/plugins/billing/openapi.json").json
    assert set(doc["webhooks"]) == set(catalog.NAMES)
    for name, event in catalog.EVENT_TYPES.items():
        body = doc["webhooks"][name]["post"]["requestBody"]["content"]["application/json"]
        schema = body["schema"]
        assert schema["properties"]["type"] == {"const": name}
        ref = schema["properties"]["data"]["$ref"].rsplit("/", 1)[-1]
        assert ref == event.data.__name__
        data = doc["components"]["schemas"][ref]
        assert set(data["required"]) <= set(data["properties"])
        assert "user_id" in data["properties"]


def test_a_name_outside_the_catalogue_is_refused(ctx):
    with pytest.raises(catalog.UnknownEvent):
        events.record("billing.invoice.exploded", "invoice:1", {}, None)
    with pytest.raises(catalog.UnknownEvent):
        events.record_many([("billing.nope.nope", "x", {}, None)])


def test_what_the_code_records_validates_against_the_catalogue(app, make_user):
    ann, bob = make_user("ann@example.com"), make_user("bob@example.com")
    sep, oct_ = issue_invoices(app, ann.id)
    now = datetime.now(UTC)
    with app.app_context():
        bob_row = db.session.get(User, bob.id)
        invoices.void_invoice(db.session.get(Invoice, sep), reason="wrong period")
        invoices.mark_overdue(now + timedelta(days=400))
        db.session.commit()
        settlement.settle(ann.id)  # no card, nothing to pay with: payment failed
        credits.grant_credit(
            user=bob_row,
            amount=Money(500, "USD"),
            reason="outage",
            idempotency_key="k1",
            expires_at=now + timedelta(days=1),
        )
        credits.expire_credits(now + timedelta(days=2))
        [voucher] = vouchers.create_vouchers(value=Money(1000, "USD"))
        vouchers.redeem(bob_row, voucher.code)
        db.session.commit()
        settlement.settle(ann.id)
        rows = db.session.scalars(select(Event).order_by(Event.id)).all()
        for row in rows:
            catalog.validate(row.name, row.payload)
            assert row.payload["user_id"] == row.user_id
        recorded = {row.name for row in rows}
    assert recorded >= {
        "billing.invoice.created",
        "billing.invoice.voided",
        "billing.invoice.overdue",
        "billing.payment.failed",
        "billing.credit.granted",
        "billing.credit.expired",
        "billing.voucher.redeemed",
    }


def test_a_payload_with_another_shape_fails_validation():
    with pytest.raises(ValueError):
        catalog.validate("billing.credit.granted", {"user_id": 1})
    with pytest.raises(ValueError):
        catalog.validate(
            "billing.voucher.redeemed",
            {
                "user_id": 1,
                "voucher_id": 2,
                "amount": "1.00",
                "amount_minor": 100,
                "currency": "USD",
                "surprise": True,
            },
        )

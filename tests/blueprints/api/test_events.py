"""GET /events: the pull API pages through the published events in order by a cursor, with
no gap and no duplicate (an event whose transaction commits late is not skipped), filters by
type, takes platform and admin tokens only, and refuses bad parameters with a JSON error."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from portal.extensions import db
from portal.models import Event
from portal.services import events
from portal.services.webhooks import delivery

NAMES = ("billing.credit.granted", "billing.voucher.redeemed", "billing.invoice.paid")


def credit(user_id: int, n: int) -> dict:
    return {
        "user_id": user_id,
        "credit_id": n,
        "amount": "1.00",
        "amount_minor": 100,
        "currency": "USD",
        "reason": f"r{n}",
        "expires_at": None,
    }


def data(name: str, user_id: int, n: int) -> dict:
    """A payload of the event's schema."""
    if name == "billing.voucher.redeemed":
        return {
            "user_id": user_id,
            "voucher_id": n,
            "amount": "1.00",
            "amount_minor": 100,
            "currency": "USD",
        }
    if name == "billing.invoice.paid":
        return {
            "invoice_id": n,
            "invoice_number": f"INV-{n}",
            "user_id": user_id,
            "currency": "USD",
            "total": "1.00",
            "total_minor": 100,
            "period_start": "2026-10-01T00:00:00+00:00",
            "period_end": "2026-11-01T00:00:00+00:00",
            "status": "paid",
        }
    return credit(user_id, n)


@pytest.fixture
def thousand(app, make_user):
    ann = make_user("ann@example.com")
    with app.app_context():
        events.record_many(
            [(NAMES[n % 3], f"x:{n}", data(NAMES[n % 3], ann.id, n), ann.id) for n in range(1000)]
        )
        db.session.commit()
        publish()
    return ann


def publish() -> None:
    """What the dispatcher does every minute."""
    while delivery.fan_out(now=datetime.now(UTC)):
        db.session.commit()
    db.session.commit()


def test_pages_through_1000_events_with_no_gap_and_no_duplicate(api, make_user, thousand):
    token = api.token(make_user("platform@example.com"), "platform")
    seen, after, pages = [], 0, 0
    while True:
        response = api.get(f"/events?after={after}&limit=37", token=token)
        assert response.status_code == 200, response.json
        body = response.json
        seen += [item["id"] for item in body["items"]]
        pages += 1
        if not body["has_more"]:
            break
        assert len(body["items"]) == 37
        after = body["next_after"]
    assert pages == 28  # 27 full pages and 1 of 1
    assert len(seen) == 1000 and len(set(seen)) == 1000 and seen == sorted(seen)
    assert seen[-1] - seen[0] == 999  # every id, none skipped
    first = api.get("/events?limit=1", token=token).json["items"][0]
    assert first["type"] == NAMES[0] and first["data"]["credit_id"] == 0
    assert set(first) == {"id", "type", "created", "api_version", "data"}
    end = api.get(f"/events?after={seen[-1]}", token=token).json
    assert end == {"items": [], "next_after": seen[-1], "has_more": False}


def test_types_filter(api, make_user, thousand):
    token = api.token(make_user("admin@example.com", admin=True), "admin")
    types = "billing.voucher.redeemed,billing.invoice.paid"
    body = api.get(f"/events?types={types}&limit=1000", token=token).json
    assert len(body["items"]) == 666 and not body["has_more"]
    assert {i["type"] for i in body["items"]} == set(NAMES[1:])


def test_only_platform_and_admin_tokens_read_events(api, make_user):
    user = make_user("ann@example.com")
    assert api.get("/events").status_code == 401
    response = api.get("/events", token=api.token(user, "user"))
    assert response.status_code == 403 and response.json["error"]["code"] == "forbidden"
    assert api.get("/events", token=api.token(make_user(), "platform")).status_code == 200
    assert api.get("/events", token=api.token(make_user(), "admin")).status_code == 200


@pytest.mark.parametrize(
    "query, field",
    [
        ("after=-1", "after"),
        ("after=abc", "after"),
        ("after=99999999999999999999", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("types=billing.nope.nope", "types"),
        ("types=billing.invoice.paid;drop", "types"),
    ],
)
def test_bad_parameters_are_a_json_error_naming_the_field(api, make_user, query, field):
    token = api.token(make_user("platform@example.com"), "platform")
    response = api.get(f"/events?{query}", token=token)
    assert response.status_code == 422
    assert response.json["error"]["code"] == "validation_failed"
    assert field in response.json["error"]["fields"]


def test_an_event_that_commits_after_a_later_one_is_not_skipped(app, api, make_user):
    ann = make_user("ann@example.com")
    token = api.token(make_user("platform@example.com"), "platform")
    with app.app_context():
        # Ids 5 and 6 commit and are published; id 3 (taken earlier by a longer
        # transaction) commits afterwards.
        for event_id in (5, 6):
            db.session.add(
                Event(
                    id=event_id,
                    name=NAMES[0],
                    subject=f"x:{event_id}",
                    payload=credit(ann.id, event_id),
                    user_id=ann.id,
                )
            )
        db.session.commit()
        publish()
    first = api.get("/events", token=token).json
    assert [i["id"] for i in first["items"]] == [5, 6]
    with app.app_context():
        db.session.add(
            Event(id=3, name=NAMES[0], subject="x:3", payload=credit(ann.id, 3), user_id=ann.id)
        )
        db.session.commit()
        assert api.get(f"/events?after={first['next_after']}", token=token).json["items"] == []
        publish()
    later = api.get(f"/events?after={first['next_after']}", token=token).json
    assert [i["id"] for i in later["items"]] == [3]

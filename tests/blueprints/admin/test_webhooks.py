"""Admin › Webhooks: admins add, edit, disable, enable an endpoint and rotate its secret
(shown once), see its deliveries and their attempts, replay an event or a time range; every
change is in the audit log without the secret; users get 403, forms need their CSRF token,
and a delivery is only found under its own endpoint."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import AuditEntry, DeliveryStatus, WebhookDelivery, WebhookEndpoint
from portal.services import events
from portal.services.webhooks import delivery
from tests.support.receiver import Receiver

SECRET = re.compile(r"whsec_[A-Za-z0-9_-]{20,}")


@pytest.fixture
def admin(make_user, auth):
    boss = make_user("boss@example.com", admin=True)
    auth.login(boss)
    return boss


def endpoint_row(app, **where):
    with app.app_context():
        row = db.session.scalars(select(WebhookEndpoint).filter_by(**where)).one()
        db.session.expunge(row)
        db.session.remove()
        return row


def audit(app, action):
    with app.app_context():
        rows = db.session.scalars(select(AuditEntry).where(AuditEntry.action == action)).all()
        db.session.expunge_all()
        db.session.remove()
        return rows


def add(client, url="https://platform.example/hooks", **extra):
    data = {"url": url, "description": "the platform", "all_events": "y", "enabled": "y"}
    data.update(extra)
    return client.submit("/admin/webhooks", data)


def test_adding_an_endpoint_shows_its_secret_once(app, client, admin):
    response = add(client)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    [secret] = set(SECRET.findall(page))
    row = endpoint_row(app, url="https://platform.example/hooks")
    assert row.secret == secret and row.enabled and row.event_types is None
    assert secret not in client.get("/admin/webhooks").get_data(as_text=True)
    assert secret not in client.get(f"/admin/webhooks/{row.id}").get_data(as_text=True)
    [entry] = audit(app, "webhook_endpoint.created")
    assert entry.actor_id == admin.id and entry.after["url"] == row.url
    assert secret not in str(entry.after)


def test_only_some_event_types(app, client, admin):
    add(
        client,
        all_events="",
        event_types=["billing.invoice.paid", "billing.payment.failed"],
    )
    row = endpoint_row(app)
    assert row.event_types == ["billing.invoice.paid", "billing.payment.failed"]


@pytest.mark.parametrize(
    "url, problem",
    [
        ("ftp://platform.example/x", "http"),
        ("platform.example/x", "http"),
        ("https://u:p@platform.example/", "user name"),
        ("https://" + "a" * 2000 + ".example/", "2000"),
    ],
)
def test_a_bad_url_is_shown_on_the_form_and_nothing_is_saved(app, client, admin, url, problem):
    response = add(client, url=url)
    assert response.status_code == 422
    assert problem in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(WebhookEndpoint)) == 0


def test_no_event_type_chosen_is_refused(app, client, admin):
    response = add(client, all_events="")
    assert response.status_code == 422
    assert "choose at least one event type" in response.get_data(as_text=True)


def test_forms_need_the_csrf_token(app, client, admin):
    response = client.post(
        "/admin/webhooks", data={"url": "https://platform.example/x", "all_events": "y"}
    )
    assert response.status_code == 400
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(WebhookEndpoint)) == 0
    add(client)
    row = endpoint_row(app)
    assert client.post(f"/admin/webhooks/{row.id}/disable").status_code == 400
    assert endpoint_row(app).enabled


def test_users_are_refused(app, client, make_user, auth):
    auth.login(make_user("ann@example.com"))
    assert client.get("/admin/webhooks").status_code == 403
    assert add(client).status_code == 403


def test_edit_disable_enable_and_rotate(app, client, admin):
    add(client)
    row = endpoint_row(app)
    response = client.submit(
        f"/admin/webhooks/{row.id}",
        {"url": "https://platform.example/v2", "description": "", "all_events": "y"},
    )
    assert response.status_code == 303
    row = endpoint_row(app)
    assert row.url == "https://platform.example/v2" and not row.enabled  # box left unticked
    client.get(f"/admin/webhooks/{row.id}")
    assert client.submit(f"/admin/webhooks/{row.id}/enable").status_code == 303
    assert endpoint_row(app).enabled
    assert client.submit(f"/admin/webhooks/{row.id}/disable").status_code == 303
    assert not endpoint_row(app).enabled
    old = row.secret
    response = client.submit(f"/admin/webhooks/{row.id}/rotate")
    assert response.status_code == 200
    [new] = set(SECRET.findall(response.get_data(as_text=True)))
    row = endpoint_row(app)
    assert row.secret == new and row.previous_secret == old and new != old
    assert new not in client.get(f"/admin/webhooks/{row.id}").get_data(as_text=True)
    assert [e.action for e in audit(app, "webhook_endpoint.updated")] == [
        "webhook_endpoint.updated"
    ]
    assert len(audit(app, "webhook_endpoint.enabled")) == 1
    assert len(audit(app, "webhook_endpoint.disabled")) == 1
    [rotated] = audit(app, "webhook_endpoint.secret_rotated")
    assert old not in str(rotated.after) and new not in str(rotated.after)


def test_deliveries_attempts_and_replays(app, client, admin, make_user):
    ann = make_user("ann@example.com")
    with Receiver(lambda request, n: 500 if n == 1 else 200) as receiver:
        add(client, url=receiver.url)
        other_url = "https://other.example/hooks"
        add(client, url=other_url, enabled="")
        row, other = endpoint_row(app, url=receiver.url), endpoint_row(app, url=other_url)
        with app.app_context():
            data = {
                "user_id": ann.id,
                "voucher_id": 1,
                "amount": "5.00",
                "amount_minor": 500,
                "currency": "USD",
            }
            events.record("billing.voucher.redeemed", "v:1", data, ann.id)
            db.session.commit()
            event_id = db.session.scalar(select(func.max(WebhookDelivery.id)))  # none yet
            assert event_id is None
            now = datetime.now(UTC)
            delivery.fan_out(now=now)
            delivery.deliver_round(row.id, now=now)
            db.session.commit()
            d = db.session.scalars(select(WebhookDelivery)).one()
            delivery_id, event_id = d.id, d.event_id
            db.session.remove()
        page = client.get(f"/admin/webhooks/{row.id}").get_data(as_text=True)
        assert f'id="delivery-{delivery_id}"' in page and "HTTP 500" in page
        page = client.get(f"/admin/webhooks/{row.id}/deliveries/{delivery_id}")
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert "receiver says no" in text and "billing.voucher.redeemed" in text
        user_page = client.get(f"/admin/users/{ann.id}").get_data(as_text=True)
        link = f"/admin/webhooks/{row.id}/deliveries/{delivery_id}"
        assert link in user_page and f"endpoint {row.id}: pending" in user_page
        # Under another endpoint, or an unknown one, the delivery is not found.
        assert client.get(f"/admin/webhooks/{other.id}/deliveries/{delivery_id}").status_code == 404
        assert client.get(f"/admin/webhooks/9999/deliveries/{delivery_id}").status_code == 404
        assert client.get(f"/admin/webhooks/{row.id}?status=bogus").status_code == 400
        # Replay one event to the other endpoint (it never took it).
        response = client.submit(f"/admin/webhooks/{other.id}/replay", {"event_id": event_id})
        assert response.status_code == 303
        response = client.submit(f"/admin/webhooks/{other.id}/replay", {"event_id": 987654})
        assert response.status_code == 422 and "no event 987654" in response.get_data(as_text=True)
        start = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        end = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        response = client.submit(
            f"/admin/webhooks/{row.id}/replay-range", {"start": start, "end": end}
        )
        assert response.status_code == 303
        response = client.submit(
            f"/admin/webhooks/{row.id}/replay-range", {"start": end, "end": start}
        )
        assert response.status_code == 422
    with app.app_context():
        pending = db.session.scalars(
            select(WebhookDelivery.endpoint_id).where(
                WebhookDelivery.status == DeliveryStatus.PENDING
            )
        ).all()
        assert sorted(pending) == sorted([row.id, other.id])
    assert len(audit(app, "webhook.replayed")) == 2

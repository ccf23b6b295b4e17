"""Outgoing webhooks end to end against a real HTTP receiver on 127.0.0.1: the signature
verifies with the README's receiver code, failures are retried with backoff, each user's
events arrive in order, at least once (a duplicate carries the same id), an endpoint failing
for the retry window is disabled and the admins emailed, rotation signs with both secrets,
replays send again, and nothing goes to disabled endpoints or for types they do not take.
The clock is passed in (``now``), never waited for."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import (
    AuditEntry,
    DeliveryStatus,
    Event,
    OutboundEmail,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from portal.services import events
from portal.services.admin import signals
from portal.services.events import catalog
from portal.services.webhooks import delivery, endpoints, jobs
from tests.support.receiver import HANG, Receiver

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
README = Path(__file__).resolve().parents[3] / "README.md"


def readme_receiver():
    """The receiver code the README gives the platform, run as it is."""
    text = README.read_text()
    section = text[text.index("### Checking the signature") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README receiver", "exec"), namespace)
    return namespace["verify"]


def invoice_data(user_id: int, invoice_id: int, status: str = "sent") -> dict:
    return {
        "invoice_id": invoice_id,
        "invoice_number": f"INV-{invoice_id:05d}",
        "user_id": user_id,
        "currency": "USD",
        "total": "12.50",
        "total_minor": 1250,
        "period_start": "2026-10-01T00:00:00+00:00",
        "period_end": "2026-11-01T00:00:00+00:00",
        "status": status,
    }


def record(app, user_id, invoice_id, name="billing.invoice.created"):
    with app.app_context():
        data = invoice_data(user_id, invoice_id, "paid" if name.endswith("paid") else "sent")
        catalog.validate(name, data)
        events.record(name, f"invoice:{invoice_id}", data, user_id)
        db.session.commit()
        return db.session.scalar(select(func.max(Event.id)))


def add_endpoint(app, url, types=None, enabled=True):
    with app.app_context():
        endpoint, secret = endpoints.create_endpoint(
            endpoints.EndpointInput(url=url, event_types=types, enabled=enabled),
            actor=None,
            now=T0,
        )
        db.session.commit()
        return endpoint.id, secret


def run(app, now=T0, endpoint_id=None):
    """Fan out, then send rounds to every endpoint until nothing is due at ``now``."""
    with app.app_context():
        delivery.fan_out(now=now)
        db.session.commit()
        ids = [endpoint_id] if endpoint_id else delivery.endpoints_with_due(now)
        for eid in ids:
            while delivery.deliver_round(eid, now=now).sent:
                db.session.commit()
            db.session.commit()
        db.session.remove()


def deliveries(app, endpoint_id):
    with app.app_context():
        rows = db.session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.event_id)
        ).all()
        out = [(r.event_id, r.status, r.attempts) for r in rows]
        db.session.remove()
        return out


@pytest.fixture
def fast(app):
    """Short timeouts, first retry after 10 s."""
    saved = {k: app.config[k] for k in app.config if k.startswith("WEBHOOK_")}
    app.config.update(WEBHOOK_TIMEOUT_SECONDS=1, WEBHOOK_FIRST_RETRY_SECONDS=10)
    yield
    app.config.update(saved)


def test_an_event_is_posted_signed_and_the_readme_receiver_verifies_it(app, make_user, fast):
    ann = make_user("ann@example.com")
    verify = readme_receiver()
    with Receiver() as receiver:
        endpoint_id, secret = add_endpoint(app, receiver.url)
        event_id = record(app, ann.id, 7)
        run(app)
    [request] = receiver.requests
    assert request.path == "/hooks/billing"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == str(event_id)
    body = request.json
    assert body["id"] == event_id and body["type"] == "billing.invoice.created"
    assert body["api_version"] == catalog.API_VERSION
    assert body["data"] == invoice_data(ann.id, 7)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", body["created"])
    header = request.headers["Billing-Signature"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert verify(request.body, header, [secret])
    assert not verify(request.body + b" ", header, [secret])  # another body
    assert not verify(request.body, header, ["whsec_other"])  # another secret
    old = re.sub(r"t=\d+", "t=1700000000", header)
    assert not verify(request.body, old, [secret])  # an old timestamp is refused
    assert deliveries(app, endpoint_id) == [(event_id, "succeeded", 1)]
    with app.app_context():
        [attempt] = db.session.scalars(select(WebhookAttempt)).all()
        assert attempt.status_code == 200 and attempt.error == ""
        assert attempt.response_excerpt == '{"ok": true}'
        assert db.session.get(Event, event_id).delivered_at is not None


def test_500s_are_retried_after_a_backoff_and_the_attempts_are_logged(app, make_user, fast):
    ann = make_user("ann@example.com")
    with Receiver(lambda request, n: 500 if n <= 2 else 200) as receiver:
        endpoint_id, _ = add_endpoint(app, receiver.url)
        event_id = record(app, ann.id, 7)
        run(app)
        assert deliveries(app, endpoint_id) == [(event_id, "pending", 1)]
        run(app, T0 + timedelta(seconds=4))  # the first wait is 5 to 10 s
        assert len(receiver.requests) == 1
        run(app, T0 + timedelta(seconds=10))
        assert deliveries(app, endpoint_id) == [(event_id, "pending", 2)]
        run(app, T0 + timedelta(seconds=19))  # the second wait is 10 to 20 s after the second
        assert len(receiver.requests) == 2
        run(app, T0 + timedelta(seconds=30))
    assert deliveries(app, endpoint_id) == [(event_id, "succeeded", 3)]
    assert {r.json["id"] for r in receiver.requests} == {event_id}  # the same id each time
    with app.app_context():
        attempts = db.session.scalars(select(WebhookAttempt).order_by(WebhookAttempt.id)).all()
        assert [a.status_code for a in attempts] == [500, 500, 200]
        assert attempts[0].error == "HTTP 500"
        assert len(attempts[0].response_excerpt) == delivery.EXCERPT  # bounded
        assert attempts[0].response_excerpt.startswith("receiver says no")


def test_a_timeout_is_a_failure_retried_later(app, make_user, fast):
    ann = make_user("ann@example.com")
    with Receiver(lambda request, n: HANG if n == 1 else 200) as receiver:
        endpoint_id, _ = add_endpoint(app, receiver.url)
        event_id = record(app, ann.id, 7)
        run(app)
        assert deliveries(app, endpoint_id) == [(event_id, "pending", 1)]
        with app.app_context():
            attempt = db.session.scalars(select(WebhookAttempt)).one()
            assert attempt.status_code is None and attempt.error == "timed out after 1 s"
        run(app, T0 + timedelta(minutes=1))
    assert deliveries(app, endpoint_id) == [(event_id, "succeeded", 2)]
    assert [r.json["id"] for r in receiver.requests] == [event_id, event_id]


def test_a_users_later_event_waits_for_the_earlier_one(app, make_user, fast):
    ann, bob = make_user("ann@example.com"), make_user("bob@example.com")
    # Ann's first event fails twice; Bob's are unaffected.
    refused = {"count": 0}

    def answer(request, n):
        if request.json["data"]["invoice_id"] == 1 and refused["count"] < 2:
            refused["count"] += 1
            return 503
        return 200

    with Receiver(answer) as receiver:
        endpoint_id, _ = add_endpoint(app, receiver.url)
        a1, b1, a2, b2, a3 = (
            record(app, ann.id, 1),
            record(app, bob.id, 2),
            record(app, ann.id, 3),
            record(app, bob.id, 4),
            record(app, ann.id, 5),
        )
        run(app)
        got = [r.json["id"] for r in receiver.requests]
        assert sorted(got) == sorted([a1, b1, b2])  # Ann's later events wait
        assert got.index(b1) < got.index(b2)
        run(app, T0 + timedelta(minutes=1))
        run(app, T0 + timedelta(minutes=5))
    ann_ids = [r.json["id"] for r in receiver.requests if r.json["data"]["user_id"] == ann.id]
    assert ann_ids == [a1, a1, a1, a2, a3]  # in order, a1 at least once
    assert all(s == "succeeded" for _, s, _ in deliveries(app, endpoint_id))


def test_many_events_of_many_users_arrive_once_each_in_order_per_user(app, make_user, fast):
    users = [make_user(f"u{n}@example.com") for n in range(5)]
    with Receiver() as receiver:
        add_endpoint(app, receiver.url)
        ids = [record(app, users[n % 5].id, n + 1) for n in range(60)]
        with app.app_context():
            app.config.update(WEBHOOK_BATCH=7, WEBHOOK_CONCURRENCY=3)
        run(app)
    got = [r.json for r in receiver.requests]
    assert sorted(e["id"] for e in got) == ids  # each once
    for user in users:
        mine = [e["id"] for e in got if e["data"]["user_id"] == user.id]
        assert mine == sorted(mine)


def test_a_crashed_sender_leaves_its_deliveries_to_be_sent_again_with_the_same_id(
    app, make_user, fast
):
    ann = make_user("ann@example.com")
    with Receiver() as receiver:
        endpoint_id, _ = add_endpoint(app, receiver.url)
        event_id = record(app, ann.id, 7)
        with app.app_context():
            delivery.fan_out(now=T0)
            policy = delivery.Policy.from_config()
            taken = delivery._take(endpoint_id, now=T0, policy=policy)  # claimed, then "crash"
            db.session.commit()
            assert [i.event_id for i in taken] == [event_id]
        run(app, T0 + timedelta(seconds=30))  # held by the lease: nothing goes
        assert receiver.requests == []
        run(app, T0 + policy.lease())
    assert [r.json["id"] for r in receiver.requests] == [event_id]
    assert deliveries(app, endpoint_id) == [(event_id, "succeeded", 1)]


def test_an_endpoint_failing_for_the_retry_window_is_disabled_and_admins_emailed(
    app, make_user, fast
):
    make_user("boss@example.com", admin=True)
    ann = make_user("ann@example.com")
    with Receiver(lambda request, n: 500) as receiver:
        endpoint_id, _ = add_endpoint(app, receiver.url)
        event_id = record(app, ann.id, 7)
        now = T0
        while now <= T0 + timedelta(days=3, hours=7):
            run(app, now)
            now += timedelta(hours=6)
        tries = len(receiver.requests)
        record(app, ann.id, 8)
        run(app, now + timedelta(days=1))
        assert len(receiver.requests) == tries  # nothing goes to a disabled endpoint
    with app.app_context():
        endpoint = db.session.get(WebhookEndpoint, endpoint_id)
        assert not endpoint.enabled
        assert endpoint.disabled_reason == "every delivery failed for the retry window"
        [mail] = db.session.scalars(select(OutboundEmail)).all()
        assert mail.to_addr == "boss@example.com"
        assert "disabled" in mail.subject and receiver.url in mail.body_text
        assert endpoint.secret not in mail.body_text
        d = db.session.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == event_id))
        assert d.status == DeliveryStatus.FAILED  # given up after 3 days
        entry = db.session.scalars(
            select(AuditEntry).where(AuditEntry.action == "webhook_endpoint.disabled")
        ).one()
        assert entry.actor_id is None and entry.after["enabled"] is False


def test_a_success_in_between_keeps_the_endpoint_enabled(app, make_user, fast):
    ann, bob = make_user("ann@example.com"), make_user("bob@example.com")
    endpoint_id, _ = add_endpoint(app, "http://127.0.0.1:9/x")  # nobody listens: refused
    ann_event = record(app, ann.id, 1)
    run(app, T0)
    run(app, T0 + timedelta(days=2))
    with app.app_context():
        endpoint = db.session.get(WebhookEndpoint, endpoint_id)
        assert endpoint.enabled and endpoint.failing_since == T0
        attempt = db.session.scalars(select(WebhookAttempt)).first()
        assert attempt.status_code is None and "ConnectionRefused" in attempt.error

    def answer(request, n):  # Ann's event is refused, Bob's taken
        return 500 if request.json["data"]["user_id"] == ann.id else 200

    with Receiver(answer) as receiver:
        with app.app_context():
            db.session.get(WebhookEndpoint, endpoint_id).url = receiver.url
            db.session.commit()
        bob_event = record(app, bob.id, 2)
        run(app, T0 + timedelta(days=2, hours=12))
        run(app, T0 + timedelta(days=3, hours=1))
    with app.app_context():
        endpoint = db.session.get(WebhookEndpoint, endpoint_id)
        assert endpoint.enabled  # Bob's delivery succeeded: the failing streak was broken
        assert endpoint.failing_since == T0 + timedelta(days=3, hours=1)
    assert deliveries(app, endpoint_id) == [
        (ann_event, "failed", 4),  # failing since T0: given up after 3 days
        (bob_event, "succeeded", 1),
    ]


def test_after_a_rotation_both_secrets_sign_for_a_day(app, make_user, fast):
    ann = make_user("ann@example.com")
    verify = readme_receiver()
    with Receiver() as receiver:
        endpoint_id, old = add_endpoint(app, receiver.url)
        with app.app_context():
            new = endpoints.rotate_secret(
                db.session.get(WebhookEndpoint, endpoint_id), actor=None, now=T0
            )
            db.session.commit()
        assert new != old and new.startswith("whsec_")
        record(app, ann.id, 1)
        run(app, T0 + timedelta(hours=23))
        record(app, ann.id, 2)
        run(app, T0 + timedelta(hours=24))
    first, second = receiver.requests
    header = first.headers["Billing-Signature"]
    assert len(re.findall("v1=", header)) == 2
    assert verify(first.body, header, [new]) and verify(first.body, header, [old])
    header = second.headers["Billing-Signature"]
    assert len(re.findall("v1=", header)) == 1
    assert verify(second.body, header, [new]) and not verify(second.body, header, [old])


def test_disabled_endpoints_and_unmatched_types_get_nothing(app, make_user, fast):
    ann = make_user("ann@example.com")
    with Receiver() as on, Receiver() as off, Receiver() as paid_only:
        add_endpoint(app, on.url)
        add_endpoint(app, off.url, enabled=False)
        add_endpoint(app, paid_only.url, types=["billing.invoice.paid"])
        created = record(app, ann.id, 1)
        paid = record(app, ann.id, 1, "billing.invoice.paid")
        run(app)
    assert [r.json["id"] for r in on.requests] == [created, paid]
    assert off.requests == []
    assert [r.json["id"] for r in paid_only.requests] == [paid]


def test_fanning_out_twice_adds_no_delivery(app, make_user, fast):
    ann = make_user("ann@example.com")
    endpoint_id, _ = add_endpoint(app, "http://127.0.0.1:9/x")
    event_id = record(app, ann.id, 1)
    with app.app_context():
        delivery.fan_out(now=T0)
        db.session.execute(
            Event.__table__.update().values(delivered_at=None)
        )  # as if a second dispatcher read the event before the first marked it
        delivery.fan_out(now=T0)
        db.session.commit()
    assert deliveries(app, endpoint_id) == [(event_id, "pending", 0)]


def test_replay_one_event_and_a_time_range(app, make_user, fast):
    ann = make_user("ann@example.com")
    e1 = record(app, ann.id, 1)
    e2 = record(app, ann.id, 2)
    run(app)  # handed out while no endpoint existed
    with Receiver() as receiver:
        endpoint_id, _ = add_endpoint(app, receiver.url)
        run(app)
        assert receiver.requests == []
        with app.app_context():
            endpoint = db.session.get(WebhookEndpoint, endpoint_id)
            delivery.replay_event(endpoint, e1, actor=None, now=T0)
            db.session.commit()
        run(app)
        assert [r.json["id"] for r in receiver.requests] == [e1]
        with app.app_context():
            endpoint = db.session.get(WebhookEndpoint, endpoint_id)
            created = db.session.get(Event, e1).created_at
            count = delivery.replay_range(
                endpoint,
                created - timedelta(minutes=1),
                created + timedelta(hours=1),
                actor=None,
                now=T0,
            )
            db.session.commit()
            assert count == 2
        run(app)
    assert [r.json["id"] for r in receiver.requests] == [e1, e1, e2]
    with app.app_context():
        actions = db.session.scalars(
            select(AuditEntry.action).where(AuditEntry.action == "webhook.replayed")
        ).all()
        assert len(actions) == 2


def test_the_dispatch_job_hands_out_and_sends(app, make_user, fast):
    ann = make_user("ann@example.com")
    with Receiver() as receiver:
        add_endpoint(app, receiver.url)
        event_id = record(app, ann.id, 1)
        with app.app_context():
            assert jobs.dispatch() == {"events": 1, "endpoints": 1}
    assert [r.json["id"] for r in receiver.requests] == [event_id]


def test_urls_are_checked(ctx):
    for url, problem in [
        ("ftp://example.com/x", "http"),
        ("https://", "http"),
        ("javascript:alert(1)", "http"),
        ("https://user:pw@example.com/", "user name"),
        ("https://example.com:99999/", "port"),
        ("https://exa mple.com/", "spaces"),
    ]:
        with pytest.raises(Exception) as info:
            endpoints.create_endpoint(
                endpoints.EndpointInput(url=url, event_types=None), actor=None, now=T0
            )
        assert problem in str(info.value.fields["url"]), url
    with pytest.raises(Exception) as info:
        endpoints.create_endpoint(
            endpoints.EndpointInput(url="https://example.com/", event_types=["billing.nope"]),
            actor=None,
            now=T0,
        )
    assert "unknown event type" in info.value.fields["event_types"]


def test_the_metrics_count_deliveries_waiting_by_endpoint_and_state(app, make_user, fast):
    ann, bob = make_user("ann@example.com"), make_user("bob@example.com")
    endpoint_id, _ = add_endpoint(app, "http://127.0.0.1:9/x")  # refused
    record(app, ann.id, 1)
    record(app, bob.id, 2)
    with app.app_context():
        delivery.fan_out(now=T0)
        db.session.commit()
        text = signals.metrics_text(T0).decode()
        assert f'billing_webhook_deliveries{{endpoint="{endpoint_id}",state="pending"}} 2.0' in text
        delivery.deliver_round(endpoint_id, now=T0)
        db.session.commit()
        text = signals.metrics_text(T0).decode()

    # The round tried one delivery or both (the sender's threads may reach the second before
    # the first one's refusal stops the round): tried ones are retrying, none has failed.
    def gauge(state: str) -> float:
        line = f'billing_webhook_deliveries{{endpoint="{endpoint_id}",state="{state}"}} '
        return float(text.split(line, 1)[1].split("\n", 1)[0])

    assert gauge("retrying") >= 1.0
    assert gauge("retrying") + gauge("pending") == 2.0
    assert gauge("failed") == 0.0

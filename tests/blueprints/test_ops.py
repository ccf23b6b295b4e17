"""Operators' signals: /healthz (database and Redis, 200 or 503), /metrics in the
Prometheus format for admin tokens, the METRICS_TOKEN or (METRICS_LOCAL) this host, and
LOG_FORMAT=json."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from portal.config import ConfigError, build_config
from portal.extensions import db
from portal.models import Event, JobRun, MeterMark
from portal.services.admin import signals


def test_healthz_answers_200_when_the_database_and_redis_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_healthz_answers_503_naming_what_is_down(client, monkeypatch):
    closed = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    monkeypatch.setattr(signals.queues, "redis_connection", lambda: closed)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unavailable",
        "database": "ok",
        "redis": "unavailable",
    }


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_report_jobs_queues_and_lags(app, api, make_user):
    now = datetime.now(UTC).replace(microsecond=0)
    ann = make_user()
    with app.app_context():
        for n, (status, ms) in enumerate(
            [("succeeded", 1500), ("succeeded", 500), ("failed", 250)]
        ):
            db.session.add(
                JobRun(
                    job_name="meter",
                    slot=f"s{n}",
                    origin="schedule",
                    job_id=f"meter:{n}",
                    func="f",
                    args=[],
                    queue="metering",
                    status=status,
                    scheduled_by="test",
                    duration_ms=ms,
                )
            )
        db.session.add(MeterMark(chunk=0, metered_through=now - timedelta(hours=2)))
        db.session.add(
            Event(
                name="billing.voucher.redeemed",
                subject="a",
                user_id=ann.id,
                payload={
                    "user_id": ann.id,
                    "voucher_id": 1,
                    "amount": "1.00",
                    "amount_minor": 100,
                    "currency": "USD",
                },
                created_at=now - timedelta(minutes=5),
            )
        )
        db.session.commit()
        db.session.remove()
    token = api.token(make_user(admin=True), "admin")
    response = api.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    got = _samples(response.get_data(as_text=True))
    assert got["billing_job_runs_total", (("job", "meter"), ("outcome", "succeeded"))] == 2
    assert got["billing_job_runs_total", (("job", "meter"), ("outcome", "failed"))] == 1
    assert got["billing_job_run_seconds_total", (("job", "meter"), ("outcome", "succeeded"))] == 2.0
    assert got["billing_job_last_duration_seconds", (("job", "meter"),)] == 0.25
    assert got["billing_queue_jobs", (("queue", "metering"), ("state", "queued"))] == 0
    assert 7200 <= got["billing_metering_lag_seconds", ()] < 7300
    assert got["billing_outbox_pending_events", ()] == 1
    assert 300 <= got["billing_outbox_lag_seconds", ()] < 400


def test_metrics_need_an_admin_token_the_metrics_token_or_a_local_caller(
    app, make_app, api, make_user
):
    assert app.test_client().get("/metrics").status_code == 401
    user = make_user()
    for scope in ("user", "platform"):
        headers = {"Authorization": f"Bearer {api.token(user, scope)}"}
        assert api.client.get("/metrics", headers=headers).status_code == 401
    assert api.client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401

    scraper = make_app(METRICS_TOKEN="scrape-secret-0123456789").test_client()
    ok = scraper.get("/metrics", headers={"Authorization": "Bearer scrape-secret-0123456789"})
    assert ok.status_code == 200
    assert scraper.get("/metrics", headers={"Authorization": "Bearer scrape"}).status_code == 401

    local = make_app(METRICS_LOCAL=True).test_client()
    assert local.get("/metrics").status_code == 200  # the test client calls from 127.0.0.1
    far = local.get("/metrics", environ_overrides={"REMOTE_ADDR": "203.0.113.9"})
    assert far.status_code == 401


def test_metrics_text_is_valid_prometheus_with_no_data(app):
    with app.app_context():
        text = signals.metrics_text().decode()
        db.session.remove()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"billing_job_runs", "billing_queue_jobs", "billing_card_payments"} <= names


@pytest.fixture
def json_logs(make_app):
    make_app(LOG_FORMAT="json")
    yield
    make_app()  # back to text lines for the tests after


def test_log_format_json_writes_one_json_object_a_line(json_logs):
    [handler] = [h for h in logging.getLogger().handlers if type(h).__name__ == "_PortalHandler"]
    stream = io.StringIO()
    old = handler.setStream(stream)
    try:
        logging.getLogger("portal.test").warning("hello %s", "there")
    finally:
        handler.setStream(old)
    line = json.loads(stream.getvalue().strip())
    assert line["level"] == "warning" and line["logger"] == "portal.test"
    assert line["message"] == "hello there" and line["time"].endswith("Z")


def test_log_format_is_text_or_json(monkeypatch, tmp_path):
    monkeypatch.setenv("SECRET_KEY", "test-secret-key-0123456789abcdef")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        build_config(str(tmp_path))
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    assert build_config(str(tmp_path))["LOG_FORMAT"] == "json"

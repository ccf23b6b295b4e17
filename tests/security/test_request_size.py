"""Every request has a size limit, chunked bodies included: MAX_CONTENT_LENGTH for the site and
the API, WEBHOOK_MAX_CONTENT_LENGTH for the gateway's webhook. Over it: 413 (a JSON error under
/api/, a page elsewhere) and nothing is read into a view or stored. Through the Werkzeug test
client (a server that terminates chunked streams, as gunicorn does) and through gunicorn itself
on a real socket."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import VoucherRequest, WebhookEvent
from tests.support.app import BASE_CONFIG
from tests.support.processes import Process
from tests.support.webhooks import WEBHOOK_SECRET, event_body, sign

WEBHOOK = "/api/plugins/billing/webhook"
API = "/api/plugins/billing/credits"


def count(app, model) -> int:
    with app.app_context():
        try:
            return db.session.scalar(select(func.count()).select_from(model))
        finally:
            db.session.remove()


def padded_event(size: int, event_type: str = "customer.created") -> bytes:
    """A well-formed event of about ``size`` bytes (a type no handler takes)."""
    body = json.loads(event_body(event_type, obj={"id": "cus_pad", "object": "customer"}))
    body["data"]["object"]["description"] = ""
    pad = size - len(json.dumps(body).encode())
    body["data"]["object"]["description"] = "x" * max(pad, 0)
    return json.dumps(body).encode()


def chunked(client, url: str, body: bytes, content_type: str, **headers):
    """POST ``body`` with Transfer-Encoding: chunked and no Content-Length, from a server that
    de-chunks and says it terminates the stream (wsgi.input_terminated), as gunicorn does."""
    return client.post(
        url,
        input_stream=io.BytesIO(body),
        content_type=content_type,
        headers={"Transfer-Encoding": "chunked", **headers},
        environ_overrides={"wsgi.input_terminated": True},
    )


@pytest.mark.usefixtures("stripe_app")
def test_a_body_over_the_limit_with_a_length_is_413(app, client):
    big = b"x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    page = client.post("/auth/login", data=big, content_type="application/x-www-form-urlencoded")
    assert page.status_code == 413 and page.mimetype == "text/html"
    assert (
        "The request body is larger than the 1,048,576 bytes this address accepts."
        in page.get_data(as_text=True)
    )
    api = client.post(API, data=big, content_type="application/json")
    assert api.status_code == 413
    assert api.get_json()["error"]["code"] == "too_large"
    hook = padded_event(app.config["WEBHOOK_MAX_CONTENT_LENGTH"] + 1)
    answer = client.post(
        WEBHOOK,
        data=hook,
        content_type="application/json",
        headers={"Stripe-Signature": sign(hook)},
    )
    assert answer.status_code == 413
    assert answer.get_json()["error"] == {
        "code": "too_large",
        "message": "The request body is larger than the 262,144 bytes this address accepts.",
    }
    assert count(app, WebhookEvent) == 0


@pytest.mark.usefixtures("stripe_app")
def test_a_signed_chunked_webhook_over_its_limit_is_413_and_not_stored(app, client):
    for size in (app.config["WEBHOOK_MAX_CONTENT_LENGTH"] + 1, 3 * 1024 * 1024):
        body = padded_event(size)
        answer = chunked(
            client, WEBHOOK, body, "application/json", **{"Stripe-Signature": sign(body)}
        )
        assert answer.status_code == 413, size
        assert answer.get_json()["error"]["code"] == "too_large"
    assert count(app, WebhookEvent) == 0
    # Exactly at the limit it is read whole, verified and stored.
    body = padded_event(app.config["WEBHOOK_MAX_CONTENT_LENGTH"])
    assert len(body) == app.config["WEBHOOK_MAX_CONTENT_LENGTH"]
    answer = chunked(client, WEBHOOK, body, "application/json", **{"Stripe-Signature": sign(body)})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert count(app, WebhookEvent) == 1


def test_a_chunked_api_body_over_the_limit_is_413(app, client):
    body = b'{"amount": "5", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    answer = chunked(client, API, body, "application/json")
    assert answer.status_code == 413
    assert answer.get_json()["error"]["code"] == "too_large"
    small = chunked(client, API, b'{"amount": "5"}', "application/json")
    assert small.status_code == 401  # read, and on to the token check


def test_a_chunked_form_over_the_limit_is_413_and_under_it_is_read_whole(
    app, client, auth, make_user
):
    auth.login(make_user())
    token = client.fetch_csrf()
    body = f"csrf_token={token}&amount=5&reason=".encode() + b"x" * (1024 * 1024)
    answer = chunked(client, "/wallet/voucher-requests", body, "application/x-www-form-urlencoded")
    assert answer.status_code == 413 and "Too large" in answer.get_data(as_text=True)
    assert count(app, VoucherRequest) == 0
    body = f"csrf_token={token}&amount=5&reason=a+small+project".encode()
    answer = chunked(client, "/wallet/voucher-requests", body, "application/x-www-form-urlencoded")
    assert answer.status_code == 303  # CSRF and the form read the body the guard cached
    with app.app_context():
        assert [r.reason for r in db.session.scalars(select(VoucherRequest))] == ["a small project"]
        db.session.remove()


# -- through gunicorn (what `flask billing serve` and production run) on a real socket ------
LIMIT, HOOK_LIMIT = 65536, 16384


@pytest.fixture
def gunicorn(app, database_url, redis_url, tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STRIPE_")
        and k not in ("TESTING", "BILLING_CONFIG", "FLASK_APP", "RQ_ASYNC")
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        PYTHONUNBUFFERED="1",
        SECRET_KEY=BASE_CONFIG["SECRET_KEY"],
        INSTANCE_PATH=str(tmp_path / "instance"),
        MAX_CONTENT_LENGTH=str(LIMIT),
        WEBHOOK_MAX_CONTENT_LENGTH=str(HOOK_LIMIT),
        STRIPE_SECRET_KEY="sk_test_webhooks",
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        BUILTIN_BILLING="false",
    )
    server = Process(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--bind", "127.0.0.1:0", "wsgi:app"],
        env,
        "gunicorn",
    )
    try:
        line = server.wait_for_line(r"Listening at: http://127\.0\.0\.1:\d+")
        server.wait_for_line(r"Booting worker")
        yield int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
    finally:
        # TERM: gunicorn stops its worker too (killing the master alone would leave the worker
        # holding the output pipe open).
        server.signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        print(server.output[-5000:])  # shown when the test fails


def raw_post(
    port: int, path: str, body: bytes, *, chunked: bool = True, headers: tuple[str, ...] = ()
) -> tuple[int, bytes]:
    """One POST over a plain socket: the body in 8 KiB chunks (or with a Content-Length).
    Returns the status and the response body."""
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        pieces = [body[i : i + 8192] for i in range(0, len(body), 8192)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        payload = body
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading it all: its answer is still there
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    status, _, rest = received.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 "), received[:200]
    return int(status.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_gunicorn_refuses_chunked_bodies_over_the_limits(app, gunicorn):
    hook = padded_event(HOOK_LIMIT + 1000)
    status, body = raw_post(
        gunicorn,
        WEBHOOK,
        hook,
        headers=("Content-Type: application/json", f"Stripe-Signature: {sign(hook)}"),
    )
    assert status == 413 and json.loads(body)["error"]["code"] == "too_large"
    assert count(app, WebhookEvent) == 0

    status, body = raw_post(
        gunicorn,
        API,
        b'{"pad": "' + b"x" * LIMIT + b'"}',
        headers=("Content-Type: application/json",),
    )
    assert status == 413 and json.loads(body)["error"]["code"] == "too_large"

    status, body = raw_post(
        gunicorn,
        "/auth/login",
        b"email=" + b"x" * LIMIT,
        headers=("Content-Type: application/x-www-form-urlencoded",),
    )
    assert status == 413 and b"<h1>Too large</h1>" in body

    status, body = raw_post(
        gunicorn,
        API,
        b'{"pad": "' + b"x" * LIMIT + b'"}',
        chunked=False,
        headers=("Content-Type: application/json",),
    )
    assert status == 413 and json.loads(body)["error"]["code"] == "too_large"


def test_gunicorn_reads_a_chunked_body_under_the_limit_whole(app, gunicorn):
    hook = padded_event(HOOK_LIMIT - 100)
    status, body = raw_post(
        gunicorn,
        WEBHOOK,
        hook,
        headers=("Content-Type: application/json", f"Stripe-Signature: {sign(hook)}"),
    )
    assert status == 200, body
    assert json.loads(body) == {"received": True, "duplicate": False}
    assert count(app, WebhookEvent) == 1

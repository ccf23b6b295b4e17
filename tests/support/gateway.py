"""The Stripe stand-in as a real process on 127.0.0.1, and a gateway talking to it."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from portal.gateways.stripe import StripeGateway
from tests.support.app import need

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"standin listening on (http://127\.0\.0\.1:(\d+))")
SECRET_KEY = "sk_test_" + "0" * 24
TEST_CARDS = {
    "ok": "4242424242424242",
    "charge_declined": "4000000000000341",
    "three_d_secure": "4000002760003184",
    "disputed": "4000000000000259",
}


@dataclass
class Standin:
    base_url: str
    port: int
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.base_url + path, timeout=10, **kwargs)


@contextmanager
def running_standin(log_path: Path, *args: str) -> Iterator[Standin]:
    """``python -m standin --port 0 *args`` as its own process, until the block ends."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "standin", "--port", "0", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    match = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        match = READY.search(log_path.read_text(errors="replace"))
        if match:
            break
        time.sleep(0.05)
    if not match:
        process.kill()
        process.wait()
    need(
        match is not None,
        "the Stripe stand-in did not start: " + log_path.read_text(errors="replace")[-2000:],
    )
    try:
        yield Standin(match.group(1), int(match.group(2)), log_path, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """One stand-in per test module: its objects and idempotency keys (``topup:1:...``, user
    ids start again after every reset) must not meet another module's."""
    with running_standin(tmp_path_factory.mktemp("standin") / "standin.log") as server:
        yield server


@pytest.fixture
def gateway(standin) -> StripeGateway:
    return StripeGateway(
        secret_key=SECRET_KEY,
        webhook_secret="whsec_gateway_tests",
        api_base=standin.base_url,
        timeout_seconds=10,
    )


@pytest.fixture
def customer(gateway) -> str:
    tag = uuid.uuid4().hex[:10]
    return gateway.ensure_customer(int(tag[:6], 16), f"{tag}@example.com", "Test Customer")


def save_card(
    gateway: StripeGateway, customer: str, number: str, *, authenticate: bool = True
) -> str:
    """Add a card as a person would: the hosted "add card" page (Checkout, setup mode),
    typing the number there. Returns the new payment method's id."""
    session = gateway.create_setup_session(
        customer, success_url="http://127.0.0.1:9/done", cancel_url="http://127.0.0.1:9/cancel"
    )
    answer = requests.post(
        session.url,
        data={"number": number, "exp": "12 / 34", "cvc": "123"},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303, answer.text
    if "/sandbox/authenticate/" in answer.headers["Location"]:
        assert authenticate
        answer = requests.post(
            answer.headers["Location"],
            data={"result": "complete"},
            allow_redirects=False,
            timeout=10,
        )
        assert answer.status_code == 303
    assert answer.headers["Location"] == "http://127.0.0.1:9/done"
    setup = gateway.retrieve_setup_intent(
        gateway.retrieve_checkout_session(session.id).setup_intent
    )
    assert setup.status == "succeeded"
    return setup.payment_method


@dataclass
class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records what the stand-in delivers."""

    url: str
    secret: str
    deliveries: list[tuple[dict, bytes]] = field(default_factory=list)

    def events(self) -> list[dict]:
        return [json.loads(body) for _, body in list(self.deliveries)]

    def wait_for(self, event_type: str, object_id: str, timeout: float = 15) -> tuple[dict, bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for headers, body in list(self.deliveries):
                event = json.loads(body)
                if event["type"] == event_type and event["data"]["object"].get("id") == object_id:
                    return headers, body
            time.sleep(0.05)
        seen = [(e["type"], e["data"]["object"].get("id")) for e in self.events()]
        raise AssertionError(f"no {event_type} for {object_id} within {timeout}s; got {seen}")


@pytest.fixture
def receiver(standin):
    received: list[tuple[dict, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append((dict(self.headers), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook_id = uuid.uuid4().hex
    secret = "whsec_" + uuid.uuid4().hex
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    answer = standin.post(f"/_config/webhooks/{hook_id}", data={"url": url, "secret": secret})
    assert answer.status_code == 200, answer.text
    yield Receiver(url, secret, received)
    requests.delete(f"{standin.base_url}/_config/webhooks/{hook_id}", timeout=10)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)

"""`flask billing serve` with no Stripe key: the stand-in starts on 127.0.0.1, the portal is
pointed at it, and a card payment on its sandbox page reaches the portal as webhooks."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys

import requests
from sqlalchemy import select

from portal.extensions import db
from portal.gateways.stripe import StripeGateway
from portal.models import WebhookEvent
from portal.money import Money
from tests.support.app import BASE_CONFIG
from tests.support.gateway import TEST_CARDS
from tests.support.processes import Process, wait_until


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_starts_the_stand_in_and_its_webhooks_reach_the_portal(
    app, database_url, redis_url, tmp_path
):
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
        STANDIN_PORT="0",
        BUILTIN_BILLING="false",
    )
    port = _free_port()
    serve = Process(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "wsgi",
            "billing",
            "serve",
            "--port",
            str(port),
            "--web-workers",
            "1",
        ],
        env,
        "serve",
    )
    try:
        line = serve.wait_for_line(r"Stripe stand-in at http://127\.0\.0\.1:\d+")
        base = re.search(r"(http://127\.0\.0\.1:\d+)", line).group(1)
        serve.wait_for_line(r"portal running at http://127\.0\.0\.1:\d+/")
        serve.wait_for_line(r"standin listening on " + re.escape(base))

        def portal_answers() -> bool:
            try:
                return (
                    requests.get(f"http://127.0.0.1:{port}/auth/login", timeout=5).status_code
                    == 200
                )
            except requests.RequestException:
                return False

        wait_until(portal_answers, timeout=60, message="the portal answers")
        # Only loopback: nothing answers for this port on another address of the machine.
        with open("/proc/net/tcp") as table:
            listening = table.read()
        standin_port = int(base.rsplit(":", 1)[1])
        assert f"0100007F:{standin_port:04X}" in listening
        assert f"00000000:{standin_port:04X}" not in listening

        gateway = StripeGateway(secret_key="sk_test_demo", api_base=base)
        customer = gateway.ensure_customer(1, "demo@example.com", "Demo")
        session = gateway.create_checkout_session(
            customer,
            Money(1500, "USD"),
            success_url=f"http://127.0.0.1:{port}/wallet",
            cancel_url=f"http://127.0.0.1:{port}/wallet",
            metadata={"topup": "demo"},
        )
        paid = requests.post(
            session.url,
            data={"number": TEST_CARDS["ok"], "exp": "12/34", "cvc": "123"},
            allow_redirects=False,
            timeout=10,
        )
        assert paid.headers["Location"] == f"http://127.0.0.1:{port}/wallet"

        def processed() -> dict[str, str | None]:
            with app.app_context():
                rows = db.session.execute(select(WebhookEvent.type, WebhookEvent.outcome)).all()
                db.session.remove()
            return dict(rows)

        try:
            wait_until(
                lambda: (
                    processed().get("checkout.session.completed") == "handled"
                    and processed().get("payment_intent.succeeded") == "handled"
                ),
                timeout=90,
                message="the webhooks stored and processed by the worker",
            )
        except AssertionError:
            raise AssertionError(f"{processed()}\n{serve.output[-6000:]}") from None
    finally:
        serve.signal(signal.SIGINT)
        code = serve.wait()
    assert code == 0, serve.output


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: each one's parent)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_serve_keeps_the_webhook_secret_off_every_command_line(
    app, database_url, redis_url, tmp_path
):
    """`ps` shows command lines to every user of the machine: the stand-in gets the secret it
    signs with through its environment (STANDIN_WEBHOOK_SECRET), which only its owner reads."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STRIPE_", "STANDIN_"))
        and k not in ("TESTING", "BILLING_CONFIG", "FLASK_APP", "RQ_ASYNC")
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        PYTHONUNBUFFERED="1",
        SECRET_KEY=BASE_CONFIG["SECRET_KEY"],
        INSTANCE_PATH=str(tmp_path / "instance"),
        STANDIN_PORT="0",
        BUILTIN_BILLING="false",
    )
    serve = Process(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "wsgi",
            "billing",
            "serve",
            "--port",
            str(_free_port()),
            "--web-workers",
            "1",
        ],
        env,
        "serve",
    )
    try:
        line = serve.wait_for_line(r"Stripe stand-in at http://127\.0\.0\.1:\d+")
        base = re.search(r"(http://127\.0\.0\.1:\d+)", line).group(1)
        serve.wait_for_line(r"standin listening on " + re.escape(base))
        serve.wait_for_line(r"Booting worker")
        processes = [serve.pid, *_descendants(serve.pid)]
        command_lines = {pid: _read(f"/proc/{pid}/cmdline") for pid in processes}
        [standin] = [pid for pid, cmd in command_lines.items() if b"standin\0" in cmd]
        secrets = [
            v
            for v in _read(f"/proc/{standin}/environ").split(b"\0")
            if v.startswith(b"STANDIN_WEBHOOK_SECRET=")
        ]
        assert len(secrets) == 1
        secret = secrets[0].split(b"=", 1)[1]
        assert secret.startswith(b"whsec_") and len(secret) > 20
        assert len(command_lines) >= 5  # serve, the stand-in, gunicorn and its worker, ...
        for cmd in command_lines.values():
            assert secret not in cmd and b"--webhook-secret" not in cmd, cmd
            assert b"whsec_" not in cmd, cmd
    finally:
        serve.signal(signal.SIGINT)
        code = serve.wait()
    assert code == 0, serve.output

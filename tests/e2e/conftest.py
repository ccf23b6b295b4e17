"""Browser tests: the test app served over real HTTP on loopback (werkzeug, one thread per
request) and driven by Debian's chromium through Playwright's sync API.

Every page opened through ``open_page`` reports console errors, uncaught exceptions,
Content-Security-Policy violations and 4xx/5xx responses into ``BrowserProblems``; a test
ends with ``problems.assert_none()``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import requests
from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from standin.server import DEFAULT_EVENTS
from tests.support.app import need
from tests.support.gateway import running_standin

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Runs in every document before the page's own scripts (injected by the browser, so the
# CSP does not apply to it) and reports each violation to Python.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__reportCspViolation(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}` +
                              ` on ${e.documentURI}`);
});
"""


def _require_chromium() -> None:
    need(
        os.access(CHROMIUM, os.X_OK),
        f"{CHROMIUM} is missing: apt-get install chromium (browsers are never downloaded)",
    )


@pytest.fixture(scope="session")
def browser_type_launch_args():
    """pytest-playwright's launch options, should a test use its ``page`` fixture."""
    _require_chromium()
    return {"executable_path": CHROMIUM, "args": CHROMIUM_ARGS, "headless": True}


@pytest.fixture(scope="session")
def live_server(make_app):
    """The portal on http://127.0.0.1:<free port>, requests served in their own threads.
    The wallet panel polls every second instead of every 15."""
    app = make_app(WALLET_POLL_SECONDS=1)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    app.config["PUBLIC_URL"] = url
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield SimpleNamespace(url=url, app=app)
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def chromium():
    _require_chromium()

    # Module scope: Playwright's sync API keeps an event loop on this thread while it runs.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@dataclass
class BrowserProblems:
    items: list[str] = field(default_factory=list)

    def watch(self, page, label: str) -> None:
        page.on(
            "console",
            lambda msg: (
                self.items.append(f"{label} console {msg.type}: {msg.text} ({msg.location})")
                if msg.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda exc: self.items.append(f"{label} uncaught: {exc}"))
        page.on(
            "response",
            lambda r: (
                self.items.append(f"{label} HTTP {r.status}: {r.request.method} {r.url}")
                if r.status >= 400
                else None
            ),
        )

    def assert_none(self, allow: tuple[int, ...] = ()) -> None:
        """No problems but the answers with the statuses in ``allow`` (a refused form's 422,
        say), which the browser also logs to the console."""
        items = [
            item
            for item in self.items
            if not any(f"HTTP {code}:" in item or f"status of {code} " in item for code in allow)
        ]
        assert not items, "the browser reported problems:\n" + "\n".join(items)


@pytest.fixture
def browser_problems() -> BrowserProblems:
    return BrowserProblems()


@pytest.fixture
def open_page(app, chromium, live_server, browser_problems):
    """open_page(label, **context_options): a page in a fresh browser context (its own
    cookies: one user each), with base_url set to the live server. ``app`` has reset the
    database; the ledger is checked after the test."""
    contexts = []

    def open_(label: str = "page", **options):
        context = chromium.new_context(base_url=live_server.url, **options)
        contexts.append(context)
        context.set_default_timeout(10_000)
        context.expose_function(
            "__reportCspViolation",
            lambda text: browser_problems.items.append(f"{label} CSP: {text}"),
        )
        context.add_init_script(CSP_LISTENER)
        page = context.new_page()
        browser_problems.watch(page, label)
        return page

    yield open_
    for context in contexts:
        context.close()


# -- card payments against the Stripe stand-in ------------------------------------------------
WEBHOOK_PATH = "/api/plugins/billing/webhook"
PAYMENT_KEYS = ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_BASE")


@pytest.fixture(scope="module")
def live_standin(live_server, tmp_path_factory):
    """The Stripe stand-in as its own process (``python -m standin``), delivering the events
    it signs to the live server's webhook endpoint, as ``make run`` wires them."""
    secret = "whsec_" + uuid.uuid4().hex
    log_path = tmp_path_factory.mktemp("live-standin") / "standin.log"
    with running_standin(
        log_path, "--webhook-url", live_server.url + WEBHOOK_PATH, "--webhook-secret", secret
    ) as server:
        yield SimpleNamespace(
            base_url=server.base_url, webhook_secret=secret, log_path=log_path, log=server.log
        )


@pytest.fixture
def live_payments(app, live_server, live_standin):
    """Card payments on in the live server for one test: its gateway talks to the stand-in
    and verifies the stand-in's webhook signatures; the CSP lets forms lead to the stand-in's
    pages. The settings (and the gateway built from them) are put back afterwards.

    Each test gets its own secret key: the stand-in keeps idempotency keys per API key, and
    user ids start again from 1 after the database is reset. ``wait_for_webhooks()`` waits
    until the stand-in has delivered every event of this test (the portal answered 2xx, so
    nothing is still being processed); the fixture does so before the database is reset."""
    config = live_server.app.config
    saved = {key: config.get(key) for key in PAYMENT_KEYS}
    secret_key = "sk_test_" + uuid.uuid4().hex
    config.update(
        STRIPE_SECRET_KEY=secret_key,
        STRIPE_WEBHOOK_SECRET=live_standin.webhook_secret,
        STRIPE_API_BASE=live_standin.base_url,
    )
    live_server.app.extensions.pop("portal.gateway", None)

    def events() -> list[dict]:
        answer = requests.get(
            live_standin.base_url + "/v1/events",
            params={"limit": 100},
            auth=(secret_key, ""),
            timeout=10,
        )
        answer.raise_for_status()
        return [e for e in answer.json()["data"] if e["type"] in DEFAULT_EVENTS]

    before = {e["id"] for e in events()}

    def wait_for_webhooks(timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            log = live_standin.log()
            mine = [e for e in events() if e["id"] not in before]
            waiting = [e for e in mine if f"webhook {e['type']} {e['id']} delivered" not in log]
            if not waiting:
                return mine
            if time.monotonic() > deadline:
                raise AssertionError(
                    "the stand-in has not delivered "
                    + ", ".join(f"{e['type']} {e['id']}" for e in waiting)
                    + f" within {timeout}s; its deliveries:\n"
                    + "\n".join(line for line in log.splitlines() if "webhook" in line)[-4000:]
                )
            time.sleep(0.2)

    yield SimpleNamespace(
        app=live_server.app,
        url=live_server.url,
        standin=live_standin,
        wait_for_webhooks=wait_for_webhooks,
    )
    try:
        wait_for_webhooks()
    finally:
        config.update(saved)
        live_server.app.extensions.pop("portal.gateway", None)

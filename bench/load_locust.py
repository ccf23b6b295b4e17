"""The simulated users of bench/load.py (a locustfile; bench/load.py runs locust on it).

PortalUser: each one a different seeded user (the next one of LOAD_USERS_FILE from
LOAD_USER_OFFSET on), logged in through the login form with its CSRF token, then mixed
journeys with think time: Overview; Usage and a switch to an earlier period (as htmx asks
for it); Invoices, an invoice, its PDF; the Wallet and its second page; the JSON API's usage
and invoices with the user's bearer token.
BareUser: the same think time against bench/bare_app.py.

The counted window starts LOAD_SETTLE_SECONDS after the last login was answered (the logins
are timed apart; the requests queued behind them are answered meanwhile) and lasts
LOAD_MEASURE_SECONDS; then the run stops and writes its figures to LOAD_RESULT_FILE
(JSON: per route requests, errors, requests per second, p50 and p99).

Environment (set by bench/load.py): LOAD_USERS_FILE, LOAD_USER_OFFSET, LOAD_USERS_COUNT,
LOAD_MEASURE_SECONDS, LOAD_SETTLE_SECONDS, LOAD_RESULT_FILE, LOAD_THINK ("min,max" seconds).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import time

import gevent
from locust import FastHttpUser, between, events, task

with open(os.environ["LOAD_USERS_FILE"]) as f:
    SEED = json.load(f)
USERS = SEED["users"]
PERIODS = SEED["periods"]  # "YYYY-MM", newest first: the current period, then the invoiced ones
_next_user = itertools.count(int(os.environ.get("LOAD_USER_OFFSET", "0")))
THINK = [float(x) for x in os.environ.get("LOAD_THINK", "0.5,1.5").split(",")]
CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
API = "/api/plugins/billing"
LOGIN = "POST /auth/login"
_logins: list[float] = []
_login_failures = [0]
COUNT = int(os.environ.get("LOAD_USERS_COUNT", "1"))
MEASURE_S = float(os.environ.get("LOAD_MEASURE_SECONDS", "60"))
SETTLE_S = float(os.environ.get("LOAD_SETTLE_SECONDS", "10"))
_run: dict = {"ready": 0, "env": None, "window": None, "ended": None}


@events.init.add_listener
def _init(environment, **_kw):
    _run["env"] = environment


def _ready() -> None:
    """A user has logged in (or failed to): SETTLE_S seconds after the last one, the counted
    window starts; the run stops MEASURE_S seconds later."""
    _run["ready"] += 1
    if _run["ready"] == COUNT:
        # The requests queued behind the logins are answered first, then the count starts.
        gevent.spawn_later(SETTLE_S, _start_window)


def _start_window() -> None:
    _run["env"].stats.reset_all()
    _run["window"] = time.time()
    gevent.spawn_later(MEASURE_S, _stop)


def _stop() -> None:
    _run["ended"] = time.time()
    _run["env"].runner.quit()


@events.request.add_listener
def _login_timing(name, response_time, exception, **_kw):
    if name == LOGIN and exception is None:
        _logins.append(response_time)


@events.quitting.add_listener
def _write_results(environment, **_kw):
    path = os.environ.get("LOAD_RESULT_FILE")
    if not path:
        return
    window, ended = _run["window"], _run["ended"] or time.time()
    seconds = ended - window if window else 0.0
    routes = {
        name: {
            "requests": entry.num_requests,
            "errors": entry.num_failures,
            "rps": round(entry.num_requests / seconds, 2) if seconds else 0.0,
            "p50_ms": entry.get_response_time_percentile(0.5),
            "p99_ms": entry.get_response_time_percentile(0.99),
            "bytes": round(entry.avg_content_length),
        }
        for (name, _method), entry in environment.stats.entries.items()
        if entry.num_requests  # the logins' entries are empty after the reset
    }
    total = environment.stats.total
    with open(path, "w") as out:
        json.dump(
            {
                "complete": window is not None,
                "seconds": round(seconds, 1),
                "requests": total.num_requests,
                "errors": total.num_failures + _login_failures[0],
                "rps": round(total.num_requests / seconds, 2) if seconds else 0.0,
                "p50_ms": total.get_response_time_percentile(0.5),
                "p99_ms": total.get_response_time_percentile(0.99),
                "routes": routes,
                "logins": _logins,
                "login_errors": _login_failures[0],
            },
            out,
        )


class PortalUser(FastHttpUser):
    wait_time = between(*THINK)

    def on_start(self):
        self.me = USERS[next(_next_user) % len(USERS)]
        self.auth = {"Authorization": f"Bearer {self.me['token']}"}
        page = self.client.get("/auth/login", name="GET /auth/login")
        match = CSRF_RE.search(page.text or "")
        with self.client.post(
            "/auth/login",
            data={"email": self.me["email"], "password": SEED["password"], "csrf_token": match[1]}
            if match
            else {},
            name=LOGIN,
            allow_redirects=False,
            catch_response=True,
        ) as answer:
            if answer.status_code != 303:
                answer.failure(f"login answered {answer.status_code}")
                _login_failures[0] += 1
        _ready()

    @task(3)
    def overview(self):
        self.client.get("/overview/", name="/overview/")

    @task(2)
    def usage(self):
        self.client.get("/usage/", name="/usage/")
        self.wait()
        # The period select, as htmx sends it: only the report is swapped.
        self.client.get(
            f"/usage/?period={random.choice(PERIODS[1:])}",
            headers={"HX-Request": "true", "HX-Target": "usage-report"},
            name="/usage/?period= (htmx)",
        )

    @task(2)
    def invoices(self):
        self.client.get("/invoices/", name="/invoices/")
        self.wait()
        self.client.get(f"/invoices/{random.choice(self.me['invoices'])}", name="/invoices/[id]")
        if random.random() < 0.5:
            self.wait()
            with self.client.get(
                f"/invoices/{self.me['pdf_invoice']}/pdf",
                name="/invoices/[id]/pdf",
                catch_response=True,
            ) as pdf:
                if not (pdf.content or b"").startswith(b"%PDF"):
                    pdf.failure("not a PDF")

    @task(2)
    def wallet(self):
        self.client.get("/wallet/", name="/wallet/")
        if random.random() < 0.3:
            self.wait()
            self.client.get("/wallet/?page=2", name="/wallet/?page=2")

    @task(2)
    def api(self):
        self.client.get(
            f"{API}/usage?period={random.choice(PERIODS)}",
            headers=self.auth,
            name="API /usage",
        )
        self.wait()
        self.client.get(f"{API}/invoices", headers=self.auth, name="API /invoices")


class BareUser(FastHttpUser):
    wait_time = between(*THINK)

    def on_start(self):
        self.me = USERS[next(_next_user) % len(USERS)]
        _ready()

    @task
    def page(self):
        self.client.get(f"/page?id={self.me['id']}", name="bare /page")

"""The simulated users of bench/load.py (a locustfile; bench/load.py runs locust on it).

PortalUser: each one a different seeded user (the next one of LOAD_USERS_FILE from
LOAD_USER_OFFSET on), logged in through the login form with its CSRF token, then mixed
journeys with think time: Overview; Usage and a switch to an earlier period (as htmx asks
for it); Invoices, an invoice, its PDF; the Wallet and its second page; the JSON API's usage
and invoices with the user's bearer token.
BareUser: the same think time against bench/bare_app.py.

Environment (set by bench/load.py): LOAD_USERS_FILE, LOAD_USER_OFFSET, LOAD_THINK ("min,max"
seconds), LOAD_LOGINS_FILE (where the login timings are written at the end).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re

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


@events.request.add_listener
def _login_timing(name, response_time, exception, **_kw):
    if name == LOGIN and exception is None:
        _logins.append(response_time)


@events.quitting.add_listener
def _write_logins(**_kw):
    path = os.environ.get("LOAD_LOGINS_FILE")
    if path:
        with open(path, "w") as out:
            json.dump(_logins, out)


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

    @task
    def page(self):
        self.client.get(f"/page?id={self.me['id']}", name="bare /page")

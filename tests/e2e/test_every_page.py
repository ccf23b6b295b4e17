"""Every user and admin page in Chromium, at 1280 px and on a 390 px phone, JavaScript on:
no page scrolls sideways (document.scrollingElement.scrollWidth within the window), and
axe-core finds no serious or critical accessibility violation. A screenshot of each page is
kept under /tmp/e2e-pages/. And a crawl of every link, as a user and as an admin, finds no
answer but 200."""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

from portal.extensions import db
from portal.models import Invoice, User
from portal.money import Money
from portal.services import accounts
from portal.services.wallet import vouchers
from tests.support.app import PASSWORD, AuthActions
from tests.support.invoices import OCT, SEP, issue_invoices

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp/e2e-pages")
AXE = Axe()

USER_PAGES = [
    "/overview/",
    "/standing/",
    "/usage/",
    "/usage/?period=2026-10",
    "/invoices/",
    "/invoices/{invoice}",
    "/payment-methods/",
    "/wallet/",
    "/account/tokens",
    "/account/password",
    "/account/billing",
    "/account/budget",
    "/subscription/",
]
ADMIN_PAGES = [
    "/admin/",
    "/admin/users",
    "/admin/users/{user}",
    "/admin/invoices",
    "/admin/invoices/{invoice}",
    "/admin/invoices/{invoice}/void?reason=x",
    "/admin/vouchers",
    "/admin/prices",
    "/admin/reports",
    "/admin/jobs",
    "/admin/jobs/settle-invoices/run",
    "/admin/outbox",
    "/admin/audit",
    "/admin/payments/failed",
]


def seed(app, user_id: int) -> dict:
    ids = issue_invoices(app, user_id, periods=(SEP, OCT))
    with app.app_context():
        try:
            user = db.session.get_one(User, user_id)
            accounts.create_api_token(user, name="laptop", scope="user")
            vouchers.request_voucher(user, amount=Money(1500, "USD"), reason="A workshop")
            db.session.commit()
            return {
                "invoice": ids[0],
                "user": user_id,
                "number": db.session.get_one(Invoice, ids[0]).number,
            }
        finally:
            db.session.remove()


def log_in(page: Page, email: str) -> None:
    page.goto("/auth/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/(overview|admin)/"))


def serious(page: Page) -> list[str]:
    found = AXE.run(page).response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(n["target"]) for n in v["nodes"][:3])
        for v in found
        if v.get("impact") in ("serious", "critical")
    ]


@pytest.mark.parametrize("width,height", [(1280, 900), (390, 844)])
@pytest.mark.parametrize("role", ["user", "admin"])
def test_every_page_fits_and_passes_axe(
    app, live_server, open_page, make_user, browser_problems, width, height, role
):
    customer = make_user(name="Penny Pages")
    ids = seed(live_server.app, customer.id)
    who = customer if role == "user" else make_user(admin=True, name="Ada Admin")
    page = open_page(role, viewport={"width": width, "height": height})
    log_in(page, who.email)
    SHOTS.mkdir(exist_ok=True)
    problems = []
    for path in USER_PAGES if role == "user" else ADMIN_PAGES:
        url = path.format(**ids)
        answer = page.goto(url)
        assert answer is not None and answer.status == 200, url
        wide = page.evaluate("document.scrollingElement.scrollWidth")
        if wide > width:
            culprits = page.evaluate(
                """(w) => [...document.querySelectorAll('body *')]
                    .filter(e => e.getBoundingClientRect().right > w && !e.closest('nav'))
                    .slice(0, 8).map(e => e.tagName + '.' + e.className + '#' + e.id + ':' + Math.round(e.getBoundingClientRect().right) + '/' + getComputedStyle(e).display)""",
                width,
            )
            problems.append(f"{url} is {wide} px wide at {width} px: {culprits}")
        problems += [f"{url}: {p}" for p in serious(page)]
        name = re.sub(r"[^a-z0-9]+", "-", url.strip("/")) or "root"
        page.screenshot(path=str(SHOTS / f"{role}-{name}-{width}.png"), full_page=True)
    assert not problems, "\n".join(problems)
    browser_problems.assert_none()


def crawl(client, start: str, limit: int = 400) -> dict[str, int]:
    """GET every portal link reachable from ``start`` (not logging out, not leaving)."""
    seen: dict[str, int] = {}
    todo = deque([start])
    while todo and len(seen) < limit:
        url = todo.popleft()
        if url in seen:
            continue
        answer = client.get(url, follow_redirects=True)  # the brand link: / -> the Overview
        body = answer.get_data().decode("utf-8", "replace")  # CSV, PDF too: read to the end
        answer.close()
        seen[url] = answer.status_code
        if answer.mimetype != "text/html":
            continue
        for href in re.findall(r'<a [^>]*href="([^"#]+)', body):
            href = href.replace("&amp;", "&")
            target = urljoin(url, href)
            parts = urlsplit(target)
            if parts.scheme and parts.netloc not in ("localhost", ""):
                continue
            local = parts.path + (f"?{parts.query}" if parts.query else "")
            if local.startswith(("/static/", "/auth/logout")) or local in seen:
                continue
            todo.append(local)
    return seen


@pytest.mark.parametrize("role", ["user", "admin"])
def test_every_link_answers_200(app, client, make_user, role):
    customer = make_user(name="Carl Crawler")
    seed(app, customer.id)
    who = customer if role == "user" else make_user(admin=True)
    AuthActions(client).login(who)
    seen = crawl(client, "/overview/" if role == "user" else "/admin/")
    assert len(seen) > 10
    broken = {url: status for url, status in seen.items() if status != 200}
    assert not broken, broken

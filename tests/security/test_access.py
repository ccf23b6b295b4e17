"""Who may reach what: login, admin role, API tokens and scopes, CSRF, object scoping,
security headers and CSP-safe pages, session cookie flags."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from sqlalchemy import func, select

from portal.blueprints import register_blueprints
from portal.extensions import db
from portal.models import ApiToken, CreditLot, LedgerTransaction, OutboundEmail, User
from portal.services import accounts
from tests.support.app import PASSWORD

API_PREFIX = "/api/plugins/billing/"
# Pages anyone may open: logging in, registering, asking for and using a password link.
PUBLIC_ENDPOINTS = {
    "static",
    "index",
    "auth.login",
    "auth.register",
    "auth.forgot",
    "auth.reset_password",
    "ops.healthz",  # the health check, for load balancers: says ok or unavailable, no more
}
# Web routes authenticated by a bearer token instead of the session (/metrics: an admin API
# token or METRICS_TOKEN; tests/blueprints/test_ops.py proves the rest are 401).
TOKEN_ENDPOINTS = {"ops.metrics"}
# API routes authenticated by a signature over the body instead of a bearer token (the
# gateway's webhooks: tests/webhooks prove a bad signature is 400 and stores nothing).
SIGNED_ENDPOINTS = {"webhooks.receive"}
# The API's reference (its OpenAPI document and the page made from it) is public.
PUBLIC_API_ENDPOINTS = {"api.openapi_document", "api.reference"}


def _url_map():
    """The url_map of a bare app with the portal's blueprints.

    Collection cannot use the ``app`` fixture, so this registers the same blueprints on a
    plain Flask app; ``test_the_route_tables_cover_the_real_app`` proves it is the same map.
    """
    shell = Flask("portal")
    register_blueprints(shell)
    return shell.url_map


def _method(methods) -> str:
    """The method to try a route with: GET where it has one, else POST, else its own."""
    methods = set(methods) - {"HEAD", "OPTIONS"}
    return next((m for m in ("GET", "POST") if m in methods), None) or min(methods)


def _table(url_map) -> list[tuple[str, str, str]]:
    """(endpoint, rule, method) for every route."""
    return sorted(
        (rule.endpoint, rule.rule, _method(rule.methods)) for rule in url_map.iter_rules()
    )


ALL_RULES = _table(_url_map())
WEB_RULES = [r for r in ALL_RULES if not r[1].startswith(API_PREFIX) and r[0] != "static"]
API_RULES = [
    r
    for r in ALL_RULES
    if r[1].startswith(API_PREFIX) and r[0] not in SIGNED_ENDPOINTS | PUBLIC_API_ENDPOINTS
]
PROTECTED_RULES = [r for r in WEB_RULES if r[0] not in PUBLIC_ENDPOINTS | TOKEN_ENDPOINTS]
ADMIN_RULES = [r for r in WEB_RULES if r[1].startswith("/admin/")]
# Every web route and method that changes something (GET+POST pages, POST-only actions).
FORM_POST_RULES = sorted(
    {
        (rule.endpoint, rule.rule, method)
        for rule in _url_map().iter_rules()
        for method in rule.methods & {"POST", "PUT", "PATCH", "DELETE"}
        if not rule.rule.startswith(API_PREFIX)
    }
)
ADMIN_ONLY_API = ["/credits", "/admin/credits"]


def rule_id(rule: tuple[str, str, str]) -> str:
    return f"{rule[2]} {rule[1]}"


def fill(rule: str, **values: object) -> str:
    """A concrete URL for ``rule``: dummy ints for int converters, 'x' for strings,
    unless ``values`` names the argument."""

    def sub(match: re.Match) -> str:
        converter, name = match.group(1), match.group(2)
        if name in values:
            return str(values[name])
        return "1" if converter == "int" else "x"

    return re.sub(r"<(?:(\w+):)?(\w+)>", sub, rule)


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def send(client, method: str, url: str, data: dict | None = None):
    """GET, or send a form with the CSRF token (so the access check is what answers)."""
    if method == "GET":
        return client.get(url)
    return client.open(url, method=method, data={"csrf_token": client.fetch_csrf(), **(data or {})})


def test_the_route_tables_cover_the_real_app(app):
    assert _table(app.url_map) == ALL_RULES
    # The lists below are not vacuous.
    assert len(PROTECTED_RULES) >= 15 and len(API_RULES) >= 5 and len(ADMIN_RULES) >= 6
    assert len(FORM_POST_RULES) >= 9


# -- logging in ------------------------------------------------------------------------


@pytest.mark.parametrize("rule", PROTECTED_RULES, ids=rule_id)
def test_anonymous_visitors_are_sent_to_the_login_page(client, rule):
    endpoint, path, method = rule
    url = fill(path)
    response = send(client, method, url)
    assert response.status_code in (302, 303)
    location = urlsplit(response.headers["Location"])
    assert location.path == "/auth/login"
    if endpoint != "auth.logout":  # logging out while logged out just lands on the login page
        assert parse_qs(location.query)["next"] == [url]


@pytest.mark.parametrize("rule", ADMIN_RULES, ids=rule_id)
def test_non_admins_get_403_on_every_admin_route(client, auth, make_user, rule):
    user = make_user()
    other = make_user()
    auth.login(user)
    response = send(
        client,
        rule[2],
        fill(rule[1], user_id=other.id),
        data={"amount": "10.00", "reason": "nope"} if rule[2] == "POST" else None,
    )
    assert response.status_code == 403
    assert "Not allowed" in response.get_data(as_text=True)
    assert count(client.application, LedgerTransaction) == 0


def test_an_admin_reaches_the_admin_area(client, auth, make_user):
    auth.login(make_user(admin=True))
    response = client.get("/admin/")
    assert response.status_code == 200
    assert "Admin" in response.get_data(as_text=True)


# -- the API ---------------------------------------------------------------------------


def _call(api, method: str, path: str, headers=None):
    url = fill(path)
    if method == "GET":
        return api.client.get(url, headers=headers)
    return api.client.open(url, method=method, json={}, headers=headers)


@pytest.mark.parametrize("rule", API_RULES, ids=rule_id)
def test_api_without_a_token_is_401_json(api, rule):
    response = _call(api, rule[2], rule[1])
    assert response.status_code == 401
    assert response.is_json
    assert response.json["error"]["code"] == "unauthorized"
    assert response.json["error"]["message"]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer bp_not-a-real-token",
        "Bearer garbage",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "bp_no-scheme",
    ],
)
@pytest.mark.parametrize("rule", API_RULES, ids=rule_id)
def test_api_with_a_bad_token_is_401(api, rule, header):
    response = _call(api, rule[2], rule[1], headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthorized"


def test_a_revoked_token_is_401(app, api, make_user):
    user = make_user()
    token = api.token(user)
    assert api.get("/wallet", token=token).status_code == 200
    with app.app_context():
        row = db.session.scalar(select(ApiToken).where(ApiToken.user_id == user.id))
        accounts.revoke_token(db.session.get(User, user.id), row.id)
        db.session.commit()
    assert api.get("/wallet", token=token).status_code == 401


@pytest.mark.parametrize("path", ADMIN_ONLY_API)
def test_a_user_token_cannot_grant_credit(app, api, make_user, path):
    user = make_user()
    response = api.post(
        path,
        token=api.token(user),
        json={"user_id": user.email, "amount": "50.00", "reason": "free money"},
    )
    assert response.status_code == 403
    assert response.json["error"]["code"] == "forbidden"
    assert count(app, LedgerTransaction) == 0
    assert count(app, CreditLot) == 0


@pytest.mark.parametrize("path", ADMIN_ONLY_API)
def test_a_platform_token_cannot_grant_credit(app, api, make_user, path):
    user = make_user()
    response = api.post(
        path,
        token=api.token(make_user(), "platform"),
        json={"user_id": user.email, "amount": "50.00", "reason": "free money"},
    )
    assert response.status_code == 403
    assert count(app, LedgerTransaction) == 0


def test_a_user_token_cannot_create_users(app, api, make_user):
    response = api.post(
        "/users", token=api.token(make_user()), json={"email": "new@example.com", "name": "New"}
    )
    assert response.status_code == 403
    assert response.json["error"]["code"] == "forbidden"
    with app.app_context():
        assert db.session.scalar(select(User).where(User.email == "new@example.com")) is None
    assert count(app, OutboundEmail) == 0


# -- CSRF ------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", FORM_POST_RULES, ids=rule_id)
def test_every_form_post_without_a_csrf_token_is_400(client, auth, make_user, rule):
    admin = make_user(admin=True)
    auth.login(admin)
    response = client.open(
        fill(rule[1], user_id=admin.id),
        method=rule[2],
        data={
            "amount": "10.00",
            "reason": "r",
            "name": "n",
            "email": "a@b.c",
            "password": "x" * 12,
            "confirm": "x" * 12,
            "current_password": PASSWORD,
        },
    )
    assert response.status_code == 400
    assert "Form expired" in response.get_data(as_text=True)


@pytest.mark.parametrize("rule", FORM_POST_RULES, ids=rule_id)
def test_a_forged_csrf_token_is_400_too(client, auth, make_user, rule):
    admin = make_user(admin=True)
    auth.login(admin)
    response = client.open(
        fill(rule[1], user_id=admin.id),
        method=rule[2],
        data={"csrf_token": "forged.token.value", "email": "a@b.c"},
    )
    assert response.status_code == 400


def test_grant_credit_without_csrf_writes_nothing(app, client, auth, make_user):
    admin, user = make_user(admin=True), make_user()
    auth.login(admin)
    response = client.post(
        f"/admin/users/{user.id}/credits", data={"amount": "50.00", "reason": "Service credit"}
    )
    assert response.status_code == 400
    assert count(app, LedgerTransaction) == 0
    assert count(app, CreditLot) == 0
    # The same form with its token works, so the 400 above was the missing token.
    page = client.get(f"/admin/users/{user.id}").get_data(as_text=True)
    request_id = re.search(r'name="request_id" type="hidden" value="([0-9a-f]+)"', page).group(1)
    response = client.submit(
        f"/admin/users/{user.id}/credits",
        {"amount": "50.00", "reason": "Service credit", "request_id": request_id},
    )
    assert response.status_code == 303
    assert count(app, CreditLot) == 1


def test_change_password_without_csrf_changes_nothing(client, auth, make_user):
    user = make_user()
    auth.login(user)
    response = client.post(
        "/account/password",
        data={
            "current_password": PASSWORD,
            "password": "brand-new-password",
            "confirm": "brand-new-password",
        },
    )
    assert response.status_code == 400
    auth.logout()
    assert auth.login(user.email, "brand-new-password").status_code == 200  # form again
    assert auth.login(user.email, PASSWORD).headers["Location"] == "/overview/"


def test_logout_without_csrf_keeps_the_session(client, auth, make_user):
    auth.login(make_user())
    assert client.post("/auth/logout").status_code == 400
    assert client.get("/wallet/").status_code == 200
    # htmx sends the token as a header (hx-headers on <body>); that works.
    response = client.post("/auth/logout", headers={"X-CSRFToken": client.fetch_csrf()})
    assert response.status_code == 303
    assert urlsplit(client.get("/wallet/").headers["Location"]).path == "/auth/login"


def test_the_api_needs_no_csrf_token(api, make_user):
    """Bearer tokens are not sent by browsers on their own, so the API is exempt."""
    response = api.post(
        "/users",
        token=api.token(make_user(), "platform"),
        json={"email": "platform-made@example.com"},
    )
    assert response.status_code == 201


# -- security headers and CSP-safe pages -----------------------------------------------


class InlineCodeFinder(HTMLParser):
    """Everything a CSP without 'unsafe-inline' would block."""

    def __init__(self):
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        names = {name for name, _ in attrs}
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.problems.append("<script> without src")
        if tag == "style":
            self.problems.append("<style> block")
        for name, value in attrs:
            if name == "style":
                self.problems.append(f"style= on <{tag}>")
            if name.startswith("on") or name.startswith("hx-on"):
                self.problems.append(f"{name}= on <{tag}>")
            if name in ("href", "src", "action") and (value or "").lower().startswith(
                "javascript:"
            ):
                self.problems.append(f"javascript: URL on <{tag}>")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.problems.append("inline code inside <script>")


def inline_code(page: str) -> list[str]:
    finder = InlineCodeFinder()
    finder.feed(page)
    finder.close()
    return finder.problems


def test_the_inline_code_finder_finds_inline_code():
    assert inline_code('<script src="/a.js"></script><p>ok</p>') == []
    assert inline_code("<script>alert(1)</script>")
    assert inline_code('<p style="color:red">x</p>')
    assert inline_code('<button onclick="x()">x</button>')
    assert inline_code("<style>p{}</style>")


def assert_security_headers(response) -> None:
    csp = response.headers["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    vary = [v.strip().lower() for v in response.headers.get("Vary", "").split(",")]
    assert "hx-request" in vary


@pytest.fixture
def site(app, client, auth, make_user, api):
    """An admin logged in, a customer with a credit, and a message in the outbox."""
    admin, customer = make_user(admin=True), make_user(name="Cleo Customer")
    api.post(
        "/credits",
        token=api.token(admin, "admin"),
        json={"user_id": customer.email, "amount": "12.50", "reason": "Goodwill"},
    )
    api.post("/users", token=api.token(admin, "platform"), json={"email": "fresh@example.com"})
    auth.login(admin)
    with app.app_context():
        message_id = db.session.scalar(select(OutboundEmail.id))
        token = accounts.password_token(db.session.get(User, customer.id))
    return {"user_id": customer.id, "message_id": message_id, "token": token}


PAGE_RULES = [
    r for r in WEB_RULES if r[2] == "GET" and r[0] != "index" and r[0] not in TOKEN_ENDPOINTS
]
# Pages the card processor sends people back to: without the query it adds (a checkout
# session, a payment), there is nothing to show.
RETURN_PAGES = {
    "payment_methods.added",
    "wallet.top_up_done",
    "wallet.top_up_card_return",
    "invoices.confirmed",
    "subscription.checkout_done",
    "standing.checkout_done",
    "standing.card_return",
}


@pytest.mark.parametrize("rule", PAGE_RULES, ids=rule_id)
def test_pages_send_security_headers_and_no_inline_code(app, client, site, rule):
    endpoint, path, _ = rule
    # The auth pages are for visitors who are not logged in.
    browser = app.test_client() if endpoint.startswith("auth.") else client
    response = browser.get(fill(path, **site))
    if set(re.findall(r"<(?:\w+:)?(\w+)>", path)) <= set(site) and endpoint not in RETURN_PAGES:
        assert response.status_code == 200, endpoint
    else:  # an object this fixture does not make: its 404 page is checked instead
        assert response.status_code in (200, 404), endpoint
    assert_security_headers(response)
    if response.mimetype == "text/html":  # not downloads (CSV, PDF)
        page = response.get_data(as_text=True)
        assert page.startswith("<!doctype html>")
        assert inline_code(page) == []


def test_token_routes_refuse_the_session_and_send_security_headers(client, site):
    """Logged in as an admin (a session cookie), /metrics still wants its bearer token."""
    response = client.get("/metrics")
    assert response.status_code == 401
    assert_security_headers(response)


@pytest.mark.parametrize("url,status", [("/no/such/page", 404), ("/admin/users/999999", 404)])
def test_error_pages_are_csp_safe_too(client, site, url, status):
    response = client.get(url)
    assert response.status_code == status
    assert_security_headers(response)
    assert inline_code(response.get_data(as_text=True)) == []


def test_htmx_fragments_are_csp_safe_and_vary(client, site):
    response = client.htmx_get("/wallet/", target="wallet-panel")
    assert response.status_code == 200
    fragment = response.get_data(as_text=True)
    assert fragment.lstrip().startswith('<div id="wallet-panel"')
    assert "<html" not in fragment
    assert_security_headers(response)
    assert inline_code(fragment) == []
    # A boosted request or one aimed at no known fragment gets the whole page.
    for headers in ({"HX-Boosted": "true"}, {"HX-Target": "wallet-history"}):
        response = client.htmx_get("/wallet/", headers=headers)
        assert response.status_code == 200
        assert response.get_data(as_text=True).startswith("<!doctype html>")


def test_api_responses_send_the_headers(api, make_user):
    response = api.get("/wallet", token=api.token(make_user()))
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


# -- object scoping --------------------------------------------------------------------


def test_revoking_another_users_token_is_404_and_the_token_keeps_working(
    app, client, auth, api, make_user
):
    owner, intruder = make_user(), make_user()
    token = api.token(owner)
    with app.app_context():
        token_id = db.session.scalar(select(ApiToken.id).where(ApiToken.user_id == owner.id))
    auth.login(intruder)
    response = client.submit(f"/account/tokens/{token_id}/revoke")
    assert response.status_code == 404
    assert "Page not found" in response.get_data(as_text=True)
    assert api.get("/wallet", token=token).status_code == 200
    with app.app_context():
        assert db.session.get(ApiToken, token_id).revoked_at is None
    # The owner can revoke it; then it stops working.
    auth.logout()
    auth.login(owner)
    assert client.submit(f"/account/tokens/{token_id}/revoke").status_code == 303
    assert api.get("/wallet", token=token).status_code == 401


def test_the_token_list_shows_only_my_tokens(app, client, auth, api, make_user):
    owner, other = make_user(), make_user()
    api.token(owner)
    with app.app_context():
        token_id = db.session.scalar(select(ApiToken.id).where(ApiToken.user_id == owner.id))
    auth.login(other)
    page = client.get("/account/tokens").get_data(as_text=True)
    assert f'id="token-{token_id}"' not in page
    assert "No tokens yet." in page


# -- the session cookie ----------------------------------------------------------------


def test_the_session_cookie_is_httponly_and_samesite_lax(client, auth, make_user):
    response = auth.login(make_user())
    assert response.status_code == 303
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert cookies
    flags = [part.strip().lower() for part in cookies[-1].split(";")]
    assert "httponly" in flags
    assert "samesite=lax" in flags

"""A test client that carries the CSRF token like a browser does."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

# base.html puts the token in <body hx-headers='{"X-CSRFToken": "..."}'> (entity-escaped).
CSRF_RE = re.compile(r'X-CSRFToken(?:"|&#34;|&quot;): (?:"|&#34;|&quot;)([^"&]+)')


class PortalClient(FlaskClient):
    csrf_token: str | None = None
    _csrf_secret: str | None = None  # the session's raw token csrf_token was made from
    host = "localhost"  # set another to send every request with that Host header

    def open(self, *args, **kwargs):
        if self.host != "localhost" and args and isinstance(args[0], str):
            kwargs["headers"] = {**dict(kwargs.get("headers") or {}), "Host": self.host}
        response = super().open(*args, **kwargs)
        if response.mimetype == "text/html":
            match = CSRF_RE.search(response.get_data(as_text=True))
            if match:
                self.csrf_token = match.group(1)
                self._csrf_secret = self.session_csrf_secret()
        return response

    def session_csrf_secret(self) -> str | None:
        """The raw CSRF token in this client's session cookie (Flask-WTF signs it into the
        forms' token). Logging in and out replace it."""
        app = self.application
        cookie = self.get_cookie(app.config["SESSION_COOKIE_NAME"], domain=self.host)
        if cookie is None:
            return None
        session = app.session_interface.get_signing_serializer(app).loads(cookie.value)
        return session.get(app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"))

    def fetch_csrf(self) -> str:
        """The token of the last page, or, when there is none or the session's token has
        changed since (a browser is on a new page after logging in or out), a fresh page's."""
        if self.csrf_token is None or self.session_csrf_secret() != self._csrf_secret:
            self.csrf_token = None
            self.get("/auth/login", follow_redirects=True)
        assert self.csrf_token, "no CSRF token found on the page"
        return self.csrf_token

    def submit(self, url: str, data: dict | None = None, **kwargs):
        """POST a form as the browser would: with the page's CSRF token."""
        data = dict(data or {})
        data.setdefault("csrf_token", self.fetch_csrf())
        return self.post(url, data=data, **kwargs)

    def htmx_get(self, url: str, target: str | None = None, **kwargs):
        headers = {"HX-Request": "true", **({"HX-Target": target} if target else {})}
        headers.update(kwargs.pop("headers", {}))
        return self.get(url, headers=headers, **kwargs)

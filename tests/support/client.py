"""A test client that carries the CSRF token like a browser does."""
from __future__ import annotations

import re

from flask.testing import FlaskClient

# base.html puts the token in <body hx-headers='{"X-CSRFToken": "..."}'> (entity-escaped).
CSRF_RE = re.compile(r'X-CSRFToken(?:"|&#34;|&quot;): (?:"|&#34;|&quot;)([^"&]+)')


class PortalClient(FlaskClient):
    csrf_token: str | None = None

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        if response.mimetype == "text/html":
            match = CSRF_RE.search(response.get_data(as_text=True))
            if match:
                self.csrf_token = match.group(1)
        return response

    def fetch_csrf(self) -> str:
        if self.csrf_token is None:
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

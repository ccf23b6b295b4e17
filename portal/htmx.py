"""The one module that reads HX-* request headers or writes HX-* response headers."""

from __future__ import annotations

import json

from flask import Response, request


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def is_fragment_request(target: str | None = None) -> bool:
    """True when htmx asks for a piece of the page rather than the page.

    Boosted requests (hx-boost links and forms) want the whole page, so they never count.
    With ``target``, only a request that swaps that element id counts.
    """
    if not is_htmx() or request.headers.get("HX-Boosted") == "true":
        return False
    if target is None:
        return True
    return request.headers.get("HX-Target") == target


def vary_on_htmx(response: Response) -> Response:
    """Pages that answer fragments must not be cached as whole pages (and vice versa)."""
    response.vary.add("HX-Request")
    return response


def keep_url_on_refusal(response: Response) -> Response:
    """A refused form (4xx) that htmx swaps in stays at the page's address: htmx would push
    the form's action URL, which a reload or Back would then GET."""
    if is_htmx() and request.method != "GET" and 400 <= response.status_code < 500:
        response.headers["HX-Push-Url"] = "false"
    return response


def csrf_headers(token: str) -> str:
    """The hx-headers value that makes htmx send the CSRF token on every request."""
    return json.dumps({"X-CSRFToken": token})

"""What every request may send, checked before anything else reads it (registered ahead of
CSRF and the rate limiter in create_app).

Size. No body is read past ``MAX_CONTENT_LENGTH`` bytes (a view marked with ``body_limit``
has its own limit, e.g. the gateway's webhook). A declared Content-Length over the limit is
refused at once. A chunked body has no length: Werkzeug then bounds the stream by
``request.max_content_length`` only when the server says it terminates the stream
(``wsgi.input_terminated``, which gunicorn and Werkzeug's own server set) and otherwise reads
nothing of it; and read to its end, that bounded stream stops quietly at the limit, so a view
would get a truncated body rather than a 413. So a chunked body is read here, one byte past
the limit, whether or not the view would have read it: over the limit it is 413 before any
view runs; under it, the body is cached and the view, the form parser and ``get_json`` read
the cache.

Text. On the HTML pages (not ``/api/``, whose JSON bodies the API validates field by field),
every query-string value and every form field must be valid UTF-8 (an encoded surrogate such
as ``%ED%A0%80`` is not) without NUL characters (PostgreSQL refuses them in text; SQLite would
store them), and not absurdly long; otherwise the answer is 400 naming the field, and nothing
has run. Werkzeug itself would decode bad bytes to U+FFFD silently, so the raw bytes are
checked. Per-field limits are the forms' own; this is the backstop for every field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar
from urllib.parse import unquote_to_bytes

from flask import Flask, current_app, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from .web import API_PREFIX

FORM_MIMETYPE = "application/x-www-form-urlencoded"
# Backstops; each form field has its own, smaller maximum.
MAX_QUERY_VALUE_CHARS = 2_000
MAX_FORM_VALUE_CHARS = 20_000

F = TypeVar("F", bound=Callable)


def body_limit(config_key: str) -> Callable[[F], F]:
    """Give a view its own body limit, the setting ``config_key`` (bytes)."""

    def mark(view: F) -> F:
        view.body_limit_key = config_key  # type: ignore[attr-defined]
        return view

    return mark


def init_app(app: Flask) -> None:
    app.before_request(check_request)


def check_request() -> None:
    _check_size()
    if request.path.startswith((API_PREFIX, "/static/")):
        return
    if "\x00" in request.path or "\ufffd" in request.path:
        raise BadRequest(
            description="The address holds a NUL character or bytes that are not "
            "UTF-8 text. Nothing was changed."
        )
    problem = _query_problem() or _form_problem()
    if problem:
        raise BadRequest(description=problem + " Nothing was changed.")


# -- size -----------------------------------------------------------------------------------
def _check_size() -> None:
    view = current_app.view_functions.get(request.endpoint or "")
    key = getattr(view, "body_limit_key", None)
    if key:
        request.max_content_length = int(current_app.config[key])
    limit = request.max_content_length
    if limit is None:
        return
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    if length is None and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        # Werkzeug's bounded stream stops quietly at its limit when read to the end (only a
        # further read raises), so get_data() alone would hand the view a truncated body.
        # Read one byte more than allowed: getting it means the body is too large.
        request.max_content_length = limit + 1
        try:
            body = request.get_data(cache=True)
        except RequestEntityTooLarge:
            raise _too_large(limit) from None
        finally:
            request.max_content_length = limit
        if len(body) > limit:
            raise _too_large(limit)


def _too_large(limit: int) -> RequestEntityTooLarge:
    return RequestEntityTooLarge(
        description=f"The request body is larger than the {limit:,} bytes this address accepts."
    )


# -- text -----------------------------------------------------------------------------------
def _query_problem() -> str | None:
    raw = request.environ.get("QUERY_STRING", "")
    if not raw:
        return None
    # WSGI hands the query string over as latin-1: that gives back the bytes as sent.
    return _first_problem(_pairs(raw.encode("latin-1")), "parameter", MAX_QUERY_VALUE_CHARS)


def _form_problem() -> str | None:
    if request.mimetype == FORM_MIMETYPE:
        return _first_problem(_pairs(request.get_data(cache=True)), "field", MAX_FORM_VALUE_CHARS)
    if request.mimetype == "multipart/form-data":
        # Already decoded by Werkzeug, which turns bytes that are not UTF-8 into U+FFFD.
        for name, value in request.form.items(multi=True):
            for text in (name, value):
                if "\x00" in text or "\ufffd" in text or _has_surrogate(text):
                    return f"The field “{_shown(name)}” is not text we can store."
    return None


def _pairs(raw: bytes) -> Iterator[tuple[bytes, bytes]]:
    for part in raw.split(b"&"):
        if part:
            name, _, value = part.partition(b"=")
            yield (
                unquote_to_bytes(name.replace(b"+", b" ")),
                unquote_to_bytes(value.replace(b"+", b" ")),
            )


def _first_problem(pairs: Iterable[tuple[bytes, bytes]], what: str, max_chars: int) -> str | None:
    for raw_name, raw_value in pairs:
        name = raw_name.decode("utf-8", "replace")
        for raw in (raw_name, raw_value):
            try:
                text = raw.decode("utf-8")  # strict: refuses encoded surrogates too
            except UnicodeDecodeError:
                return (
                    f"The {what} “{_shown(name)}” is not valid UTF-8 text (it holds bytes "
                    "that are not characters, such as an unpaired surrogate)."
                )
            if "\x00" in text:
                return f"The {what} “{_shown(name)}” contains a NUL character."
            if len(text) > max_chars:
                return f"The {what} “{_shown(name)}” is longer than {max_chars:,} characters."
    return None


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _shown(name: str) -> str:
    """A field name as it can be shown: printable, short."""
    clean = "".join(ch if ch.isprintable() and ch != "\ufffd" else "?" for ch in name)
    return clean[:40] + ("…" if len(clean) > 40 else "")

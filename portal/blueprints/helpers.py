"""Small helpers the views share."""

from __future__ import annotations

import re
from datetime import datetime
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import Response, abort, current_app, flash, redirect, request, url_for
from flask_login import current_user, login_required
from wtforms import Form

from ..errors import NotFound, ServiceError
from ..forms import check_date
from ..models import User
from ..services import accounts, calendar


def admin_required(view):
    @wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not current_user.is_admin:
            abort(403)
        return view(*args, **kwargs)

    return wrapped


def form_errors_from(form: Form, error: ServiceError) -> None:
    """Show a service's validation error on the matching form fields (else as a flash)."""
    placed = False
    for name, problem in error.fields.items():
        field = getattr(form, name, None)
        if field is not None:
            field.errors = list(field.errors) + [problem]
            placed = True
    if not placed:
        flash(error.message, "error")


def safe_next(default: str) -> str:
    """A same-site ``next`` target, never an absolute URL elsewhere."""
    target = request.args.get("next") or request.form.get("next") or ""
    parts = urlsplit(target)
    if target.startswith("/") and not target.startswith("//") and not parts.netloc:
        return target
    return default


def public_url(endpoint: str, **values) -> str:
    """An absolute URL on PUBLIC_URL, for pages the payment gateway sends the user back to:
    never built from the request's Host header, which the client chooses."""
    return current_app.config["PUBLIC_URL"] + accounts.url_path(endpoint, **values)


def id_url_prefix(endpoint: str, arg: str) -> str:
    """``endpoint``'s URL up to its last part, the integer ``arg``: a list appends each row's
    id to it instead of building one URL a row (a third of a long table's rendering)."""
    values: dict[str, Any] = {arg: 0}
    url = url_for(endpoint, **values)
    if not url.endswith("/0"):
        raise ValueError(f"{endpoint} does not end with its {arg}")
    return url[:-1]


def see_other(endpoint: str, **values):
    return redirect(url_for(endpoint, **values), code=303)


def pdf_response(pdf) -> Response:
    """An invoice's stored PDF (``documents.StoredPdf``) as a download named after its
    number."""
    response = Response(pdf.content, mimetype="application/pdf")
    response.headers.set("Content-Disposition", "attachment", filename=f"{pdf.number}.pdf")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.set_etag(pdf.sha256)
    return response


# Pages past this are refused (a page number stays far from overflowing an SQL OFFSET).
MAX_PAGE = 1_000_000
# The largest id a row can have (BIGINT): a bigger "id" names nobody.
MAX_ROW_ID = 2**63 - 1


def page_arg() -> int:
    """``?page=``: 1 when absent; a whole number from 1 to MAX_PAGE, else 400."""
    raw = request.args.get("page", "").strip()
    if not raw:
        return 1
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        abort(
            400,
            description=f"The page must be a whole number from 1 to {MAX_PAGE:,}, "
            f"not “{raw[:20]}”.",
        )
    return int(raw)


def query_arg(name: str, max_length: int = 200) -> str:
    """A query-string value, stripped; a longer one is 400 naming it (never truncated)."""
    value = request.args.get(name, "").strip()
    if len(value) > max_length:
        abort(400, description=f"The parameter “{name}” must be at most {max_length} characters.")
    return value


_PERIOD = re.compile(r"[0-9]{4}-[0-9]{2}")


def billing_period(text: str) -> tuple[datetime, datetime]:
    """A billing period typed as YYYY-MM: [start, end). ValueError says what is wrong
    (phrased to follow "The")."""
    if not _PERIOD.fullmatch(text.strip()):
        raise ValueError("period must look like 2026-11")
    start, end = calendar.parse_period(text.strip(), current_app.config["BILLING"].invoice_day)
    problem = check_date(start.date())
    if problem:
        raise ValueError(f"period {problem}")
    return start, end


def find_user(ref: str) -> User:
    """A user by email or id, as typed into a filter or form (NotFound otherwise): an "id"
    too big for the database, or in other digits than 0-9, names nobody."""
    ref = ref.strip()
    if ref.isdigit() and (not ref.isascii() or int(ref) > MAX_ROW_ID):
        raise NotFound(f"no user {ref[:40]!r}")
    return accounts.find_user(ref)

"""Small helpers the views share."""
from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from flask import Response, abort, current_app, flash, redirect, request, url_for
from flask_login import current_user, login_required
from wtforms import Form

from ..services.errors import ServiceError


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
    from ..services.accounts import url_path

    return current_app.config["PUBLIC_URL"] + url_path(endpoint, **values)


def see_other(endpoint: str, **values):
    return redirect(url_for(endpoint, **values), code=303)


def pdf_response(invoice, pdf) -> Response:
    """An invoice's stored PDF as a download named after its number."""
    response = Response(pdf.content, mimetype="application/pdf")
    response.headers.set("Content-Disposition", "attachment", filename=f"{invoice.number}.pdf")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.set_etag(pdf.sha256)
    return response


def page_arg() -> int:
    try:
        return max(1, int(request.args.get("page", "1")))
    except ValueError:
        return 1

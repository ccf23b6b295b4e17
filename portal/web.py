"""Cross-cutting web wiring: sessions, the request's unit of work, error pages, security
headers, template filters.

The unit of work: a request's writes are committed once, after the view, while the response
has not left yet (``after_request``): an answer below 400 commits, any other answer or an
exception rolls back. Views never commit; a service commits by itself only where its work
must be durable before a side effect (a call to the card gateway). A commit that fails
answers 500 (the JSON error body under /api/) instead of the success the view prepared.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from babel.dates import format_datetime, format_timedelta
from flask import (
    Flask,
    current_app,
    g,
    has_request_context,
    jsonify,
    render_template,
    request,
    session,
)
from flask_wtf.csrf import CSRFError, generate_csrf
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from . import htmx as hx
from .db import plan_per_value
from .errors import ServiceError
from .extensions import db, login_manager
from .models import InvoiceStatus, User
from .money import Money, decimal_to_micros, format_micros, format_money
from .services import accounts

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'self'; object-src 'none'"
)

API_PREFIX = "/api/"
ADMIN_PREFIXES = ("/admin/", "/api/plugins/billing/admin/")
# Forms that lead to the payment gateway's hosted pages (checkout, add a card, 3-D Secure):
# browsers apply form-action to the redirect after a form post too.
STRIPE_PAGE_ORIGINS = ("https://checkout.stripe.com", "https://hooks.stripe.com")


def build_csp(config) -> str:
    """The CSP, with the gateway's page origins allowed as form targets when cards are on."""
    if config.get("CSP"):
        return config["CSP"]
    if not config.get("STRIPE_SECRET_KEY"):
        return CSP
    base = (config.get("STRIPE_API_BASE") or "").rstrip("/")
    origins = (
        STRIPE_PAGE_ORIGINS if base.startswith("https://api.stripe.com") or not base else (base,)
    )
    return CSP.replace("form-action 'self'", "form-action 'self' " + " ".join(origins))


def wants_json() -> bool:
    return request.path.startswith(API_PREFIX)


def json_error(status: int, code: str, message: str, fields: dict[str, str] | None = None):
    body: dict = {"error": {"code": code, "message": message}}
    if fields:
        body["error"]["fields"] = fields
    return jsonify(body), status


def discard_changes() -> None:
    """For a view that answers below 400 after catching a refusal (a form shown again with a
    service's error, a redirect after the gateway failed): the request's writes so far are
    rolled back now, so the page shows what is stored, and nothing of it is committed."""
    db.session.rollback()
    g.unit_of_work_discarded = True


def _rollback_quietly() -> None:
    try:
        db.session.rollback()
    except Exception:  # the connection is gone: nothing of the request was committed
        current_app.logger.exception("rollback failed")


def server_error_response():
    """The 500 page, or the JSON error body under /api/."""
    if wants_json():
        return json_error(500, "server_error", "Something went wrong on our side.")
    return render_template(
        "errors/error.html",
        code=500,
        title="Something went wrong",
        message="The error has been logged. Please try again.",
    ), 500


_COMMITTED, _RETRIED = "_portal_db_committed", "_portal_db_retried"


def _dropped_before_any_work(exc: Exception) -> bool:
    """The database connection dropped (a restart) before this request committed anything:
    nothing it did is written, and it may run once more on a new connection."""
    return (
        isinstance(exc, DBAPIError)
        and exc.connection_invalidated
        and not g.get(_COMMITTED)
        and not g.get(_RETRIED)
    )


def _run_again(app: Flask):
    """The request once more, on a fresh session (and so a fresh connection)."""
    db.session.remove()
    g.pop("_login_user", None)  # Flask-Login's user came from the dropped session
    setattr(g, _RETRIED, True)
    app.logger.warning(
        "the database connection dropped before %s %s did any work: running it again",
        request.method,
        request.path,
    )
    response = app.preprocess_request()
    if response is None:
        response = app.dispatch_request()
    return response


def init_web(app: Flask) -> None:
    @event.listens_for(db.session.session_factory.class_, "after_commit")
    def _committed(_session):
        if has_request_context():
            setattr(g, _COMMITTED, True)

    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in to continue."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "strong"

    @login_manager.user_loader
    def load_user(session_id: str) -> User | None:
        # None (logged out) once the login's row is gone: logout, a password change
        # elsewhere, or its age past PERMANENT_SESSION_LIFETIME.
        return accounts.user_for_session(session_id)

    @app.before_request
    def plans_for_lists_across_accounts():
        # The admin's lists and reports (no object's id in the URL) filter all accounts by
        # values that match a share of the rows depending on the value (a status, a date
        # range): PostgreSQL plans those per value. Pages of one account or object, and every
        # user's own page, keep the web server's one generic plan per statement.
        if (
            app.config["DATABASE_GENERIC_PLANS"]
            and request.path.startswith(ADMIN_PREFIXES)
            and not request.view_args
        ):
            plan_per_value()

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("Content-Security-Policy", build_csp(app.config))
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Permissions-Policy", "camera=(), microphone=(), geolocation=()"
        )
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        if app.config.get("SESSION_COOKIE_SECURE"):
            response.headers.setdefault("Strict-Transport-Security", "max-age=63072000")
        if request.endpoint and not request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return hx.vary_on_htmx(hx.keep_url_on_refusal(response))

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        if wants_json():
            return json_error(400, "csrf_failed", exc.description)
        return render_template(
            "errors/error.html",
            code=400,
            title="Form expired",
            message="The form was out of date or incomplete. "
            "Go back, reload the page and try again.",
        ), 400

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        if wants_json():
            code = {
                400: "bad_request",
                401: "unauthorized",
                403: "forbidden",
                404: "not_found",
                405: "method_not_allowed",
                413: "too_large",
                429: "rate_limited",
            }.get(status, "http_error")
            response, _ = json_error(status, code, exc.description or exc.name)
            if status == 429:
                response.headers["Retry-After"] = "60"
            return response, status
        titles = {
            400: "Not accepted",
            403: "Not allowed",
            404: "Page not found",
            413: "Too large",
            429: "Too many attempts",
        }
        return render_template(
            "errors/error.html",
            code=status,
            title=titles.get(status, exc.name),
            message=(
                f"You tried too often ({exc.description}). Wait a minute, then try again."
                if status == 429
                else exc.description
            ),
        ), status

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        db.session.rollback()  # before rendering: the page reads what is stored
        if wants_json():
            return json_error(exc.http_status, exc.code, exc.message, exc.fields)
        return render_template(
            "errors/error.html",
            code=exc.http_status,
            title="Page not found" if exc.http_status == 404 else "Not done",
            message=exc.message,
        ), exc.http_status

    @app.errorhandler(Exception)
    def server_error(exc: Exception):
        if isinstance(exc, HTTPException):
            return http_error(exc)
        if _dropped_before_any_work(exc):
            return _run_again(app)
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        _rollback_quietly()
        return server_error_response()

    # Registered after security_headers, so it runs before it (Flask runs after_request
    # functions last registered first): a 500 made here gets the headers too.
    @app.after_request
    def end_unit_of_work(response):
        # pop: g outlives the request when the caller holds the app context (tests do)
        discarded = g.pop("unit_of_work_discarded", False)
        if response.status_code >= 400 or discarded:
            _rollback_quietly()
            return response
        unit = db.session()
        expire = unit.expire_on_commit
        # A streamed body (a CSV export) is written after this: what the view loaded stays
        # readable then.
        unit.expire_on_commit = expire and not response.is_streamed
        try:
            unit.commit()
        except Exception:
            app.logger.exception("commit failed on %s %s", request.method, request.path)
            _rollback_quietly()
            session.pop("_flashes", None)  # the view's "done" did not happen
            return app.make_response(server_error_response())
        finally:
            unit.expire_on_commit = expire
        return response

    @app.teardown_request
    def roll_back_on_exception(exc: BaseException | None) -> None:
        if exc is not None:
            _rollback_quietly()

    @app.context_processor
    def template_globals():
        return {
            "csrf_headers": lambda: hx.csrf_headers(generate_csrf()),
            "billing": app.config["BILLING"],
            "money_of": Money,
        }

    @app.template_filter("money")
    def money_filter(value: Money | None) -> str:
        return "" if value is None else format_money(value, app.config["BABEL_DEFAULT_LOCALE"])

    @app.template_filter("micros")
    def micros_filter(micros: int, currency: str) -> str:
        return format_micros(micros, currency, app.config["BABEL_DEFAULT_LOCALE"])

    @app.template_filter("qty")
    def quantity_filter(milli: int) -> str:
        """Integer thousandths (cpu_milli, memory_mgb) as a plain decimal: 1500 -> 1.5."""
        value = Decimal(milli).scaleb(-3).normalize()
        return f"{value:f}"

    @app.template_filter("dec")
    def decimal_filter(value: Decimal) -> str:
        """A Decimal without exponent or trailing zeros: 20.000000 -> 20."""
        return f"{value.normalize():f}" if value else "0"

    @app.template_filter("unit_price")
    def unit_price_filter(value: Decimal, currency: str) -> str:
        return format_micros(decimal_to_micros(value), currency, app.config["BABEL_DEFAULT_LOCALE"])

    @app.template_filter("invoice_status_name")
    def invoice_status_name(label: str) -> str:
        """A status filter's value ("sent") as pages name it ("Open")."""
        return InvoiceStatus.from_label(label).display

    @app.template_filter("valid_through")
    def valid_through_filter(value: datetime | None) -> str:
        """An expiry stored as the first instant it no longer holds (midnight after the last
        day) shown as the day entered: "Valid through 2027-01-31"."""
        if value is None:
            return ""
        if (value.hour, value.minute, value.second, value.microsecond) == (0, 0, 0, 0):
            return (value - timedelta(days=1)).strftime("%Y-%m-%d")
        return value.strftime("%Y-%m-%d %H:%M UTC")

    @app.template_filter("dt")
    def datetime_filter(value: datetime | None, with_time: bool = True) -> str:
        if value is None:
            return ""
        return value.strftime("%Y-%m-%d %H:%M UTC" if with_time else "%Y-%m-%d")

    @app.template_filter("day")
    def day_filter(value: datetime | None, with_time: bool = False) -> str:
        """A date as people write it ("12 Dec 2026"; with the time, "12 Dec 2026, 15:00 UTC")."""
        if value is None:
            return ""
        pattern = "d MMM y, HH:mm 'UTC'" if with_time else "d MMM y"
        return format_datetime(
            value, pattern, tzinfo=UTC, locale=app.config["BABEL_DEFAULT_LOCALE"]
        )

    @app.template_filter("until")
    def until_filter(value: datetime, now: datetime) -> str:
        """How far ahead ``value`` is from ``now``, roughly: "in 17 hours", "in 9 days"."""
        left = max(value - now, timedelta(0))
        return format_timedelta(
            left, threshold=2, add_direction=True, locale=app.config["BABEL_DEFAULT_LOCALE"]
        )

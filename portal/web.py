"""Cross-cutting web wiring: sessions, error pages, security headers, template filters."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError, generate_csrf
from werkzeug.exceptions import HTTPException

from . import htmx as hx
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


def init_web(app: Flask) -> None:
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in to continue."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "strong"

    @login_manager.user_loader
    def load_user(session_id: str) -> User | None:
        # None (logged out) once the login's row is gone: logout, a password change
        # elsewhere, or its age past PERMANENT_SESSION_LIFETIME.
        return accounts.user_for_session(session_id)

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
        db.session.rollback()
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
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        db.session.rollback()
        if wants_json():
            return json_error(500, "server_error", "Something went wrong on our side.")
        return render_template(
            "errors/error.html",
            code=500,
            title="Something went wrong",
            message="The error has been logged. Please try again.",
        ), 500

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

"""The admin area (admins only)."""

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")

from . import catalog, invoices, jobs, routes, vouchers  # noqa: E402,F401

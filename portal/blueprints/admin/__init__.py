"""The admin area (admins only)."""
from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")

from . import catalog, jobs, routes  # noqa: E402,F401

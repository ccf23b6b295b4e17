"""Admin › Audit log: search the admin actions and export them. Read-only: there is no
route that changes or deletes an entry."""

from __future__ import annotations

import re
from datetime import date

from flask import Response, abort, render_template, request, stream_with_context, url_for

from ... import htmx as hx
from ...forms import check_date
from ...services import audit
from .. import helpers
from . import bp

DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _day(name: str) -> date | None:
    typed = helpers.query_arg(name, 10)
    if not typed:
        return None
    try:
        value = date.fromisoformat(typed) if DAY.fullmatch(typed) else None
    except ValueError:
        value = None
    if value is None:
        abort(400, description=f"The parameter “{name}” must be a date like 2026-11-01.")
    problem = check_date(value)
    if problem:
        abort(400, description=f"The parameter “{name}” {problem}.")
    return value


def _filter() -> audit.AuditFilter:
    action = helpers.query_arg("action", 60)
    if action and action not in audit.ACTIONS:
        abort(400, description="The parameter “action” is not a recorded action.")
    user_id = helpers.query_arg("user_id", 19)
    if user_id and not (user_id.isascii() and user_id.isdigit()):
        abort(400, description="The parameter “user_id” must be a whole number.")
    return audit.AuditFilter(
        user_id=int(user_id) if user_id else None,
        actor=helpers.query_arg("actor", 254),
        object_type=helpers.query_arg("object_type", 40),
        object_id=helpers.query_arg("object_id", 100),
        action=action,
        date_from=_day("from"),
        date_to=_day("to"),
    )


def _args() -> dict[str, str]:
    keys = ("actor", "object_type", "object_id", "action", "from", "to", "user_id")
    return {k: request.args[k] for k in keys if request.args.get(k)}


@bp.get("/audit")
def audit_log():
    entries = audit.search(_filter(), page=helpers.page_arg())
    template = "admin/_audit_table.html" if hx.is_fragment_request("audit-table") else None
    return render_template(
        template or "admin/audit.html",
        entries=entries,
        args=_args(),
        actions=audit.ACTIONS,
        object_types=audit.object_types(),
        csv_url=url_for("admin.audit_csv", **_args()),
    )


@bp.get("/audit.csv")
def audit_csv():
    response = Response(stream_with_context(audit.export_csv(_filter())), mimetype="text/csv")
    response.headers.set("Content-Disposition", "attachment", filename="audit-log.csv")
    return response

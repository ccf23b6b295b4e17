"""Admin › Users: every account's billing status, filtered, searched, sorted, paginated
(htmx swaps the table; plain links work without it) and exported as CSV."""

from __future__ import annotations

import re
from decimal import Decimal

from flask import Response, abort, render_template, request, stream_with_context, url_for

from ... import htmx as hx
from ...models import utcnow
from ...services.admin import users as account_list
from .. import helpers
from . import bp

_AMOUNT = re.compile(r"[0-9]{1,10}(\.[0-9]{1,4})?")


def users_filter() -> account_list.UsersFilter:
    """The list's query string; a value out of its list or not an amount is 400."""
    standing = helpers.query_arg("standing", 20)
    if standing and standing not in account_list.STANDINGS:
        abort(
            400,
            description="The parameter “standing” must be one of "
            + ", ".join(account_list.STANDINGS)
            + ".",
        )
    sort = helpers.query_arg("sort", 20) or "owed"
    if sort not in account_list.SORTS:
        abort(400, description="The parameter “sort” must be owed, email or newest.")
    owes = helpers.query_arg("owes_more_than", 20)
    if owes and not _AMOUNT.fullmatch(owes):
        abort(400, description="The parameter “owes_more_than” must be an amount like 10.00.")
    return account_list.UsersFilter(
        q=helpers.query_arg("q", 254),
        standing=standing,
        owes_more_than=Decimal(owes) if owes else None,
        sort=sort,
    )


def _args() -> dict[str, str]:
    keys = ("q", "standing", "owes_more_than", "sort")
    return {k: request.args[k] for k in keys if request.args.get(k)}


@bp.get("/users")
def users():
    f = users_filter()
    page = account_list.list_accounts(f, page=helpers.page_arg(), now=utcnow(), count=False)
    fragment = hx.is_fragment_request("users-table")
    return render_template(
        "admin/_accounts_table.html" if fragment else "admin/users.html",
        accounts=page,
        f=f,
        args=_args(),
        standings=account_list.STANDINGS,
        sorts=account_list.SORTS,
        csv_url=url_for("admin.users_csv", **_args()),
        user_url=helpers.id_url_prefix("admin.user", "user_id"),
        invoice_url=helpers.id_url_prefix("admin.invoice", "invoice_id"),
    )


@bp.get("/users.csv")
def users_csv():
    lines = account_list.export_csv(users_filter(), now=utcnow())
    response = Response(stream_with_context(lines), mimetype="text/csv")
    response.headers.set("Content-Disposition", "attachment", filename="users.csv")
    return response

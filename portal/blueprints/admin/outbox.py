"""Admin › Outbox: every message the portal sends."""

from __future__ import annotations

from flask import abort, render_template

from ...extensions import db
from ...models import OutboundEmail
from ...services import mail
from .. import helpers
from . import bp


@bp.get("/outbox")
def outbox():
    return render_template("admin/outbox.html", messages=mail.list_outbox(page=helpers.page_arg()))


@bp.get("/outbox/<int:message_id>")
def outbox_message(message_id: int):
    message = db.session.get(OutboundEmail, message_id) or abort(404)
    return render_template("admin/outbox_message.html", message=message)

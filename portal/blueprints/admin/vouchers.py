"""Admin: vouchers (single or batch, CSV export) and users' voucher requests."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta

from flask import Response, abort, current_app, flash, render_template, stream_with_context
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import DateField, StringField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from ...errors import ServiceError
from ...forms import AmountField, PlausibleDate, WholeNumberField
from ...money import AmountError, Money
from ...services.wallet import vouchers
from ...web import discard_changes
from .. import helpers
from . import bp

# A batch name as the portal makes them (20261121-a1b2c3); anything else names no batch, and
# never reaches a Content-Disposition header.
BATCH = re.compile(r"[0-9A-Za-z-]{1,40}")


class VoucherForm(FlaskForm):
    value = AmountField("Value", noun="value")
    count = WholeNumberField(
        "How many codes", default=1, validators=[DataRequired(), NumberRange(1, vouchers.MAX_BATCH)]
    )
    max_redemptions = WholeNumberField(
        "Redemptions per code", default=1, validators=[DataRequired(), NumberRange(1, 1_000_000)]
    )
    expires_on = DateField("Valid through (optional)", validators=[Optional(), PlausibleDate()])
    note = StringField("Note", validators=[Optional(), Length(max=500)])


class DecisionForm(FlaskForm):
    note = StringField("Note to the user", validators=[Optional(), Length(max=500)])


def _batch_arg() -> str | None:
    batch = helpers.query_arg("batch", 40)
    if batch and not BATCH.fullmatch(batch):
        abort(
            400,
            description="The batch must be a batch name like 20261121-a1b2c3 "
            "(letters, digits and dashes).",
        )
    return batch or None


def _page(form: VoucherForm, status: int = 200, created=None):
    batch = _batch_arg()
    pending = vouchers.list_requests(status="pending")
    return render_template(
        "admin/vouchers.html",
        form=form,
        created=created or [],
        vouchers=vouchers.list_vouchers(batch=batch, page=helpers.page_arg()),
        batch=batch,
        requests=pending,
        requesters=vouchers.requesters(pending),
        decision=DecisionForm(formdata=None),
    ), status


@bp.get("/vouchers")
def vouchers_index():
    return _page(VoucherForm(formdata=None))


@bp.post("/vouchers")
def create_vouchers():
    form = VoucherForm()
    if not form.validate_on_submit():
        return _page(form, 422)
    expires_at = (
        datetime.combine(form.expires_on.data + timedelta(days=1), time(), UTC)
        if form.expires_on.data
        else None
    )
    try:
        value = Money.from_decimal(form.value.decimal, current_app.config["CURRENCY"])
        created = vouchers.create_vouchers(
            value=value,
            count=form.count.data,
            max_redemptions=form.max_redemptions.data,
            expires_at=expires_at,
            note=form.note.data or "",
            created_by=current_user,
        )
    except AmountError as exc:
        form.value.errors.append(f"The value {exc}.")
        return _page(form, 422)
    except ServiceError as exc:
        discard_changes()
        helpers.form_errors_from(form, exc)
        return _page(form, 422)
    flash(f"{len(created)} voucher code(s) of {value.format()} created.", "success")
    return _page(VoucherForm(formdata=None), created=created[:50])


@bp.get("/vouchers.csv")
def vouchers_csv():
    batch = _batch_arg()
    response = Response(stream_with_context(vouchers.vouchers_csv(batch)), mimetype="text/csv")
    response.headers.set(
        "Content-Disposition", "attachment", filename=f"vouchers-{batch or 'all'}.csv"
    )
    return response


@bp.post("/voucher-requests/<int:request_id>/approve")
def approve_voucher_request(request_id: int):
    return _decide(request_id, approve=True)


@bp.post("/voucher-requests/<int:request_id>/reject")
def reject_voucher_request(request_id: int):
    return _decide(request_id, approve=False)


def _decide(request_id: int, *, approve: bool):
    form = DecisionForm()
    if form.validate_on_submit():
        vouchers.decide_request(
            request_id, approve=approve, admin=current_user, note=form.note.data or ""
        )
        flash(f"Request {request_id} {'approved' if approve else 'rejected'}.", "success")
    return helpers.see_other("admin.vouchers_index")

"""Admin: the price catalog (versions by effective date) and usage reports."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from flask import Response, flash, render_template, request, stream_with_context, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import DateTimeLocalField, StringField
from wtforms.validators import DataRequired, Length, Optional

from ...errors import NotFound, ServiceError
from ...forms import AmountField, PlausibleDate, check_date, parse_amount
from ...money import AmountError, micros_to_decimal
from ...services.metering import catalog, reports
from ...web import discard_changes
from .. import helpers
from . import bp


class PriceVersionForm(FlaskForm):
    effective_from = DateTimeLocalField(
        "Effective from (UTC)",
        format="%Y-%m-%dT%H:%M",
        validators=[DataRequired(), PlausibleDate()],
    )
    cpu_per_core_hour = AmountField("CPU per core-hour", noun="price", positive=False)
    memory_per_gb_hour = AmountField("Memory per GB-hour", noun="price", positive=False)
    storage_per_gb_month = AmountField("Storage per GB-month", noun="price", positive=False)
    public_ip_per_hour = AmountField("Public IP per hour", noun="price", positive=False)
    note = StringField("Note", validators=[Optional(), Length(max=500)])


def _sku_prices(skus) -> tuple[dict[str, object], dict[str, str]]:
    """The hourly prices typed per size (only those filled in), and what is wrong with any."""
    prices: dict[str, object] = {}
    errors: dict[str, str] = {}
    for sku in skus:
        typed = request.form.get(f"sku-{sku.code}", "").strip()
        if not typed:
            continue
        try:
            if len(typed) > 32:
                raise AmountError("must be at most 32 characters")
            prices[sku.code] = parse_amount(typed, positive=False)
        except AmountError as exc:
            errors[sku.code] = f"The price {exc}."
    return prices, errors


def _prefill(form: PriceVersionForm, version) -> None:
    form.effective_from.data = (datetime.now(UTC) + timedelta(days=1)).replace(
        minute=0, second=0, microsecond=0, tzinfo=None
    )
    for name in (
        "cpu_per_core_hour",
        "memory_per_gb_hour",
        "storage_per_gb_month",
        "public_ip_per_hour",
    ):
        getattr(form, name).data = str(
            micros_to_decimal(getattr(version, f"{name}_micros")).normalize()
        )


def _render_prices(
    form: PriceVersionForm, status: int = 200, sku_errors: dict[str, str] | None = None
):
    current = catalog.version_at(datetime.now(UTC))
    sku_values = {
        s.code: request.form.get(
            f"sku-{s.code}", str(micros_to_decimal(s.hourly_micros).normalize())
        )
        for s in current.skus
    }
    return render_template(
        "admin/prices.html",
        form=form,
        current=current,
        versions=catalog.list_versions(),
        sku_values=sku_values,
        sku_errors=sku_errors or {},
        now=datetime.now(UTC),
    ), status


@bp.get("/prices")
def prices():
    form = PriceVersionForm(formdata=None)
    version = catalog.version_at(datetime.now(UTC))
    _prefill(form, version)
    return _render_prices(form)


@bp.post("/prices")
def create_price_version():
    form = PriceVersionForm()
    current = catalog.version_at(datetime.now(UTC))
    sku_hourly, sku_errors = _sku_prices(current.skus)
    if not form.validate_on_submit() or sku_errors:
        return _render_prices(form, 422, sku_errors)
    change = catalog.PriceChange(
        effective_from=form.effective_from.data.replace(tzinfo=UTC),
        cpu_per_core_hour=form.cpu_per_core_hour.decimal,
        memory_per_gb_hour=form.memory_per_gb_hour.decimal,
        storage_per_gb_month=form.storage_per_gb_month.decimal,
        public_ip_per_hour=form.public_ip_per_hour.decimal,
        sku_hourly=sku_hourly,
        note=form.note.data or "",
    )
    try:
        version = catalog.create_version(change, created_by=current_user)
    except ServiceError as exc:
        discard_changes()
        helpers.form_errors_from(form, exc)
        return _render_prices(form, 422)
    flash(
        f"Price version {version.version} takes effect {version.effective_from:%Y-%m-%d %H:%M} UTC. "
        "Running deployments keep the prices they started with.",
        "success",
    )
    return helpers.see_other("admin.prices")


def _report_filter() -> reports.ReportFilter:
    today = datetime.now(UTC).date()

    def day(name: str, default):
        typed = helpers.query_arg(name, 10)
        if not typed:
            return default
        try:
            value = date.fromisoformat(typed) if DAY.fullmatch(typed) else None
        except ValueError:
            value = None
        if value is None:
            raise ServiceError(f"{name} must be a date like 2026-11-01")
        problem = check_date(value)
        if problem:
            raise ServiceError(f"{name} {problem}")
        return value

    email = helpers.query_arg("user", 254)
    return reports.ReportFilter(
        day_from=day("from", today.replace(day=1)),
        day_to=day("to", today),
        user=helpers.find_user(email) if email else None,
        kind=helpers.query_arg("kind", 20) or None,
        label=reports.parse_label(helpers.query_arg("label", 200) or None),
    )


DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
REPORT_ROWS_SHOWN = 200


@bp.get("/reports")
def usage_reports():
    try:
        f = _report_filter()
        # One row more than shown tells whether there are more (the CSV has them all).
        rows = list(reports.report_rows(f, limit=REPORT_ROWS_SHOWN + 1))
        error = None
    except (ServiceError, NotFound) as exc:
        f, rows, error = None, [], exc.message
    return render_template(
        "admin/reports.html",
        f=f,
        rows=rows[:REPORT_ROWS_SHOWN],
        more=len(rows) > REPORT_ROWS_SHOWN,
        error=error,
        args=request.args,
        csv_url=url_for("admin.usage_reports_csv", **request.args),
    )


@bp.get("/reports.csv")
def usage_reports_csv():
    f = _report_filter()
    response = Response(stream_with_context(reports.csv_lines(f)), mimetype="text/csv")
    response.headers.set(
        "Content-Disposition", "attachment", filename=f"usage-{f.day_from}-{f.day_to}.csv"
    )
    return response

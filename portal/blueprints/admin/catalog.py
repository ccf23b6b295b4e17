"""Admin: the price catalog (versions by effective date) and usage reports."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Response, flash, render_template, request, stream_with_context, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import DateTimeLocalField, StringField
from wtforms.validators import DataRequired, Length, Optional

from ...extensions import db
from ...money import micros_to_decimal
from ...services import accounts, catalog, reports
from ...services.errors import NotFound, ServiceError
from .. import helpers
from . import bp


class PriceVersionForm(FlaskForm):
    effective_from = DateTimeLocalField("Effective from (UTC)", format="%Y-%m-%dT%H:%M",
                                        validators=[DataRequired()])
    cpu_per_core_hour = StringField("CPU per core-hour", validators=[DataRequired()])
    memory_per_gb_hour = StringField("Memory per GB-hour", validators=[DataRequired()])
    storage_per_gb_month = StringField("Storage per GB-month", validators=[DataRequired()])
    public_ip_per_hour = StringField("Public IP per hour", validators=[DataRequired()])
    note = StringField("Note", validators=[Optional(), Length(max=500)])


def _prefill(form: PriceVersionForm, version) -> None:
    form.effective_from.data = (datetime.now(UTC) + timedelta(days=1)).replace(
        minute=0, second=0, microsecond=0, tzinfo=None)
    for name in ("cpu_per_core_hour", "memory_per_gb_hour", "storage_per_gb_month",
                 "public_ip_per_hour"):
        getattr(form, name).data = str(micros_to_decimal(getattr(version, f"{name}_micros")).normalize())


def _render_prices(form: PriceVersionForm, status: int = 200):
    current = catalog.version_at(datetime.now(UTC))
    sku_values = {s.code: request.form.get(f"sku-{s.code}",
                                           str(micros_to_decimal(s.hourly_micros).normalize()))
                  for s in current.skus}
    return render_template("admin/prices.html", form=form, current=current,
                           versions=catalog.list_versions(), sku_values=sku_values,
                           now=datetime.now(UTC)), status


@bp.get("/prices")
def prices():
    form = PriceVersionForm(formdata=None)
    version = catalog.version_at(datetime.now(UTC))
    db.session.commit()  # the first version, if this created it
    _prefill(form, version)
    return _render_prices(form)


@bp.post("/prices")
def create_price_version():
    form = PriceVersionForm()
    if not form.validate_on_submit():
        return _render_prices(form, 422)
    current = catalog.version_at(datetime.now(UTC))
    change = catalog.PriceChange(
        effective_from=form.effective_from.data.replace(tzinfo=UTC),
        cpu_per_core_hour=form.cpu_per_core_hour.data.strip(),
        memory_per_gb_hour=form.memory_per_gb_hour.data.strip(),
        storage_per_gb_month=form.storage_per_gb_month.data.strip(),
        public_ip_per_hour=form.public_ip_per_hour.data.strip(),
        sku_hourly={s.code: request.form.get(f"sku-{s.code}", "").strip()
                    for s in current.skus if request.form.get(f"sku-{s.code}", "").strip()},
        note=form.note.data or "")
    try:
        version = catalog.create_version(change, created_by=current_user)
    except ServiceError as exc:
        db.session.rollback()
        helpers.form_errors_from(form, exc)
        return _render_prices(form, 422)
    db.session.commit()
    flash(f"Price version {version.version} takes effect {version.effective_from:%Y-%m-%d %H:%M} UTC. "
          "Running deployments keep the prices they started with.", "success")
    return helpers.see_other("admin.prices")


def _report_filter() -> reports.ReportFilter:
    today = datetime.now(UTC).date()

    def day(name: str, default):
        try:
            return datetime.fromisoformat(request.args[name]).date() if request.args.get(name) else default
        except ValueError:
            raise ServiceError(f"{name} must be a date like 2026-11-01") from None

    email = request.args.get("user", "").strip()
    return reports.ReportFilter(
        day_from=day("from", today.replace(day=1)), day_to=day("to", today),
        user=accounts.find_user(email) if email else None, kind=request.args.get("kind") or None,
        label=reports.parse_label(request.args.get("label")))


REPORT_ROWS_SHOWN = 200


@bp.get("/reports")
def usage_reports():
    try:
        f = _report_filter()
        rows = []
        for row in reports.report_rows(f):
            rows.append(row)
            if len(rows) > REPORT_ROWS_SHOWN:
                break
        error = None
    except (ServiceError, NotFound) as exc:
        f, rows, error = None, [], exc.message
    return render_template("admin/reports.html", f=f, rows=rows[:REPORT_ROWS_SHOWN],
                           more=len(rows) > REPORT_ROWS_SHOWN, error=error, args=request.args,
                           csv_url=url_for("admin.usage_reports_csv", **request.args))


@bp.get("/reports.csv")
def usage_reports_csv():
    f = _report_filter()
    return Response(stream_with_context(reports.csv_lines(f)), mimetype="text/csv",
                    headers={"Content-Disposition":
                             f'attachment; filename="usage-{f.day_from}-{f.day_to}.csv"'})

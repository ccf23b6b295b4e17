"""Catalog, deployments and usage in the JSON API."""
from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from flask import Response, current_app, g, jsonify, request, stream_with_context

from ...extensions import db
from ...models import Deployment, PriceVersion, TokenScope, User
from ...money import Money, micros_to_decimal
from ...services import accounts, catalog, deployments, reports, usage
from ...services.errors import NotFound, ValidationFailed
from . import bp
from .auth import acting_user, require_token
from .parsing import datetime_field, iso, json_body, page_args, required

USER, ADMIN, PLATFORM = TokenScope.USER, TokenScope.ADMIN, TokenScope.PLATFORM


def _qty(milli: int) -> str:
    return str((Decimal(milli) / 1000).normalize() if milli % 1000 else Decimal(milli // 1000))


def _rate(micros: int) -> str:
    return str(micros_to_decimal(micros).normalize()) if micros else "0"


def deployment_json(dep: Deployment) -> dict:
    return {"external_id": dep.external_id, "user_id": dep.user_id, "kind": dep.kind,
            "name": dep.name, "labels": dep.labels or {}, "state": dep.state,
            "sku": dep.sku_code, "cpu_cores": _qty(dep.cpu_milli),
            "memory_gb": _qty(dep.memory_mgb), "storage_gb": _qty(dep.storage_mgb),
            "public_ip": dep.public_ip,
            "price_version": db.session.get(PriceVersion, dep.price_version_id).version,
            "started_at": iso(dep.started_at), "ended_at": iso(dep.ended_at),
            "last_heartbeat_at": iso(dep.last_heartbeat_at), "created_at": iso(dep.created_at)}


def version_json(version: PriceVersion) -> dict:
    return {"version": version.version, "effective_from": iso(version.effective_from),
            "currency": version.currency,
            "rates": {"cpu_per_core_hour": _rate(version.cpu_per_core_hour_micros),
                      "memory_per_gb_hour": _rate(version.memory_per_gb_hour_micros),
                      "storage_per_gb_month": _rate(version.storage_per_gb_month_micros),
                      "public_ip_per_hour": _rate(version.public_ip_per_hour_micros)},
            "skus": [{"code": s.code, "kind": s.kind, "name": s.name,
                      "cpu_cores": _qty(s.cpu_milli), "memory_gb": _qty(s.memory_mgb),
                      "storage_gb": _qty(s.storage_mgb), "public_ip": s.public_ip,
                      "hourly_price": _rate(s.hourly_micros)} for s in version.skus]}


@bp.get("/prices")
@require_token(USER, ADMIN, PLATFORM)
def prices():
    now = datetime.now(UTC)
    current = catalog.version_at(now)
    db.session.commit()  # the first version, if this created it
    scheduled = [v for v in catalog.list_versions() if v.effective_from > now]
    return jsonify({**version_json(current),
                    "scheduled": [version_json(v) for v in reversed(scheduled)]})


def _platform_user(ref) -> User:
    try:
        return accounts.find_user(str(ref))
    except NotFound:
        raise ValidationFailed.field("user_id", f"no user {ref!r}") from None


def _lookup(external_id: str) -> Deployment:
    # Users see only their own deployments; the platform and admins see all.
    own = g.api_user if g.api_token.scope == USER else None
    return deployments.get_deployment(external_id, user=own)


@bp.post("/deployments")
@require_token(PLATFORM, ADMIN)
def create_deployment():
    data = json_body()
    dep, created = deployments.create_deployment(
        external_id=str(required(data, "external_id")), user=_platform_user(required(data, "user_id")),
        kind=str(required(data, "kind")), sku=data.get("sku"), cpu_cores=data.get("cpu_cores"),
        memory_gb=data.get("memory_gb"), storage_gb=data.get("storage_gb"),
        public_ip=data.get("public_ip"), name=str(data.get("name") or ""),
        labels=data.get("labels"), state=str(data.get("state") or "active"),
        started_at=datetime_field(data, "started_at"))
    db.session.commit()
    return jsonify(deployment_json(dep)), 201 if created else 200


@bp.get("/deployments/<external_id>")
@require_token(PLATFORM, ADMIN, USER)
def show_deployment(external_id: str):
    return jsonify(deployment_json(_lookup(external_id)))


@bp.patch("/deployments/<external_id>")
@require_token(PLATFORM, ADMIN)
def update_deployment(external_id: str):
    data = json_body()
    dep = deployments.update_deployment(
        _lookup(external_id), cpu_cores=data.get("cpu_cores"), memory_gb=data.get("memory_gb"),
        storage_gb=data.get("storage_gb"), sku=data.get("sku"), state=data.get("state"),
        effective_at=datetime_field(data, "effective_at"))
    db.session.commit()
    return jsonify(deployment_json(dep))


@bp.delete("/deployments/<external_id>")
@require_token(PLATFORM, ADMIN)
def delete_deployment(external_id: str):
    data = request.get_json(silent=True) or {}
    dep = deployments.delete_deployment(_lookup(external_id),
                                        ended_at=datetime_field(data, "ended_at"))
    db.session.commit()
    return jsonify(deployment_json(dep))


@bp.post("/deployments/<external_id>/heartbeat")
@require_token(PLATFORM, ADMIN)
def heartbeat(external_id: str):
    dep = deployments.heartbeat(_lookup(external_id))
    db.session.commit()
    return jsonify(deployment_json(dep))


def usage_json(rep: usage.UsageReport) -> dict:
    def money(m: Money, prefix: str) -> dict:
        return m.to_json(prefix)

    return {
        "user_id": rep.user.id, "period_start": iso(rep.period_start),
        "period_end": iso(rep.period_end), "currency": rep.currency,
        "metered_through": iso(rep.metered_through),
        **money(rep.total_cost, "total_cost"), **money(rep.projected_total, "projected_total"),
        "items": [{"resource_type": i.resource_type, "quantity": str(i.quantity),
                   "unit": i.unit, "unit_price": str(i.unit_price),
                   **money(i.total_cost, "total_cost")} for i in rep.items],
        "deployments": [{"external_id": c.deployment.external_id, "name": c.deployment.name,
                         "kind": c.deployment.kind, "state": c.deployment.state,
                         "labels": c.deployment.labels or {},
                         **money(c.total_cost, "total_cost")} for c in rep.deployments],
        "daily": [{"date": d.isoformat(), **money(m, "total_cost")} for d, m in rep.daily],
    }


@bp.get("/usage")
@require_token(USER, ADMIN)
def usage_view():
    user = acting_user(request.args.get("user_id"))
    invoice_day = current_app.config["BILLING"].invoice_day
    period = request.args.get("period")
    try:
        start, end = (usage.parse_period(period, invoice_day) if period
                      else usage.period_containing(datetime.now(UTC), invoice_day))
    except ValueError as exc:
        raise ValidationFailed.field("period", str(exc)) from None
    return jsonify(usage_json(usage.usage_report(user, start, end)))


def _report_filter() -> reports.ReportFilter:
    def day(name: str, default):
        value = request.args.get(name)
        if not value:
            return default
        try:
            return datetime.fromisoformat(value).date()
        except ValueError:
            raise ValidationFailed.field(name, "must be a date like 2026-11-01") from None

    today = datetime.now(UTC).date()
    user_ref = request.args.get("user_id")
    return reports.ReportFilter(
        day_from=day("from", today.replace(day=1)), day_to=day("to", today),
        user=accounts.find_user(user_ref) if user_ref else None,
        kind=request.args.get("kind") or None, label=reports.parse_label(request.args.get("label")))


@bp.get("/admin/reports")
@require_token(ADMIN)
def admin_reports():
    f = _report_filter()
    fmt = request.args.get("format", "json")
    if fmt == "csv":
        name = f"usage-{f.day_from}-{f.day_to}.csv"
        return Response(stream_with_context(reports.csv_lines(f)), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
    if fmt != "json":
        raise ValidationFailed.field("format", "must be csv or json")
    page, per_page = page_args()
    rows = list(reports.report_rows(f))
    items = rows[(page - 1) * per_page: page * per_page]
    return jsonify({"from": f.day_from.isoformat(), "to": f.day_to.isoformat(),
                    "items": [{k: (str(v) if isinstance(v, Decimal) else v) for k, v in r.items()}
                              for r in items],
                    "page": page, "per_page": per_page, "total": len(rows)})




"""Catalog, deployments, usage and usage reports in the JSON API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from flask import Response, current_app, g, stream_with_context

from ...errors import NotFound, ValidationFailed
from ...extensions import db
from ...models import Deployment, PriceVersion, TokenScope, User
from ...money import Money, micros_to_decimal
from ...services import calendar
from ...services.metering import catalog, deployments, reports, usage
from . import bp
from .auth import acting_user, find_user
from .fields import iso
from .models import (
    CreateDeployment,
    DeleteDeployment,
    DeploymentOut,
    PricesOut,
    PriceVersionOut,
    Rates,
    ReportPage,
    ReportQuery,
    ReportRow,
    SkuOut,
    UpdateDeployment,
    UsageDay,
    UsageDeployment,
    UsageItem,
    UsageOut,
    UsageQuery,
)
from .spec import operation

USER, ADMIN, PLATFORM = TokenScope.USER, TokenScope.ADMIN, TokenScope.PLATFORM


def _qty(milli: int) -> str:
    return str((Decimal(milli) / 1000).normalize() if milli % 1000 else Decimal(milli // 1000))


def _rate(micros: int) -> str:
    return str(micros_to_decimal(micros).normalize()) if micros else "0"


def deployment_json(dep: Deployment) -> DeploymentOut:
    return DeploymentOut(
        external_id=dep.external_id,
        user_id=dep.user_id,
        kind=dep.kind,
        name=dep.name,
        labels=dep.labels or {},
        state=dep.state,
        sku=dep.sku_code,
        cpu_cores=_qty(dep.cpu_milli),
        memory_gb=_qty(dep.memory_mgb),
        storage_gb=_qty(dep.storage_mgb),
        public_ip=dep.public_ip,
        price_version=db.session.get_one(PriceVersion, dep.price_version_id).version,
        started_at=iso(dep.started_at),
        ended_at=iso(dep.ended_at),
        last_heartbeat_at=iso(dep.last_heartbeat_at),
        created_at=iso(dep.created_at),
    )


def version_json(version: PriceVersion) -> dict:
    return dict(
        version=version.version,
        effective_from=iso(version.effective_from),
        currency=version.currency,
        rates=Rates(
            cpu_per_core_hour=_rate(version.cpu_per_core_hour_micros),
            memory_per_gb_hour=_rate(version.memory_per_gb_hour_micros),
            storage_per_gb_month=_rate(version.storage_per_gb_month_micros),
            public_ip_per_hour=_rate(version.public_ip_per_hour_micros),
        ),
        skus=[
            SkuOut(
                code=s.code,
                kind=s.kind,
                name=s.name,
                cpu_cores=_qty(s.cpu_milli),
                memory_gb=_qty(s.memory_mgb),
                storage_gb=_qty(s.storage_mgb),
                public_ip=s.public_ip,
                hourly_price=_rate(s.hourly_micros),
            )
            for s in version.skus
        ],
    )


@bp.get("/prices")
@operation(
    summary="The prices in force and any scheduled change",
    tag="Deployments",
    scopes=(USER, ADMIN, PLATFORM),
    responses={200: PricesOut},
)
def prices():
    now = datetime.now(UTC)
    current = catalog.version_at(now)
    scheduled = [v for v in catalog.list_versions() if v.effective_from > now]
    return PricesOut(
        **version_json(current),
        scheduled=[PriceVersionOut(**version_json(v)) for v in reversed(scheduled)],
    )


def _platform_user(ref: int | str) -> User:
    try:
        return find_user(ref)
    except NotFound:
        raise ValidationFailed.field("user_id", f"no user {ref!r}") from None


def _lookup(external_id: str) -> Deployment:
    # Users see only their own deployments; the platform and admins see all.
    own = g.api_user if g.api_token.scope == USER else None
    return deployments.get_for_owner(own, external_id)


def _backdate() -> timedelta:
    return timedelta(days=current_app.config["DEPLOYMENT_BACKDATE_MAX_DAYS"])


@bp.post("/deployments")
@operation(
    summary="Report a deployment",
    tag="Deployments",
    scopes=(PLATFORM, ADMIN),
    body=CreateDeployment,
    responses={201: DeploymentOut, 200: DeploymentOut},
    errors=(409,),
)
def create_deployment(body: CreateDeployment):
    """Idempotent by external_id: 201 new, 200 the same again, 409 the same id with other
    content. A start in the past is metered back to it by a job after the answer."""
    dep, created = deployments.create_deployment(
        external_id=body.external_id,
        user=_platform_user(body.user_id),
        kind=body.kind,
        sku=body.sku,
        cpu_cores=body.cpu_cores,
        memory_gb=body.memory_gb,
        storage_gb=body.storage_gb,
        public_ip=body.public_ip,
        name=body.name or "",
        labels=body.labels,
        state=body.state or "active",
        started_at=body.started_at,
        max_backdate=_backdate(),
    )
    return deployment_json(dep), 201 if created else 200


@bp.get("/deployments/<external_id>")
@operation(
    summary="A deployment",
    tag="Deployments",
    scopes=(PLATFORM, ADMIN, USER),
    responses={200: DeploymentOut},
)
def show_deployment(external_id: str):
    """User tokens see their own deployments only (another's is 404)."""
    return deployment_json(_lookup(external_id))


@bp.patch("/deployments/<external_id>")
@operation(
    summary="Resize a deployment or change its state",
    tag="Deployments",
    scopes=(PLATFORM, ADMIN),
    body=UpdateDeployment,
    responses={200: DeploymentOut},
    errors=(409,),
)
def update_deployment(external_id: str, body: UpdateDeployment):
    dep = deployments.update_deployment(
        _lookup(external_id),
        cpu_cores=body.cpu_cores,
        memory_gb=body.memory_gb,
        storage_gb=body.storage_gb,
        sku=body.sku,
        state=body.state,
        effective_at=body.effective_at,
        max_backdate=_backdate(),
    )
    return deployment_json(dep)


@bp.delete("/deployments/<external_id>")
@operation(
    summary="Delete a deployment (billed up to ended_at, kept as history)",
    tag="Deployments",
    scopes=(PLATFORM, ADMIN),
    body=DeleteDeployment,
    body_optional=True,
    responses={200: DeploymentOut},
    errors=(409,),
)
def delete_deployment(external_id: str, body: DeleteDeployment):
    dep = deployments.delete_deployment(
        _lookup(external_id), ended_at=body.ended_at, max_backdate=_backdate()
    )
    return deployment_json(dep)


@bp.post("/deployments/<external_id>/heartbeat")
@operation(
    summary="A session is alive",
    tag="Deployments",
    scopes=(PLATFORM, ADMIN),
    responses={200: DeploymentOut},
    errors=(409,),
)
def heartbeat(external_id: str):
    """Sessions silent for SESSION_HEARTBEAT_TIMEOUT_MINUTES end at their last heartbeat."""
    dep = deployments.heartbeat(_lookup(external_id))
    return deployment_json(dep)


def usage_json(rep: usage.UsageReport) -> UsageOut:
    def money(m: Money, prefix: str) -> dict:
        return m.to_json(prefix)

    return UsageOut(
        user_id=rep.user.id,
        period_start=iso(rep.period_start),
        period_end=iso(rep.period_end),
        currency=rep.currency,
        metered_through=iso(rep.metered_through),
        **money(rep.total_cost, "total_cost"),
        **money(rep.projected_total, "projected_total"),
        items=[
            UsageItem(
                resource_type=i.resource_type,
                quantity=str(i.quantity),
                unit=i.unit,
                unit_price=str(i.unit_price),
                **money(i.total_cost, "total_cost"),
            )
            for i in rep.items
        ],
        deployments=[
            UsageDeployment(
                external_id=c.deployment.external_id,
                name=c.deployment.name,
                kind=c.deployment.kind,
                state=c.deployment.state,
                labels=c.deployment.labels or {},
                **money(c.total_cost, "total_cost"),
            )
            for c in rep.deployments
        ],
        daily=[UsageDay(date=d.isoformat(), **money(m, "total_cost")) for d, m in rep.daily],
    )


@bp.get("/usage")
@operation(
    summary="A billing period's usage and cost",
    tag="Usage",
    scopes=(USER, ADMIN),
    query=UsageQuery,
    responses={200: UsageOut},
    errors=(404,),
)
def usage_view(query: UsageQuery):
    user = acting_user(query.user_id)
    invoice_day = current_app.config["BILLING"].invoice_day
    try:
        start, end = (
            calendar.parse_period(query.period, invoice_day)
            if query.period
            else calendar.period_containing(datetime.now(UTC), invoice_day)
        )
    except ValueError as exc:
        raise ValidationFailed.field("period", str(exc)) from None
    return usage_json(usage.usage_report(user, start, end))


def _report_filter(query: ReportQuery) -> reports.ReportFilter:
    today = datetime.now(UTC).date()
    day_from, day_to = query.from_ or today.replace(day=1), query.to or today
    if day_to < day_from:  # here, not while a CSV streams
        raise ValidationFailed.field("to", "must not be before from")
    return reports.ReportFilter(
        day_from=day_from,
        day_to=day_to,
        user=find_user(query.user_id) if query.user_id else None,
        kind=query.kind,
        label=query.label,
    )


@bp.get("/admin/reports")
@operation(
    summary="Usage per deployment and day",
    tag="Usage",
    scopes=(ADMIN,),
    query=ReportQuery,
    responses={200: ReportPage},
    errors=(404,),
    media={200: {"text/csv": "with format=csv: every row, streamed"}},
)
def admin_reports(query: ReportQuery):
    f = _report_filter(query)
    if query.format == "csv":
        name = f"usage-{f.day_from}-{f.day_to}.csv"
        return Response(
            stream_with_context(reports.csv_lines(f)),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    page, per_page = query.page, query.per_page
    items = list(reports.report_rows(f, limit=per_page, offset=(page - 1) * per_page))
    return ReportPage(
        **{"from": f.day_from.isoformat()},
        to=f.day_to.isoformat(),
        items=[
            ReportRow(**{k: (str(v) if isinstance(v, Decimal) else v) for k, v in r.items()})
            for r in items
        ],
        page=page,
        per_page=per_page,
        total=reports.count_rows(f),
    )

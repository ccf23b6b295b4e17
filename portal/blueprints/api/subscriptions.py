"""Plans and subscriptions in the JSON API: the plans on offer, the user's subscription with
its quotas, previewing and making a plan change, cancelling; admins manage plans and set a
user's plan and billing mode."""

from __future__ import annotations

from typing import cast

from flask import g

from ...models import TokenScope, utcnow
from ...money import Money
from ...services.subscriptions import changes, plans, quotas
from . import bp
from .auth import acting_user, find_user
from .fields import iso
from .models import (
    ChangeKindOut,
    ChoosePlan,
    CreatePlan,
    ForUser,
    PendingOut,
    PlanList,
    PlanOut,
    PlanVersionIn,
    PreviewLine,
    QuotaLevel,
    QuotaOut,
    QuotaResource,
    SetSubscription,
    SubscriptionOut,
    SubscriptionPreview,
    SubscriptionState,
)
from .spec import operation

USER, ADMIN, PLATFORM = TokenScope.USER, TokenScope.ADMIN, TokenScope.PLATFORM


def plan_json(version, retired: bool = False) -> PlanOut:
    return PlanOut(
        plan_id=version.code,
        name=version.name,
        version=version.version,
        effective_from=iso(version.effective_from),
        **version.price.to_json("price"),
        currency=version.currency,
        interval=version.interval,
        cpu_limit=quotas.units(version.cpu_limit_milli),
        memory_limit=quotas.units(version.memory_limit_mgb),
        storage_limit=quotas.units(version.storage_limit_mgb),
        retired=retired,
    )


def subscription_json(o: changes.Overview) -> SubscriptionOut:
    sub = o.subscription
    pending = None
    if o.pending is not None and o.pending_invoice is not None and o.pending.to_version:
        pending = PendingOut(
            change="subscribe" if o.pending.kind == "subscribe" else "upgrade",
            plan_id=o.pending.to_version.code,
            invoice_id=o.pending_invoice.id,
            **o.pending_invoice.amount_due.to_json("amount_due"),
        )
    renewal = (
        o.renewal.to_json("renewal") if o.renewal else {"renewal": None, "renewal_minor": None}
    )
    return SubscriptionOut(
        user_id=o.user.id,
        billing_mode=str(o.mode),
        plans_offered=o.offered,
        status=cast(SubscriptionState, o.status),
        plan=plan_json(o.version) if o.version is not None else None,
        current_period_start=iso(sub.period_start) if sub else None,
        current_period_end=iso(sub.period_end) if sub else None,
        cancel_at_period_end=bool(sub and sub.cancel_at_period_end),
        scheduled_plan_id=sub.scheduled_version.code if sub and sub.scheduled_version else None,
        **renewal,
        currency=o.user.currency,
        pending=pending,
        alert_threshold=quotas.threshold(),
        quotas=[
            QuotaOut(
                resource=cast(QuotaResource, m.resource),
                limit=m.limit,
                allocated=m.allocated,
                percent=m.percent,
                level=cast(QuotaLevel, m.level),
            )
            for m in o.meters
        ],
    )


def preview_json(p: changes.Preview) -> SubscriptionPreview:
    currency = p.new.currency
    lines = []
    if p.proration is not None:
        if p.current is not None and p.proration.credit_minor:
            lines.append(
                PreviewLine(
                    description=f"Unused time on {p.current.name} plan",
                    **Money(-p.credit.amount_minor, currency).to_json("amount"),
                )
            )
        lines.append(
            PreviewLine(
                description=f"Remaining time on {p.new.name} plan",
                **p.charge.to_json("amount"),
            )
        )
    return SubscriptionPreview(
        kind=cast(ChangeKindOut, str(p.kind)),
        plan=plan_json(p.new),
        current_plan_id=p.current.code if p.current else None,
        effective_at=iso(p.effective_at),
        lines=lines,
        **p.due_now.to_json("due_now"),
        **p.renewal.to_json("renewal"),
        currency=currency,
        refused=p.refusal,
    )


@bp.get("/plans")
@operation(
    summary="The plans on offer",
    tag="Subscriptions",
    scopes=(USER, ADMIN, PLATFORM),
    responses={200: PlanList},
)
def list_plans():
    """Each plan with the version in force now, cheapest first."""
    offers = plans.list_plans()
    return PlanList(items=[plan_json(o.version) for o in offers])


@bp.get("/subscription")
@operation(
    summary="The subscription: plan, status, period, quotas with usage",
    tag="Subscriptions",
    scopes=(USER, ADMIN),
    query=ForUser,
    responses={200: SubscriptionOut},
    errors=(404,),
)
def get_subscription(query: ForUser):
    user = acting_user(query.user_id)
    overview = changes.describe(user)
    return subscription_json(overview)


@bp.post("/subscription/preview")
@operation(
    summary="What choosing a plan would do, to the cent",
    tag="Subscriptions",
    scopes=(USER,),
    body=ChoosePlan,
    responses={200: SubscriptionPreview},
    errors=(409,),
)
def preview_subscription(body: ChoosePlan):
    """Subscribing or upgrading: the credit for the old plan's unused time, the charge for
    the new plan's rest of the period, the total due now and the renewal amount. A
    downgrade: the date it takes effect, or why it is refused."""
    p = changes.preview(g.api_user, body.plan_id)
    return preview_json(p)


@bp.post("/subscription")
@operation(
    summary="Subscribe or change plan",
    tag="Subscriptions",
    scopes=(USER,),
    body=ChoosePlan,
    responses={200: SubscriptionOut},
    errors=(409,),
)
def change_subscription(body: ChoosePlan):
    """Subscribing and upgrading take effect at once, through a proration invoice paid from
    the balances (status pending while it is unpaid: pay it with ``POST
    /invoices/<id>/pay`` or ``POST /create-checkout``, or cancel it with ``DELETE
    /subscription/pending``); a downgrade takes effect at the period's end. Choosing the plan
    held undoes a scheduled downgrade or cancellation. Two changes at once: one wins, the
    other is 409."""
    changes.change_plan(g.api_user, body.plan_id, actor=g.api_user)
    return subscription_json(changes.describe(g.api_user))


@bp.delete("/subscription")
@operation(
    summary="Cancel at the period's end",
    tag="Subscriptions",
    scopes=(USER,),
    responses={200: SubscriptionOut},
    errors=(404, 409),
)
def cancel_subscription():
    """The plan stays until the period ends; ``POST /subscription/undo`` keeps it."""
    changes.cancel(g.api_user, actor=g.api_user)
    return subscription_json(changes.describe(g.api_user))


@bp.post("/subscription/undo")
@operation(
    summary="Undo a scheduled downgrade or cancellation",
    tag="Subscriptions",
    scopes=(USER,),
    responses={200: SubscriptionOut},
    errors=(404, 409),
)
def undo_subscription_change():
    changes.undo(g.api_user)
    return subscription_json(changes.describe(g.api_user))


@bp.delete("/subscription/pending")
@operation(
    summary="Cancel a subscription or upgrade waiting for payment",
    tag="Subscriptions",
    scopes=(USER,),
    responses={200: SubscriptionOut},
    errors=(404, 409),
)
def cancel_pending_change():
    """Its invoice is voided; the plan held before stays."""
    changes.cancel_pending(g.api_user)
    return subscription_json(changes.describe(g.api_user))


# -- admin -----------------------------------------------------------------------------------


def _input(body) -> plans.PlanInput:
    return plans.PlanInput(
        name=body.name,
        price=body.price,
        interval=body.interval,
        cpu_limit=body.cpu_limit,
        memory_limit=body.memory_limit,
        storage_limit=body.storage_limit,
    )


@bp.get("/admin/plans")
@operation(
    summary="Every plan, retired ones too",
    tag="Subscriptions",
    scopes=(ADMIN,),
    responses={200: PlanList},
)
def admin_list_plans():
    offers = plans.list_plans(include_retired=True)
    return PlanList(items=[plan_json(o.version, o.plan.retired_at is not None) for o in offers])


@bp.post("/admin/plans")
@operation(
    summary="Create a plan",
    tag="Subscriptions",
    scopes=(ADMIN,),
    body=CreatePlan,
    responses={201: PlanOut},
    errors=(409,),
)
def admin_create_plan(body: CreatePlan):
    plan = plans.create_plan(body.plan_id, _input(body), created_by=g.api_user)
    return plan_json(plan.versions[-1]), 201


@bp.post("/admin/plans/<plan_id>/versions")
@operation(
    summary="A new version of a plan from a date",
    tag="Subscriptions",
    scopes=(ADMIN,),
    body=PlanVersionIn,
    responses={201: PlanOut},
    errors=(404, 409),
    path={"plan_id": {"type": "string", "maxLength": 40}},
)
def admin_version_plan(plan_id: str, body: PlanVersionIn):
    """Subscribers keep the version they hold until they change plan; new subscribers get
    this one from ``effective_from`` (now, or later; never in the past)."""
    plan = plans.find_plan(plan_id)
    version = plans.add_version(
        plan, _input(body), body.effective_from or utcnow(), created_by=g.api_user
    )
    return plan_json(version), 201


@bp.post("/admin/plans/<plan_id>/retire")
@operation(
    summary="Retire a plan",
    tag="Subscriptions",
    scopes=(ADMIN,),
    responses={200: PlanOut},
    errors=(404,),
    path={"plan_id": {"type": "string", "maxLength": 40}},
)
def admin_retire_plan(plan_id: str):
    """Offered to no one new; its subscribers keep it."""
    plan = plans.retire_plan(plans.find_plan(plan_id), retired_by=g.api_user)
    return plan_json(plan.versions[-1], True)


@bp.put("/admin/users/<user_ref>/subscription")
@operation(
    summary="Set a user's plan and billing mode",
    tag="Subscriptions",
    scopes=(ADMIN,),
    body=SetSubscription,
    responses={200: SubscriptionOut},
    errors=(404, 409),
    path={"user_ref": {"type": "string", "maxLength": 254, "description": "an id or an email"}},
)
def admin_set_subscription(user_ref: str, body: SetSubscription):
    """``billing_mode`` overrides the installation's for this account
    (``follow_installation: true`` drops the override); ``plan_id`` changes the user's plan
    by the same rules as the user's own change (an upgrade's invoice is the user's)."""
    user = find_user(int(user_ref) if user_ref.isascii() and user_ref.isdigit() else user_ref)
    if body.billing_mode is not None or body.follow_installation:
        changes.set_mode(
            user, None if body.follow_installation else body.billing_mode, actor=g.api_user
        )
    if body.plan_id is not None:
        changes.change_plan(user, body.plan_id, actor=g.api_user)
    return subscription_json(changes.describe(user))

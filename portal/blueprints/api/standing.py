"""Standing and can-deploy in the JSON API: an account's computed standing, and whether the
platform may start a deployment for a user (with why, the runway and the cost)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal, cast

from pydantic import Field

from ...errors import ValidationFailed
from ...models import TokenScope, utcnow
from ...services import accounts
from ...services.metering.deployments import MAX_SIZE
from ...services.standing import account as standing_account
from ...services.standing import candeploy, status
from . import bp
from .auth import acting_user
from .fields import Flag, Quantity, StrictModel, Text, UserRef, iso
from .models import Currency, Decimal_, ForUser, Kind, Minor, Out, Time
from .spec import operation

USER, ADMIN, PLATFORM = TokenScope.USER, TokenScope.ADMIN, TokenScope.PLATFORM

StandingStatus = Literal["good", "at_risk", "overdue", "suspended", "removing"]
Reason = Literal[
    "removing",
    "suspended",
    "overdue",
    "funds_cover_a_day",
    "funds_short",
    "within_quotas",
    "quota_exceeded",
    "not_subscribed",
    "card_on_file",
    "vouchers_cover",
    "card_not_required",
    "card_required",
    "budget_reached",
    "budget_would_exceed",
]


class StandingOut(Out):
    user_id: int
    status: StandingStatus = Field(
        description="worst first: removing, suspended, overdue, at_risk (runway under 72 "
        "hours, or the default card expires before the next invoice), good"
    )
    reasons: list[str] = Field(description="each thing that makes the standing what it is")
    runway_hours: int | None = Field(
        description="whole hours the balances pay for what runs now, for an account with no "
        "valid card; null when a card pays or nothing bills by the hour"
    )
    removal_at: Time | None = Field(
        default=None,
        description="a prepaid account whose funds ran out: when its deployments are removed "
        "unless money arrives first; null otherwise",
    )
    amount_needed: Decimal_ | None = Field(
        default=None, description="what to add before removal_at for them to run again"
    )
    amount_needed_minor: Minor | None = None
    currency: Currency


class CanDeploy(StrictModel):
    user_id: UserRef
    kind: Kind
    sku: Annotated[str, Text(40, required=False)] | None = Field(
        default=None,
        description="a SKU code from GET /prices; or give cpu_cores, memory_gb and storage_gb",
    )
    cpu_cores: Annotated[Decimal, Quantity(MAX_SIZE["cpu_cores"], "cores")] | None = None
    memory_gb: Annotated[Decimal, Quantity(MAX_SIZE["memory_gb"], "GB")] | None = None
    storage_gb: Annotated[Decimal, Quantity(MAX_SIZE["storage_gb"], "GB")] | None = None
    public_ip: Flag | None = None


class CanDeployOut(Out):
    allowed: bool
    reason: Reason = Field(description="why, as a code; message says it in a sentence")
    message: str
    runway_hours: int | None = Field(
        description="whole hours the balances pay for what runs plus the new deployment"
    )
    hourly_cost: Decimal_ = Field(description="the new deployment's cost an hour")
    hourly_cost_minor: Minor
    required: Decimal_ = Field(
        description="what the funds must cover: a day of everything (prepaid), or the rest "
        "of the period net of other deployments (vouchers); for a budget refusal the cap it "
        "would take (the period's spending plus everything for the rest of the period); 0 "
        "when nothing"
    )
    required_minor: Minor
    currency: Currency


@bp.get("/standing")
@operation(
    summary="An account's standing",
    tag="Standing",
    scopes=(USER, ADMIN),
    query=ForUser,
    responses={200: StandingOut},
    errors=(404,),
)
def get_standing(query: ForUser):
    """Good, at risk, overdue, suspended or removing, with the reasons and the runway."""
    user = acting_user(query.user_id)
    s = status.standing(user)
    return StandingOut(
        user_id=user.id,
        status=cast(StandingStatus, s.status),
        reasons=list(s.reasons),
        runway_hours=s.runway_hours,
        removal_at=iso(s.removal_at),
        **(s.amount_needed.to_json("amount_needed") if s.amount_needed else {}),
        currency=user.currency,
    )


@bp.post("/can-deploy")
@operation(
    summary="May the user start this deployment?",
    tag="Standing",
    scopes=(PLATFORM,),
    body=CanDeploy,
    responses={200: CanDeployOut},
)
def can_deploy(body: CanDeploy):
    """The rules by billing mode (see the README's "Standing, can-deploy and dunning"):
    refused while an invoice is overdue or deployments are suspended or being removed;
    with a budget cap set to stop: refused once spending reached it (``budget_reached``) or
    when everything for the rest of the period would exceed it (``budget_would_exceed``);
    usage: a valid card, or vouchers covering the rest of the period net of what runs;
    subscription: within the plan's quotas; prepaid: funds for 24 hours of everything."""
    now = utcnow()
    # The user and their account in one statement (a string without "@" names nobody).
    ref = body.user_id
    condition = None if isinstance(ref, str) and "@" not in ref else accounts.user_condition(ref)
    found = standing_account.read_user_account(condition, now) if condition is not None else None
    if found is None:
        raise ValidationFailed.field("user_id", f"no user {ref!r}")
    user, account = found
    planned = candeploy.planned_deployment(
        kind=body.kind,
        sku=body.sku,
        cpu_cores=body.cpu_cores,
        memory_gb=body.memory_gb,
        storage_gb=body.storage_gb,
        public_ip=body.public_ip,
        now=now,
    )
    d = candeploy.can_deploy(user, planned, now, account=account)
    return CanDeployOut(
        allowed=d.allowed,
        reason=cast(Reason, d.reason),
        message=d.message,
        runway_hours=d.runway_hours,
        **candeploy.to_money(d.hourly_micros, user.currency).to_json("hourly_cost"),
        **candeploy.to_money(d.required_micros, user.currency).to_json("required"),
        currency=user.currency,
    )

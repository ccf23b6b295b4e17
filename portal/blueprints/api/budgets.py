"""Budget caps in the JSON API: a user's monthly cap, what "reached" does, and the period's
spending against it."""

from __future__ import annotations

from pydantic import Field

from ...models import TokenScope, User
from ...services.budgets import rules
from . import bp
from .auth import acting_user
from .fields import Amount, Flag, StrictModel, iso, to_money
from .models import Currency, Decimal_, ForUser, Minor, Out, Time
from .spec import operation

USER, ADMIN = TokenScope.USER, TokenScope.ADMIN


class BudgetIn(StrictModel):
    cap: Amount | None = Field(description="the monthly cap in major units; null: no cap")
    stop_at_cap: Flag = Field(
        description="true: suspend the active deployments when spending reaches the cap "
        "(they run again when the cap is raised or a new period begins); false: only tell"
    )


class BudgetOut(Out):
    user_id: int
    cap: Decimal_ | None = Field(description="null: no cap")
    cap_minor: Minor | None
    stop_at_cap: bool
    spent: Decimal_ = Field(
        description="this billing period's spending so far: metered usage (the Usage page's "
        "total) plus the plan's fee for one period, by billing mode (see the README)"
    )
    spent_minor: Minor
    percent: int | None = Field(description="whole percent of the cap spent; null: no cap")
    reached: bool
    currency: Currency
    period_start: Time
    period_end: Time = Field(description="the instant after the period")


def budget_json(user: User) -> BudgetOut:
    s = rules.status(user)
    cap = s.cap.to_json("cap") if s.cap is not None else {"cap": None, "cap_minor": None}
    return BudgetOut(
        user_id=user.id,
        **cap,
        stop_at_cap=s.stop_at_cap,
        **s.spent.to_json("spent"),
        percent=s.percent,
        reached=s.reached,
        currency=user.currency,
        period_start=iso(s.period_start),
        period_end=iso(s.period_end),
    )


@bp.get("/budget")
@operation(
    summary="The monthly budget cap and this period's spending",
    tag="Budgets",
    scopes=(USER, ADMIN),
    query=ForUser,
    responses={200: BudgetOut},
    errors=(404,),
)
def get_budget(query: ForUser):
    return budget_json(acting_user(query.user_id))


@bp.put("/budget")
@operation(
    summary="Set or remove the monthly budget cap",
    tag="Budgets",
    scopes=(USER,),
    body=BudgetIn,
    responses={200: BudgetOut},
)
def put_budget(body: BudgetIn):
    """Checked at once: at 80% of the cap ``billing.budget.warning`` and a mail, at 100%
    ``billing.budget.reached`` and a mail (each once per budget and period), and with
    ``stop_at_cap`` the active deployments are suspended. A higher cap, no cap or
    ``stop_at_cap: false`` lets what the budget suspended run again."""
    user = acting_user(None)
    cap = None if body.cap is None else to_money(body.cap, user.currency, "cap")
    rules.set_budget(user, cap, body.stop_at_cap)
    return budget_json(user)

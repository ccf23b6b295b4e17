"""Admin: plans (versioned like prices: a change is a new version from a date), retiring a
plan, and a user's billing mode and plan."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import flash, render_template
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import DateTimeLocalField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, Length, Optional

from ...errors import ServiceError
from ...extensions import db
from ...forms import AmountField, PlausibleDate
from ...models import User
from ...services.subscriptions import changes, plans
from ...web import discard_changes
from .. import helpers
from . import bp

INTERVALS = [SelectChoice("month"), SelectChoice("year")]
MODES = [
    ("", "the installation's"),
    ("usage", "usage"),
    ("subscription", "subscription"),
    ("hybrid", "hybrid"),
    ("prepaid", "prepaid"),
]


class PlanForm(FlaskForm):
    plan_id = StringField("Plan id", validators=[Optional(), Length(max=40)])
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    price = AmountField("Price", noun="price", positive=False)
    interval = SelectField("Billed per", choices=INTERVALS, default="month")
    cpu_limit = AmountField("CPU cores", noun="limit", positive=False)
    memory_limit = AmountField("Memory GB", noun="limit", positive=False)
    storage_limit = AmountField("Storage GB", noun="limit", positive=False)
    effective_from = DateTimeLocalField(
        "Effective from (UTC)", format="%Y-%m-%dT%H:%M", validators=[Optional(), PlausibleDate()]
    )

    def data_in(self) -> plans.PlanInput:
        return plans.PlanInput(
            name=self.name.data or "",
            price=self.price.decimal,  # type: ignore[arg-type]
            interval=self.interval.data or "month",
            cpu_limit=self.cpu_limit.decimal,  # type: ignore[arg-type]
            memory_limit=self.memory_limit.decimal,  # type: ignore[arg-type]
            storage_limit=self.storage_limit.decimal,  # type: ignore[arg-type]
        )


class ModeForm(FlaskForm):
    billing_mode = SelectField(
        "Billing mode",
        choices=[SelectChoice(v, label) for v, label in MODES],
        validators=[Optional()],
    )


def _render(form: PlanForm | None = None, status: int = 200, editing: str | None = None):
    offers = plans.list_plans(include_retired=True)
    return render_template(
        "admin/plans.html",
        offers=offers,
        create_form=form if form is not None and editing is None else PlanForm(formdata=None),
        form=form,
        editing=editing,
        now=datetime.now(UTC),
    ), status


@bp.get("/plans")
def plans_index():
    return _render()


@bp.post("/plans")
def create_plan():
    form = PlanForm()
    if not form.validate_on_submit():
        return _render(form, 422)
    try:
        plan = plans.create_plan(form.plan_id.data or "", form.data_in(), created_by=current_user)
    except ServiceError as exc:
        discard_changes()
        helpers.form_errors_from(form, exc)
        return _render(form, 422)
    flash(f"Plan {plan.code} is on offer.", "success")
    return helpers.see_other("admin.plans_index")


@bp.post("/plans/<code>/versions")
def version_plan(code: str):
    plan = plans.find_plan(code)
    form = PlanForm()
    if not form.validate_on_submit():
        return _render(form, 422, editing=code)
    when = form.effective_from.data
    try:
        version = plans.add_version(
            plan,
            form.data_in(),
            when.replace(tzinfo=UTC) if when else datetime.now(UTC),
            created_by=current_user,
        )
    except ServiceError as exc:
        discard_changes()
        helpers.form_errors_from(form, exc)
        return _render(form, 422, editing=code)
    flash(
        f"{plan.code} version {version.version} from {version.effective_from:%Y-%m-%d %H:%M} UTC; "
        "subscribers keep the version they hold until they change plan.",
        "success",
    )
    return helpers.see_other("admin.plans_index")


@bp.post("/plans/<code>/retire")
def retire_plan(code: str):
    plan = plans.retire_plan(plans.find_plan(code), retired_by=current_user)
    flash(f"Plan {plan.code} is offered to no one new.", "success")
    return helpers.see_other("admin.plans_index")


@bp.post("/users/<int:user_id>/billing-mode")
def set_billing_mode(user_id: int):
    user = db.get_or_404(User, user_id)
    form = ModeForm()
    if form.validate_on_submit():
        try:
            changes.set_mode(user, form.billing_mode.data or None, actor=current_user)
        except ServiceError as exc:
            discard_changes()
            flash(exc.message, "error")
        else:
            flash(f"Billing mode: {user.billing_mode or 'the installation’s'}.", "success")
    return helpers.see_other("admin.user", user_id=user.id)

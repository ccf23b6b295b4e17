"""Admin › Webhooks: the platform's endpoints (add, edit, enable, disable, rotate the secret),
each one's deliveries and their attempts, and replays."""

from __future__ import annotations

from datetime import UTC

from flask import abort, flash, render_template
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateTimeLocalField,
    SelectChoice,
    SelectMultipleField,
    StringField,
)
from wtforms.validators import DataRequired, Length, NumberRange, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from ...errors import ServiceError
from ...forms import WholeNumberField
from ...models import DeliveryStatus, utcnow
from ...services.events.catalog import NAMES
from ...services.webhooks import delivery, endpoints
from ...web import discard_changes
from .. import helpers
from . import bp


class EventTypesField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class EndpointForm(FlaskForm):
    url = StringField(
        "URL",
        validators=[DataRequired(), Length(max=endpoints.MAX_URL)],
        render_kw={"inputmode": "url"},
    )
    description = StringField(
        "Description (optional)", validators=[Optional(), Length(max=endpoints.MAX_DESCRIPTION)]
    )
    all_events = BooleanField("Every event (also those added later)", default=True)
    event_types = EventTypesField("Or only these", choices=[SelectChoice(n, n) for n in NAMES])
    enabled = BooleanField("Enabled", default=True)

    def data_in(self) -> endpoints.EndpointInput:
        return endpoints.EndpointInput(
            url=self.url.data or "",
            event_types=None if self.all_events.data else list(self.event_types.data or []),
            description=self.description.data or "",
            enabled=bool(self.enabled.data),
        )


class ReplayEventForm(FlaskForm):
    event_id = WholeNumberField("Event id", validators=[DataRequired(), NumberRange(1, 2**63 - 1)])


class ReplayRangeForm(FlaskForm):
    start = DateTimeLocalField("From (UTC)", validators=[DataRequired()])
    end = DateTimeLocalField("To (UTC)", validators=[DataRequired()])


class ActionForm(FlaskForm):
    """Enable, disable, rotate: a button and the CSRF token."""


def _index(form: EndpointForm, status: int = 200, created=None, secret: str | None = None):
    items = endpoints.list_endpoints()
    return render_template(
        "admin/webhooks.html",
        form=form,
        endpoints=items,
        counts=delivery.counts_by_status([e.id for e in items]),
        created=created,
        secret=secret,
    ), status


@bp.get("/webhooks")
def webhooks():
    return _index(EndpointForm(formdata=None))


@bp.post("/webhooks")
def create_webhook():
    form = EndpointForm()
    if not form.validate_on_submit():
        return _index(form, 422)
    try:
        endpoint, secret = endpoints.create_endpoint(
            form.data_in(), actor=current_user, now=utcnow()
        )
    except ServiceError as exc:
        discard_changes()  # show what is stored; the 422 keeps nothing
        helpers.form_errors_from(form, exc)
        return _index(form, 422)
    flash(f"Endpoint {endpoint.url} added.", "success")
    return _index(EndpointForm(formdata=None), created=endpoint, secret=secret)


def _status_arg() -> str:
    status = helpers.query_arg("status", 20)
    if status and status not in DeliveryStatus.ALL:
        abort(400, description="The status must be pending, succeeded or failed.")
    return status


def _show(
    endpoint_id: int, *, form=None, replay=None, replay_range=None, status: int = 200, secret=None
):
    endpoint = endpoints.get_endpoint(endpoint_id)
    if form is None:
        form = EndpointForm(formdata=None, obj=endpoint)
        form.all_events.data = endpoint.event_types is None
        form.event_types.data = list(endpoint.event_types or [])
    status_filter = _status_arg()
    return render_template(
        "admin/webhook.html",
        endpoint=endpoint,
        form=form,
        action=ActionForm(formdata=None),
        replay=replay or ReplayEventForm(formdata=None),
        replay_range=replay_range or ReplayRangeForm(formdata=None),
        deliveries=delivery.list_deliveries(
            endpoint, status=status_filter, page=helpers.page_arg()
        ),
        status_filter=status_filter,
        statuses=DeliveryStatus.ALL,
        secret=secret,
        now=utcnow(),
    ), status


@bp.get("/webhooks/<int:endpoint_id>")
def webhook(endpoint_id: int):
    return _show(endpoint_id)


@bp.post("/webhooks/<int:endpoint_id>")
def update_webhook(endpoint_id: int):
    endpoint = endpoints.get_endpoint(endpoint_id)
    form = EndpointForm()
    if not form.validate_on_submit():
        return _show(endpoint_id, form=form, status=422)
    try:
        endpoints.update_endpoint(endpoint, form.data_in(), actor=current_user, now=utcnow())
    except ServiceError as exc:
        discard_changes()  # show what is stored; the 422 keeps nothing
        helpers.form_errors_from(form, exc)
        return _show(endpoint_id, form=form, status=422)
    flash("Endpoint saved.", "success")
    return helpers.see_other("admin.webhook", endpoint_id=endpoint_id)


def _set_enabled(endpoint_id: int, enabled: bool):
    endpoint = endpoints.get_endpoint(endpoint_id)
    if ActionForm().validate_on_submit():
        endpoints.set_enabled(endpoint, enabled, actor=current_user, now=utcnow())
        flash(f"Endpoint {'enabled' if enabled else 'disabled'}.", "success")
    return helpers.see_other("admin.webhook", endpoint_id=endpoint_id)


@bp.post("/webhooks/<int:endpoint_id>/enable")
def enable_webhook(endpoint_id: int):
    return _set_enabled(endpoint_id, True)


@bp.post("/webhooks/<int:endpoint_id>/disable")
def disable_webhook(endpoint_id: int):
    return _set_enabled(endpoint_id, False)


@bp.post("/webhooks/<int:endpoint_id>/rotate")
def rotate_webhook_secret(endpoint_id: int):
    endpoint = endpoints.get_endpoint(endpoint_id)
    if not ActionForm().validate_on_submit():
        return helpers.see_other("admin.webhook", endpoint_id=endpoint_id)
    secret = endpoints.rotate_secret(endpoint, actor=current_user, now=utcnow())
    return _show(endpoint_id, secret=secret)


@bp.post("/webhooks/<int:endpoint_id>/replay")
def replay_webhook_event(endpoint_id: int):
    endpoint = endpoints.get_endpoint(endpoint_id)
    form = ReplayEventForm()
    if not form.validate_on_submit():
        return _show(endpoint_id, replay=form, status=422)
    try:
        delivery.replay_event(endpoint, form.event_id.data, actor=current_user, now=utcnow())
    except ServiceError as exc:
        discard_changes()  # show what is stored; the 422 keeps nothing
        form.event_id.errors = [exc.message]
        return _show(endpoint_id, replay=form, status=422)
    flash(f"Event {form.event_id.data} will be sent again.", "success")
    return helpers.see_other("admin.webhook", endpoint_id=endpoint_id)


@bp.post("/webhooks/<int:endpoint_id>/replay-range")
def replay_webhook_range(endpoint_id: int):
    endpoint = endpoints.get_endpoint(endpoint_id)
    form = ReplayRangeForm()
    if not form.validate_on_submit():
        return _show(endpoint_id, replay_range=form, status=422)
    try:
        count = delivery.replay_range(
            endpoint,
            form.start.data.replace(tzinfo=UTC),
            form.end.data.replace(tzinfo=UTC),
            actor=current_user,
            now=utcnow(),
        )
    except ServiceError as exc:
        discard_changes()  # show what is stored; the 422 keeps nothing
        helpers.form_errors_from(form, exc)
        return _show(endpoint_id, replay_range=form, status=422)
    flash(f"{count} event(s) will be sent again.", "success")
    return helpers.see_other("admin.webhook", endpoint_id=endpoint_id)


@bp.get("/webhooks/<int:endpoint_id>/deliveries/<int:delivery_id>")
def webhook_delivery(endpoint_id: int, delivery_id: int):
    endpoint = endpoints.get_endpoint(endpoint_id)
    found = delivery.get_delivery(endpoint, delivery_id)
    return render_template(
        "admin/webhook_delivery.html",
        endpoint=endpoint,
        delivery=found,
        attempts=delivery.attempts_of(found),
    )

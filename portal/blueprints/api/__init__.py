"""The JSON API under /api/plugins/billing (bearer tokens). Its reference is the OpenAPI
document at /api/plugins/billing/openapi.json, shown at /api/plugins/billing/docs."""

from flask import Blueprint

from ...errors import ServiceError
from ...extensions import csrf
from ...money import AmountError
from ...web import discard_changes, json_error

bp = Blueprint("api", __name__, url_prefix="/api/plugins/billing")
csrf.exempt(bp)  # bearer tokens only, never the session cookie, so no CSRF to defend


@bp.errorhandler(ServiceError)
def _service_error(exc: ServiceError):
    discard_changes()
    return json_error(exc.http_status, exc.code, exc.message, exc.fields)


@bp.errorhandler(AmountError)
def _amount_error(exc: AmountError):
    return json_error(422, "validation_failed", f"amount {exc}", {"amount": str(exc)})


from . import (  # noqa: E402,F401
    accounts,
    admin_users,
    budgets,
    deployments,
    events,
    invoices,
    jobs,
    payments,
    reference,
    standing,
    subscriptions,
    vouchers,
)

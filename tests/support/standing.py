"""Accounts in trouble, made the way the portal gets them there: an issued invoice left
unpaid past its due date and grace, and the dunning job run over it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from portal.extensions import db
from portal.models import Invoice, User, utcnow
from portal.services.metering import deployments
from portal.services.standing import dunning
from tests.support.invoices import OCT, issue_invoices


def running(user_id: int, name: str = "api") -> str:
    """A one-core deployment running since January (in the caller's app context)."""
    external_id = f"{name}-live-{user_id}"
    deployments.create_deployment(
        external_id=external_id,
        user=db.session.get_one(User, user_id),
        kind="vm",
        name=name,
        cpu_cores=1,
        memory_gb=0,
        storage_gb=0,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return external_id


def overdue_invoice(app, user_id: int, *, days_past_due: int, run_dunning: bool = True) -> int:
    """October's invoice (one core, $37.20), due ``days_past_due`` days ago, a deployment
    "api" running now, and the dunning job run once: past the grace period (7 days) the
    deployment is suspended. Returns the invoice id."""
    [invoice_id] = issue_invoices(app, user_id, periods=(OCT,))
    with app.app_context():
        try:
            running(user_id)
            invoice = db.session.get_one(Invoice, invoice_id)
            invoice.due_at = utcnow() - timedelta(days=days_past_due)
            db.session.commit()
            if run_dunning:
                dunning.run()
                db.session.commit()
            return invoice_id
        finally:
            db.session.remove()

"""Invoices made the way the portal makes them: a deployment runs, the services meter it and
issue the period's invoice (its PDF is rendered after commit; tests run jobs synchronously)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from portal.extensions import db
from portal.models import Invoice, User
from portal.money import Money
from portal.services.invoicing import invoices
from portal.services.invoicing import run as invoice_run
from portal.services.metering import deployments

SEP = (datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC))
OCT = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
# One core at $0.05 an hour: September (720 h) costs $36.00, October (744 h) $37.20.
SEP_TOTAL, OCT_TOTAL = "$36.00", "$37.20"


def issue_invoices(app, user_id: int, periods=(SEP, OCT), *, name: str = "web") -> list[int]:
    """One core running from the first period's start to the last one's end, invoiced
    period by period through ``invoice_run.generate_for_user``. Returns the invoice ids."""
    with app.app_context():
        try:
            user = db.session.get(User, user_id)
            dep, _ = deployments.create_deployment(
                external_id=f"{name}-{user_id}",
                user=user,
                kind="vm",
                name=name,
                cpu_cores=1,
                memory_gb=0,
                storage_gb=0,
                started_at=periods[0][0],
            )
            deployments.delete_deployment(dep, ended_at=periods[-1][1])
            db.session.commit()
            ids = []
            for start, end in periods:
                invoice, _ = invoice_run.generate_for_user(user, start, end)
                db.session.commit()
                ids.append(invoice.id)
            return ids
        finally:
            db.session.remove()


def pay_offline(app, invoice_id: int, minor: int | None = None, reference: str = "wire 1") -> None:
    """Record an offline payment (all that is due unless ``minor`` says otherwise)."""
    with app.app_context():
        try:
            invoice = db.session.get(Invoice, invoice_id)
            amount = Money(
                invoice.amount_due.amount_minor if minor is None else minor, invoice.currency
            )
            invoices.record_offline_payment(invoice, amount=amount, reference=reference)
            db.session.commit()
        finally:
            db.session.remove()


def empty_invoices(app, user_id: int, count: int) -> list[int]:
    """``count`` issued invoices of nothing (zero amounts, so the ledger has nothing to
    match), one per month going back from August 2026: enough rows to page through."""
    with app.app_context():
        try:
            rows = []
            for n in range(count):
                year, month = divmod(2026 * 12 + 7 - n, 12)
                start = datetime(year, month + 1, 1, tzinfo=UTC)
                end = datetime(year + (month == 11), (month + 1) % 12 + 1, 1, tzinfo=UTC)
                rows.append(
                    Invoice(
                        user_id=user_id,
                        status="open",
                        number=f"INV-EMPTY-{n:04d}",
                        currency="USD",
                        period_start=start,
                        period_end=end,
                        finalized_at=end,
                        due_at=end + timedelta(days=14),
                    )
                )
            db.session.add_all(rows)
            db.session.commit()
            return [r.id for r in rows]
        finally:
            db.session.remove()

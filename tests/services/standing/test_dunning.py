"""Dunning, weeks 1 to 13 with a frozen clock: a reminder a week with the invoice's PDF, the
deployments suspended after gracePeriodDays, removed after the deletion delay (announced in
the reminders), and restored on payment; every step once however often the job runs, and
the ledger reconciles."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Deployment, DunningStep, Event, Invoice, OutboundEmail, User
from portal.services import mail
from portal.services.metering import deployments
from portal.services.metering.rollups import audit_usage
from portal.services.standing import dunning, status
from portal.services.wallet.reconcile import find_discrepancies
from tests.support.invoices import OCT, issue_invoices, pay_offline

DAY = timedelta(days=1)


@pytest.fixture
def overdue(app, make_user):
    """A user with October's invoice unpaid and a deployment running since."""
    user_id = make_user(name="Dee Linquent").id
    [invoice_id] = issue_invoices(app, user_id, periods=(OCT,))
    with app.app_context():
        deployments.create_deployment(
            external_id="vm-live",
            user=db.session.get(User, user_id),
            kind="vm",
            cpu_cores=1,
            memory_gb=0,
            storage_gb=0,
        )
        db.session.commit()
        db.session.remove()
    with app.app_context():
        yield db.session.get(User, user_id), db.session.get(Invoice, invoice_id)


def names(name):
    return [
        e.payload["external_id"]
        for e in db.session.scalars(select(Event).where(Event.name == name))
    ]


def mails(user, template_subject):
    return list(
        db.session.scalars(
            select(OutboundEmail)
            .where(
                OutboundEmail.user_id == user.id, OutboundEmail.subject.contains(template_subject)
            )
            .order_by(OutboundEmail.id)
        )
    )


def state():
    return db.session.scalar(select(Deployment.state).where(Deployment.external_id == "vm-live"))


def run_at(when):
    result = dunning.run(when)
    db.session.commit()
    return result


def test_weeks_one_to_thirteen(overdue):
    user, invoice = overdue
    due = invoice.due_at
    assert invoice.status == "open" and due is not None
    assert run_at(due - timedelta(hours=1)).reminders == 0  # not due yet
    standings = {}
    for day in range(0, 13 * 7 + 1):
        now = due + day * DAY + timedelta(hours=1)
        run_at(now)
        run_at(now + timedelta(minutes=30))  # a second run the same day does nothing more
        standings[day] = (state(), status.standing(user, now).status)
    # the grace period (7 days) then suspended; a week before day 90 removing; then removed
    assert standings[6] == ("active", "overdue")
    assert standings[7] == ("suspended", "suspended")
    assert standings[82] == ("suspended", "suspended")
    assert standings[83] == ("removing", "removing")
    assert standings[89] == ("removing", "removing")
    assert standings[90][0] == "removed"
    reminders = mails(user, "Reminder: invoice")
    assert len(reminders) == 13  # weeks 1 to 13, then the removal ends them
    assert all(m.attachment_invoice_id == invoice.id for m in reminders)
    filename, pdf = mail.invoice_attachment(invoice.id)
    assert filename.endswith(".pdf") and pdf.startswith(b"%PDF")
    removal = (due + 90 * DAY).strftime("%d %b %Y")
    assert "will be suspended on" in reminders[0].body_text
    assert f"they will be deleted on\n{removal}" in reminders[1].body_text
    assert names("billing.deployment.suspended") == ["vm-live"]
    assert names("billing.deployment.removing") == ["vm-live"]
    assert names("billing.deployment.removed") == ["vm-live"]
    removing = db.session.scalar(select(Event).where(Event.name == "billing.deployment.removing"))
    assert removing.payload == {
        "user_id": user.id,
        "external_id": "vm-live",
        "state": "removing",
        "reason": "overdue",
        "effective_at": (due + 90 * DAY).isoformat(),  # the removal time
    }
    assert len(mails(user, "Deployments suspended")) == 1
    assert len(mails(user, "Deployments removed")) == 1
    steps = db.session.scalars(select(DunningStep.step).where(DunningStep.invoice_id == invoice.id))
    assert sorted(steps) == sorted(
        [f"reminder-{w}" for w in range(1, 14)] + ["suspended", "removing", "removed"]
    )
    assert not find_discrepancies()
    assert not audit_usage()


def test_payment_restores_what_is_not_removed(app, overdue):
    user, invoice = overdue
    due = invoice.due_at
    for day in range(0, 11):
        run_at(due + day * DAY + timedelta(hours=1))
    assert state() == "suspended"
    invoice_id, user_id = invoice.id, user.id
    db.session.remove()
    pay_offline(app, invoice_id)  # the payment restores at once (restore.restore_now)
    user = db.session.get(User, user_id)
    assert state() == "active"
    result = run_at(due + 11 * DAY + timedelta(hours=1))
    assert result.restored == 0 and result.reminders == 0
    assert names("billing.deployment.resumed") == ["vm-live"]
    assert len(mails(user, "Deployments running again")) == 1
    # no longer overdue; with no card and no balance to run on, it is at risk
    after = status.standing(user, due + 11 * DAY)
    assert (after.status, after.runway_hours) == ("at_risk", 0)
    for day in range(12, 100):  # nothing more ever happens for a paid invoice
        assert not any(run_at(due + day * DAY).figures().values())
    assert len(mails(user, "Reminder: invoice")) == 2
    assert not find_discrepancies()
    assert not audit_usage()


def test_restore_user_right_after_payment(app, overdue):
    """restore_user resumes at once what the paid invoice suspended; the hourly run then
    finds nothing left to do."""
    user, invoice = overdue
    due = invoice.due_at
    for day in range(0, 11):
        run_at(due + day * DAY + timedelta(hours=1))
    assert state() == "suspended"
    invoice_id, user_id = invoice.id, user.id
    assert dunning.restore_user(user_id, due + 11 * DAY) == []  # not paid yet
    db.session.remove()
    pay_offline(app, invoice_id)  # which asks for restore_now after commit: done already
    assert state() == "active"
    db.session.commit()
    assert dunning.restore_user(user_id, due + 11 * DAY) == []
    assert run_at(due + 11 * DAY + timedelta(hours=1)).restored == 0
    assert names("billing.deployment.resumed") == ["vm-live"]
    assert not find_discrepancies()

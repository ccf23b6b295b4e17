"""Two daemons running the dunning job at once (PostgreSQL): each step is one row UNIQUE per
invoice and step, inserted before the step acts, so the second run waits on the first's
insert and then finds the step taken: one reminder, one suspension, one event."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Deployment, Event, OutboundEmail
from portal.services.standing import dunning
from portal.services.wallet.reconcile import find_discrepancies
from tests.support.race import at_once, count

from .test_dunning import overdue  # noqa: F401  (the fixture)

pytestmark = pytest.mark.postgres


def race(app, when) -> list[dict[str, int]]:
    return at_once(app, lambda: dunning.run(when).figures())


def test_two_daemons_take_each_step_once(overdue, wide):  # noqa: F811
    user, invoice = overdue
    due, user_id = invoice.due_at, user.id
    db.session.remove()
    results = race(wide, due + timedelta(days=8))
    assert sorted(r["reminders"] for r in results) == [0, 1]
    assert sorted(r["suspended"] for r in results) == [0, 1]
    assert count(Event, Event.name == "billing.deployment.suspended") == 1
    for subject in ("Reminder: invoice", "Deployments suspended"):
        mails = count(
            OutboundEmail,
            OutboundEmail.user_id == user_id,
            OutboundEmail.subject.contains(subject),
        )
        assert mails == 1, subject
    assert (
        db.session.scalar(select(Deployment.state).where(Deployment.external_id == "vm-live"))
        == "suspended"
    )
    assert not find_discrepancies()

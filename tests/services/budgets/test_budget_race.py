"""Two daemons checking budgets at once (PostgreSQL): each notice is one row UNIQUE per
user, period, threshold and budget, inserted before it acts, so the second check waits on
the first's insert and then finds it taken: one warning, one reached, one suspension each."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Deployment, Event, OutboundEmail
from portal.services.budgets import rules
from tests.support.race import at_once, count

from .test_budgets import meter, set_budget, user  # noqa: F401  (the fixture)

pytestmark = pytest.mark.postgres


def test_two_checks_notice_and_suspend_once(user, wide):  # noqa: F811
    set_budget(user, 2000, True, meter(0))
    now = meter(12)
    user_id = user.id
    db.session.remove()
    results = at_once(wide, lambda: rules.check(now).figures())
    assert sorted(r["warnings"] for r in results) == [0, 1]
    assert sorted(r["reached"] for r in results) == [0, 1]
    assert sorted(r["suspended"] for r in results) == [0, 2]
    for name in ("billing.budget.warning", "billing.budget.reached"):
        assert count(Event, Event.name == name) == 1, name
    assert count(Event, Event.name == "billing.deployment.suspended") == 2
    assert count(OutboundEmail, OutboundEmail.user_id == user_id) == 2
    assert set(db.session.scalars(select(Deployment.state))) == {"suspended"}


def test_two_checks_resume_once(user, wide):  # noqa: F811
    """The cap raised behind both checks' backs: each notice is claimed by one UPDATE, so one
    check resumes (events and a mail), the other finds it resumed."""
    set_budget(user, 2000, True, meter(0))
    now = meter(12)
    rules.check(now)
    db.session.commit()
    budget = rules.get_budget(user)
    budget.cap_minor = 5000  # not through set_budget, which would resume at once
    budget.revision += 1
    db.session.commit()
    user_id = user.id
    db.session.remove()
    results = at_once(wide, lambda: rules.check(now).figures())
    assert sorted(r["resumed"] for r in results) == [0, 2]
    assert count(Event, Event.name == "billing.deployment.resumed") == 2
    assert (
        count(
            OutboundEmail,
            OutboundEmail.user_id == user_id,
            OutboundEmail.subject.contains("run again"),
        )
        == 1
    )
    assert set(db.session.scalars(select(Deployment.state))) == {"active"}

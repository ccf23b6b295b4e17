"""Two plan changes at once (PostgreSQL): the database decides, not timing. Each change bumps
the subscription's revision with a conditional UPDATE (the second waits on the row lock, then
finds the revision moved and is refused); a first subscription is one row per user (UNIQUE).
So two upgrades at once give one change and one invoice, and two first subscriptions one
subscription."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from portal.errors import Conflict
from portal.extensions import db
from portal.models import Invoice, Subscription, SubscriptionChange, User
from portal.services.subscriptions import changes
from portal.services.wallet.reconcile import find_discrepancies

from .conftest import fund

pytestmark = pytest.mark.postgres

NOV = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def wide(app, make_app, billing):
    wide = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 6, "max_overflow": 0})
    wide.config["BILLING"] = app.config["BILLING"]
    yield wide
    with wide.app_context():
        db.engine.dispose()


def race(app, user_id: int, plan: str, at: datetime) -> list[str]:
    """Two sessions read the subscription, then both change plan at once."""
    both_read = threading.Barrier(2)

    def change() -> str:
        with app.app_context():
            try:
                user = db.session.get(User, user_id)
                changes.get_subscription(user)  # the state each one decides from
                both_read.wait(timeout=10)
                changes.change_plan(user, plan, now=at)
                db.session.commit()
                return "changed"
            except Conflict:
                db.session.rollback()
                return "conflict"
            finally:
                db.session.remove()

    with ThreadPoolExecutor(max_workers=2) as pool:
        return sorted(f.result() for f in [pool.submit(change), pool.submit(change)])


def test_two_upgrades_at_once_give_one_change_and_one_invoice(user, wide):
    fund(user, "500.00")
    changes.change_plan(user, "pro", now=NOV)
    db.session.commit()
    user_id = user.id
    db.session.remove()

    assert race(wide, user_id, "enterprise", datetime(2026, 11, 11, tzinfo=UTC)) == [
        "changed",
        "conflict",
    ]
    upgrades = db.session.scalar(
        select(func.count())
        .select_from(SubscriptionChange)
        .where(SubscriptionChange.kind == "upgrade")
    )
    invoices = db.session.scalar(
        select(func.count()).select_from(Invoice).where(Invoice.kind == "plan_change")
    )
    assert (upgrades, invoices) == (1, 2)  # the subscription's and the one upgrade's
    sub = db.session.scalar(select(Subscription))
    assert sub.plan_version.code == "enterprise"
    assert not find_discrepancies()


def test_two_first_subscriptions_at_once_give_one(user, wide):
    fund(user, "500.00")
    user_id = user.id
    db.session.remove()
    assert race(wide, user_id, "pro", NOV) == ["changed", "conflict"]
    assert db.session.scalar(select(func.count()).select_from(Subscription)) == 1
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 1
    assert not find_discrepancies()

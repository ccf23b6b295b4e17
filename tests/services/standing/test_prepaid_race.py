"""Prepaid standing under concurrency (PostgreSQL): two daemons running the hourly job at
once start one removal (one event, one mail), and a top-up committing while the job moves
the deployments to REMOVING leaves them running: the payment's restore waits for the
job's locks, then finds them covered."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Deployment, Event, OutboundEmail, PrepaidRemoval, User
from portal.services.payments import settlement
from portal.services.standing import prepaid
from portal.services.wallet.reconcile import find_discrepancies
from tests.support.race import at_once, count

from .test_prepaid import clock, deploy, meter, prepaid_user, top_up  # noqa: F401

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 11, 10, tzinfo=UTC)
AT = T0 + timedelta(hours=1, minutes=10)


@pytest.fixture
def broke(ctx, make_user, clock):  # noqa: F811
    """A prepaid user whose one core ran an hour with no funds."""
    user = prepaid_user(make_user)
    deploy(user, "vm-race", T0)
    meter(user, T0 + timedelta(hours=1))
    clock.now = AT
    user_id = user.id
    db.session.remove()
    return user_id


def deployment_state() -> str:
    return db.session.scalar(select(Deployment.state).where(Deployment.external_id == "vm-race"))


def test_two_daemons_start_one_removal(broke, wide):
    results = at_once(wide, lambda: prepaid.run(AT).figures())
    assert sorted(r["removing"] for r in results) == [0, 1]
    assert count(PrepaidRemoval) == 1
    assert count(Event, Event.name == "billing.deployment.removing") == 1
    assert count(OutboundEmail, OutboundEmail.subject.contains("deployments are removed")) == 1
    assert deployment_state() == "removing"
    assert not find_discrepancies()


def test_a_top_up_during_the_transition_restores(broke, wide, monkeypatch):
    """The job has moved the deployment to REMOVING and not committed; the top-up commits
    and its restore waits on the job's locks; once the job commits, the restore finds the
    funds and runs the deployment again. Never left removing while funded."""
    started, waiting = threading.Event(), threading.Event()
    real_lock, real_mail, real_settle_lock = prepaid.lock, prepaid._mail, settlement._lock_user

    def lock(user):
        if threading.current_thread().name.startswith("payer"):
            waiting.set()  # the payment is committed; its jobs now ask for the locks
        return real_lock(user)

    def settle_lock(user):
        if threading.current_thread().name.startswith("payer"):
            waiting.set()
        return real_settle_lock(user)

    def mail(*args, **kwargs):
        if threading.current_thread().name.startswith("daemon"):
            started.set()  # moved to REMOVING, not committed: now the top-up
            assert waiting.wait(timeout=20), "the payment's restore never started"
        return real_mail(*args, **kwargs)

    monkeypatch.setattr(prepaid, "lock", lock)
    monkeypatch.setattr(prepaid, "_mail", mail)
    monkeypatch.setattr(settlement, "_lock_user", settle_lock)

    def daemon() -> dict[str, int]:
        with wide.app_context():
            try:
                result = prepaid.run(AT)
                db.session.commit()
                return result.figures()
            finally:
                db.session.remove()

    def payer() -> None:
        assert started.wait(timeout=20)
        with wide.app_context():
            try:
                top_up(db.session.get_one(User, broke), 100, "cash-race")
            finally:
                db.session.remove()

    threads = [
        threading.Thread(target=daemon, name="daemon"),
        threading.Thread(target=payer, name="payer"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert deployment_state() == "active"
    removing = count(Event, Event.name == "billing.deployment.removing")
    restored = count(Event, Event.name == "billing.deployment.restored")
    assert (removing, restored) == (1, 1)
    assert count(PrepaidRemoval, PrepaidRemoval.outcome == "restored") == 1
    assert not find_discrepancies()


def test_a_top_up_racing_the_job_never_leaves_it_removing_while_funded(broke, wide):
    """No choreography: both start together, whatever order the database gives them."""
    both = threading.Barrier(2)

    def daemon() -> None:
        with wide.app_context():
            try:
                both.wait(timeout=10)
                prepaid.run(AT)
                db.session.commit()
            finally:
                db.session.remove()

    def payer() -> None:
        with wide.app_context():
            try:
                user = db.session.get_one(User, broke)
                db.session.commit()
                both.wait(timeout=10)
                top_up(user, 100, "cash-race")
            finally:
                db.session.remove()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for f in [pool.submit(daemon), pool.submit(payer)]:
            f.result()
    assert deployment_state() == "active"
    removing = count(Event, Event.name == "billing.deployment.removing")
    restored = count(Event, Event.name == "billing.deployment.restored")
    assert (removing, restored) in ((0, 0), (1, 1))
    assert not find_discrepancies()

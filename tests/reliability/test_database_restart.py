"""A database restart under a request: a pooled connection whose server process is gone (as
after a PostgreSQL restart) is replaced before use (pool pre-ping), and a request whose
connection drops before it did any work runs once more on a new one instead of failing."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import func, select, text

from portal.extensions import db
from portal.models import CreditLot
from tests.support.processes import query

pytestmark = pytest.mark.postgres

API = "/api/plugins/billing"


def pooled_backend(portal) -> int:
    """The server process of the app's one pooled connection."""
    with portal.app_context():
        with db.engine.connect() as connection:
            pid = connection.scalar(text("SELECT pg_backend_pid()"))
        assert db.engine.pool.checkedin() == 1
        db.session.remove()
    return pid


def terminate(app, pid: int) -> None:
    """What a restart does to the app's connection: its server process ends."""
    with app.app_context():
        with db.engine.connect() as connection:
            assert connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        db.session.remove()


def test_a_request_whose_connection_dropped_before_any_work_runs_again(
    app, make_app, make_user, api, caplog
):
    # Without pre-ping the dropped connection reaches the request, as when the server goes
    # away between the pool's check and the first statement.
    portal = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": False})
    client = portal.test_client()
    token = api.token(make_user(), "admin")
    alice = make_user("alice@example.com")
    headers = {"Authorization": f"Bearer {token}"}

    terminate(app, pooled_backend(portal))
    with caplog.at_level(logging.WARNING):
        wallet = client.get(f"{API}/wallet?user_id={alice.id}", headers=headers)
    assert wallet.status_code == 200, wallet.get_json()
    assert "dropped before GET /api/plugins/billing/wallet did any work" in caplog.text

    caplog.clear()
    terminate(app, pooled_backend(portal))
    with caplog.at_level(logging.WARNING):
        granted = client.post(
            f"{API}/credits",
            json={"user_id": alice.id, "amount": "5.00", "reason": "restart"},
            headers=headers,
        )
    assert granted.status_code == 201, granted.get_json()
    assert "running it again" in caplog.text
    credits = query(app, lambda: db.session.scalar(select(func.count()).select_from(CreditLot)))
    assert credits == 1  # granted once


def test_pre_ping_replaces_a_dropped_pooled_connection(app, make_app, make_user, api, caplog):
    portal = make_app()  # the default: pool_pre_ping on
    token = api.token(make_user())
    terminate(app, pooled_backend(portal))
    with caplog.at_level(logging.WARNING):
        answer = portal.test_client().get(
            f"{API}/wallet", headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 200
    assert "running it again" not in caplog.text

"""DATABASE_GENERIC_PLANS (the web server's setting): on PostgreSQL, a page's prepared
statements keep one generic plan instead of being planned again on every request."""

from __future__ import annotations

import pytest
from sqlalchemy import event, text

from portal.db import plan_per_value
from portal.extensions import db
from portal.models import User
from portal.money import Money
from portal.services.wallet import credits
from tests.support.app import Api, AuthActions

pytestmark = pytest.mark.postgres


def _wallet_history_plans(web) -> tuple[int, int]:
    """(generic, custom) plans of the wallet page's history statement, summed over the web
    app's pooled connections (a backend's prepared statements are its own)."""
    with web.app_context():
        engine = db.engine
        connections = [engine.connect() for _ in range(engine.pool.checkedin())]
        generic = custom = 0
        try:
            for conn in connections:
                assert conn.execute(text("SHOW plan_cache_mode")).scalar() == (
                    "force_generic_plan" if web.config["DATABASE_GENERIC_PLANS"] else "auto"
                )
                g, c = conn.execute(
                    text(
                        "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0) "
                        "FROM pg_prepared_statements "
                        "WHERE statement LIKE '%FROM ledger_entries%' AND statement LIKE '%LIMIT%'"
                    )
                ).one()
                generic, custom = generic + g, custom + c
        finally:
            for conn in connections:
                conn.close()
    return generic, custom


@pytest.mark.parametrize("generic", [True, False])
def test_the_web_setting_keeps_one_generic_plan_per_statement(app, make_app, make_user, generic):
    user = make_user()
    with app.app_context():
        for n in range(3):
            credits.grant_credit(
                user=db.session.get(User, user.id),
                amount=Money(1000 + n, "USD"),
                reason=f"grant {n}",
                idempotency_key=f"plans-{n}",
            )
        db.session.commit()
    web = make_app(DATABASE_GENERIC_PLANS=generic)
    client = web.test_client()
    AuthActions(client).login(user)
    pages = [client.get("/wallet/") for _ in range(16)]
    assert all(p.status_code == 200 for p in pages)
    # The same page either way: a plan changes how rows are found, never which.
    assert pages[-1].get_data(as_text=True).count('<tr id="entry-') == 3
    generic_plans, custom_plans = _wallet_history_plans(web)
    if generic:
        # psycopg prepares a statement on its fifth run; from then on, no planning.
        assert generic_plans >= 4 and custom_plans == 0
    else:
        assert generic_plans + custom_plans >= 4
    with web.app_context():
        db.engine.dispose()


def test_the_admin_lists_keep_postgresql_s_plan_per_value(app, make_app, make_user):
    """Lists and reports across all accounts filter by a status or a date range, which match
    a share of the rows that depends on the value: those requests plan per value. A page of
    one account keeps the generic plans."""
    user = make_user()
    admin = make_user(admin=True)
    web = make_app(DATABASE_GENERIC_PLANS=True)
    client = web.test_client()
    AuthActions(client).login(admin)
    with web.app_context():
        engine = db.engine
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        asked = {}
        for url in ("/admin/invoices?status=void", "/admin/", f"/admin/users/{user.id}"):
            seen.clear()
            assert client.get(url).status_code == 200
            asked[url] = any("plan_cache_mode" in s for s in seen)
        token = Api(web, web.test_client()).token(admin, "admin")
        for path in ("/admin/invoices", f"/invoices?user_id={user.id}"):
            seen.clear()
            assert Api(web, web.test_client()).get(path, token).status_code == 200
            asked["API " + path] = any("plan_cache_mode" in s for s in seen)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert asked == {
        "/admin/invoices?status=void": True,
        "/admin/": True,
        f"/admin/users/{user.id}": False,
        "API /admin/invoices": True,
        f"API /invoices?user_id={user.id}": False,
    }
    with web.test_request_context(), web.app_context():
        plan_per_value()
        assert db.session.execute(text("SHOW plan_cache_mode")).scalar() == "auto"
        db.session.commit()  # for this transaction only
        assert db.session.execute(text("SHOW plan_cache_mode")).scalar() == "force_generic_plan"
        db.session.remove()
    with web.app_context():
        db.engine.dispose()

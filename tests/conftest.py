"""Fixtures: a real database (SQLite or PostgreSQL, from TEST_DB), a real Redis, the app,
clients, factories. After every test that used the app, the ledger must reconcile."""

from __future__ import annotations

import itertools
import os
from types import SimpleNamespace

import flask_migrate
import psycopg
import pytest
import redis
from sqlalchemy import text

from portal import create_app
from portal.extensions import db, limiter
from portal.services import accounts
from portal.services.wallet.reconcile import find_discrepancies
from tests.support.app import (
    BASE_CONFIG,
    PASSWORD,
    PG_ADMIN_URL,
    REDIS_URL,
    TEST_DB,
    Api,
    AuthActions,
    need,
)
from tests.support.client import PortalClient
from tests.support.events import catalogue_problems

# Shared fixtures live in tests/support; each test folder may add its own in a conftest.
pytest_plugins = [
    "tests.support.documents",
    "tests.support.gateway",
    "tests.support.payments",
    "tests.support.plans",
    "tests.support.processes",
    "tests.support.schedule",
    "tests.support.smtp",
    "tests.support.webhooks",
]


def pytest_configure(config):
    config.addinivalue_line("markers", "corrupts_ledger: the test breaks the ledger on purpose")


def pytest_collection_modifyitems(config, items):
    """PostgreSQL-only tests (concurrency) belong to the PostgreSQL pass, tests marked
    `once` (nothing to do with the database) to the SQLite pass: the other pass deselects
    them rather than skipping them."""
    other = "once" if TEST_DB == "postgresql" else "postgres"
    elsewhere = [item for item in items if other in item.keywords]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if other not in item.keywords]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    if TEST_DB != "postgresql":
        yield "sqlite:///" + str(tmp_path_factory.mktemp("db") / "portal.sqlite3")
        return

    # One database per test process, so parallel runs on one server do not collide.
    name = f"portal_test_{os.getpid()}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            for (stale,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'portal_test_%'"
            ).fetchall():
                pid = stale.rsplit("_", 1)[-1]
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    conn.execute(f'DROP DATABASE IF EXISTS "{stale}" WITH (FORCE)')
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        need(False, f"PostgreSQL at {PG_ADMIN_URL}: {exc}")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        need(False, f"Redis at {REDIS_URL}: {exc}")
    return REDIS_URL


# Every app the session built; the first is the shared one (`_app`).
_BUILT: list = []


@pytest.fixture(autouse=True)
def _release_connections():
    """After each test, close the idle pooled connections of the apps built with extra
    config: each holds its own pool, and a long PostgreSQL run would otherwise keep dozens of
    idle connections open and starve the concurrency tests of max_connections."""
    yield
    for built_app in _BUILT[1:]:
        with built_app.app_context():
            db.engine.dispose()


@pytest.fixture(scope="session")
def make_app(database_url, redis_url):
    """Build an app on the test database with extra config (migrated once)."""
    migrated, built = [], _BUILT

    def build(**overrides):
        app = create_app(
            {**BASE_CONFIG, "DATABASE_URL": database_url, "REDIS_URL": redis_url, **overrides}
        )
        app.test_client_class = PortalClient
        if not migrated:
            with app.app_context():
                flask_migrate.upgrade()
            migrated.append(True)
        built.append(app)
        return app

    yield build
    for app in built:  # close pooled connections before the interpreter does
        with app.app_context():
            db.engine.dispose()


@pytest.fixture(scope="session")
def _app(make_app):
    return make_app()


@pytest.fixture
def wide(app, make_app):
    """The test app's database and settings with a pool wide enough for racing threads
    (tests/support/race.py)."""
    wide = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 6, "max_overflow": 0})
    wide.config["BILLING"] = app.config["BILLING"]
    yield wide
    with wide.app_context():
        db.engine.dispose()


def reset_state(app) -> None:
    with app.app_context():
        tables = [t.name for t in reversed(db.metadata.sorted_tables)]
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                db.session.execute(text(f"DELETE FROM {table}"))
        db.session.commit()
    redis.Redis.from_url(app.config["REDIS_URL"]).flushdb()
    limiter.reset()


@pytest.fixture
def app(_app, request):
    reset_state(_app)
    yield _app
    if "corrupts_ledger" in request.keywords:
        return

    with _app.app_context():
        problems = find_discrepancies()
        bad_events = catalogue_problems()
    assert not problems, "the ledger does not reconcile after this test:\n" + "\n".join(problems)
    assert not bad_events, "events outside the catalogue's schemas:\n" + "\n".join(bad_events)


@pytest.fixture
def ctx(app):
    """An app context for calling services directly; the session is removed after."""
    with app.app_context():
        yield app
        db.session.remove()


@pytest.fixture
def client(app) -> PortalClient:
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


_counter = itertools.count(1)


@pytest.fixture
def make_user(app):
    """Create a user; returns plain data (id, email, password), not an ORM object."""

    def make(
        email: str | None = None, *, password: str = PASSWORD, admin: bool = False, name: str = ""
    ) -> SimpleNamespace:
        with app.app_context():
            user = accounts.create_user(
                email=email or f"user{next(_counter)}@example.com",
                password=password,
                name=name,
                is_admin=admin,
            )
            db.session.commit()
            return SimpleNamespace(id=user.id, email=user.email, password=password, is_admin=admin)

    return make


@pytest.fixture
def auth(client) -> AuthActions:
    return AuthActions(client)


@pytest.fixture
def api(app, client) -> Api:
    return Api(app, client)

"""Fixtures: a real database (SQLite or PostgreSQL, from TEST_DB), a real Redis, the app,
clients, factories. After every test that used the app, the ledger must reconcile."""

from __future__ import annotations

import itertools
import os
from types import SimpleNamespace

import pytest
import redis
from sqlalchemy import text

from portal import create_app
from portal.extensions import db, limiter
from tests.support.client import PortalClient

TEST_DB = os.environ.get("TEST_DB", "sqlite")
REQUIRE_ALL = os.environ.get("REQUIRE_ALL") == "1" or os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# `make test` passes TEST_REDIS_URL (db 15). A bare pytest run picks a database from its
# pid, so test runs side by side on one Redis do not flush each other's queues.
REDIS_URL = os.environ.get("TEST_REDIS_URL") or f"redis://127.0.0.1:6379/{1 + os.getpid() % 14}"
PASSWORD = "correct-horse-battery"

BASE_CONFIG = {
    "TESTING": True,
    "SECRET_KEY": "test-secret-key-0123456789abcdef",
    "RQ_ASYNC": False,
    "CURRENCY": "USD",
    "PUBLIC_URL": "http://portal.test",
    "LOGIN_RATE_LIMIT": "1000 per minute",
    # Argon2id still, at a cost fit for a test suite (production uses the library defaults).
    "PASSWORD_HASH_PARAMS": {"time_cost": 1, "memory_cost": 1024, "parallelism": 1},
}


def need(condition: bool, reason: str) -> None:
    """Skip when a part is missing on a developer machine; fail under CI."""
    if not condition:
        if REQUIRE_ALL:
            pytest.fail(f"required for this run: {reason}")
        pytest.skip(reason)


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
    import psycopg

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


@pytest.fixture(scope="session")
def make_app(database_url, redis_url):
    """Build an app on the test database with extra config (migrated once)."""
    migrated, built = [], []

    def build(**overrides):
        app = create_app(
            {**BASE_CONFIG, "DATABASE_URL": database_url, "REDIS_URL": redis_url, **overrides}
        )
        app.test_client_class = PortalClient
        if not migrated:
            import flask_migrate

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
    from portal.services.wallet.reconcile import find_discrepancies

    with _app.app_context():
        problems = find_discrepancies()
    assert not problems, "the ledger does not reconcile after this test:\n" + "\n".join(problems)


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
    from portal.services import accounts

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


class AuthActions:
    def __init__(self, client: PortalClient):
        self.client = client

    def login(self, user_or_email, password: str = PASSWORD):
        email = getattr(user_or_email, "email", user_or_email)
        password = getattr(user_or_email, "password", password)
        return self.client.submit("/auth/login", {"email": email, "password": password})

    def logout(self):
        return self.client.submit("/auth/logout")


@pytest.fixture
def auth(client) -> AuthActions:
    return AuthActions(client)


class Api:
    """JSON API calls with bearer tokens."""

    prefix = "/api/plugins/billing"

    def __init__(self, app, client):
        self.app, self.client = app, client

    def token(self, user, scope: str = "user") -> str:
        from portal.models import User
        from portal.services import accounts

        with self.app.app_context():
            row = db.session.get(User, user.id)
            if scope != "user" and not row.is_admin:
                row.is_admin = True  # only admins hold admin/platform tokens
            _, plain = accounts.create_api_token(row, name="test", scope=scope)
            db.session.commit()
            return plain

    def _headers(self, token, headers):
        return {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}

    def get(self, path, token=None, headers=None, **kwargs):
        return self.client.get(self.prefix + path, headers=self._headers(token, headers), **kwargs)

    def post(self, path, json=None, token=None, headers=None, **kwargs):
        return self.client.post(
            self.prefix + path, json=json, headers=self._headers(token, headers), **kwargs
        )


@pytest.fixture
def api(app, client) -> Api:
    return Api(app, client)

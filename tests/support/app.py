"""What the tests share besides fixtures: the test database and Redis settings, the base
config, the test password, skipping a missing part, and the login and API helpers."""

from __future__ import annotations

import os

import pytest

from portal.extensions import db
from portal.models import User
from portal.services import accounts
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


class AuthActions:
    def __init__(self, client: PortalClient):
        self.client = client

    def login(self, user_or_email, password: str = PASSWORD):
        email = getattr(user_or_email, "email", user_or_email)
        password = getattr(user_or_email, "password", password)
        return self.client.submit("/auth/login", {"email": email, "password": password})

    def logout(self):
        return self.client.submit("/auth/logout")


class Api:
    """JSON API calls with bearer tokens."""

    prefix = "/api/plugins/billing"

    def __init__(self, app, client):
        self.app, self.client = app, client

    def token(self, user, scope: str = "user") -> str:
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

    def put(self, path, json=None, token=None, headers=None, **kwargs):
        return self.client.put(
            self.prefix + path, json=json, headers=self._headers(token, headers), **kwargs
        )

    def delete(self, path, token=None, headers=None, **kwargs):
        return self.client.delete(
            self.prefix + path, headers=self._headers(token, headers), **kwargs
        )

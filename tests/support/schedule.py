"""Fixtures for the schedule: test jobs in the registry, a clock, apps for the schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from portal.tasks import registry

# A fixed past time, half past the hour, so no test crosses an hour boundary on its schedule.
BASE = datetime(2026, 3, 2, 12, 30, tzinfo=UTC)


def _slot_arg(due: datetime) -> tuple:
    return (due.strftime("%Y-%m-%dT%H"),)


@pytest.fixture
def only_jobs(monkeypatch):
    """Replace the schedule registry with the given registrations for one test."""

    def use(*registrations) -> None:
        monkeypatch.setattr(registry, "_SCHEDULE", {})
        for kwargs in registrations:
            registry.schedule(**kwargs)

    return use


@pytest.fixture
def counting_job(only_jobs):
    """An hourly job that counts its executions in Redis (tests.tasks.fake_jobs.record)."""
    only_jobs(
        {
            "name": "count",
            "cron": "0 * * * *",
            "func": "tests.tasks.fake_jobs.record",
            "queue": "default",
            "id_prefix": "count",
            "args": _slot_arg,
        }
    )
    return "count"


class Clock:
    def __init__(self, start: datetime = BASE):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def fast_app(make_app):
    """The test app with a fast heartbeat, a short lease and a short failover threshold."""
    return make_app(
        DAEMON_HEARTBEAT_SECONDS=1, DAEMON_LEASE_SECONDS=5, BUILTIN_BILLING_AFTER_MINUTES=10
    )


@pytest.fixture(scope="module")
def async_app(make_app):
    """Jobs wait in Redis until a worker takes them."""
    return make_app(RQ_ASYNC=True)

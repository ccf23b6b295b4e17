"""Job functions for the schedule tests: each execution leaves a trace in Redis."""

from __future__ import annotations

from portal.tasks.queues import redis_connection

EXECUTIONS = "test:executions"
FAIL_FLAG = "test:fail"


def record(slot: str) -> dict:
    """Counts its executions; its figures look like a billing run's."""
    redis_connection().rpush(EXECUTIONS, slot)
    return {"deployments": 2, "amount_minor": 150, "currency": "USD", "slot": slot}


def flaky(slot: str) -> dict:
    """Fails while the fail flag is set, then behaves like ``record``."""
    if redis_connection().get(FAIL_FLAG):
        raise RuntimeError(f"the test job failed on purpose at {slot}")
    return record(slot)


def executions() -> list[str]:
    return [v.decode() for v in redis_connection().lrange(EXECUTIONS, 0, -1)]

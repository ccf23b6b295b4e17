"""Races on PostgreSQL: the same work started in two threads at once, each with its own
session on an app whose pool is wide enough for both (the ``wide`` fixture in
tests/conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import func, select

from portal.extensions import db

T = TypeVar("T")


def at_once(app, work: Callable[[], T], times: int = 2) -> list[T]:
    """``work()`` in ``times`` threads released together by a barrier, each in its own app
    context, committing after it; their results in submission order."""
    start = threading.Barrier(times)

    def run() -> T:
        with app.app_context():
            try:
                start.wait(timeout=10)
                result = work()
                db.session.commit()
                return result
            finally:
                db.session.remove()

    with ThreadPoolExecutor(max_workers=times) as pool:
        futures = [pool.submit(run) for _ in range(times)]
        return [f.result() for f in futures]


def count(model: Any, *where: Any) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))

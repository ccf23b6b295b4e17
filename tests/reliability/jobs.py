"""Job functions for the reliability tests. They leave their trace in a file, which works
while Redis is down."""

from __future__ import annotations

import time


def slow_touch(path: str, slot: str, seconds: float) -> str:
    """Marks ``slot:started`` in the file at ``path``, takes its time, then appends
    ``slot``."""
    with open(path, "a") as trace:
        trace.write(slot + ":started\n")
    time.sleep(seconds)
    with open(path, "a") as trace:
        trace.write(slot + "\n")
    return slot


def traces(path) -> list[str]:
    try:
        with open(path) as trace:
            return trace.read().split()
    except FileNotFoundError:
        return []

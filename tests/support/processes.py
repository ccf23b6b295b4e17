"""Fixtures and helpers for tests that start real processes (daemon, worker, `flask billing
serve`) and wait for what they print."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from portal.extensions import db
from tests.support.app import BASE_CONFIG

ROOT = Path(__file__).resolve().parents[2]


def query(app, fn: Callable):
    """Run ``fn()`` in a fresh app context and session (rows as plain values please)."""
    with app.app_context():
        try:
            return fn()
        finally:
            db.session.remove()


# -- scheduler processes ---------------------------------------------------------------------


class Process:
    """A scheduler or worker subprocess whose output is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], name: str):
        self.name = name
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 60) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if regex.search(line):
                    return line
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no line matching {pattern!r}\n{self.output}")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=5)
        if not self._reader.is_alive():
            self.popen.stdout.close()
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.wait()


def wait_until(
    condition: Callable[[], object],
    timeout: float = 60,
    interval: float = 0.1,
    message: str = "condition",
):
    """Poll ``condition`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def processes(database_url, redis_url, tmp_path):
    """Start scheduler/worker processes against the test database and Redis; every process
    still running at the end of the test is killed."""
    started: list[Process] = []
    base_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TESTING", "BILLING_CONFIG", "FLASK_APP", "RQ_ASYNC")
    }
    base_env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SECRET_KEY=BASE_CONFIG["SECRET_KEY"],
        INSTANCE_PATH=str(tmp_path / "instance"),
        LOG_LEVEL="debug",
        PYTHONUNBUFFERED="1",
        DAEMON_HEARTBEAT_SECONDS="0.5",
        DAEMON_LEASE_SECONDS="3",
        BUILTIN_BILLING_AFTER_MINUTES="90",
    )

    class Starter:
        env = base_env

        def daemon(self, *args: str, name: str = "daemon", **env: str) -> Process:
            return self._start(
                [sys.executable, "-m", "flask", "--app", "wsgi", "billing", "daemon", *args],
                name,
                env,
            )

        def worker(self, *queues: str, name: str = "worker", **env: str) -> Process:
            return self._start([sys.executable, "-m", "jobs.worker", *queues], name, env)

        def serve(self, port: int, name: str = "serve", **env: str) -> Process:
            return self._start(
                [
                    sys.executable,
                    "-m",
                    "flask",
                    "--app",
                    "wsgi",
                    "billing",
                    "serve",
                    "--port",
                    str(port),
                    "--web-workers",
                    "1",
                ],
                name,
                env,
            )

        def _start(self, args, name, env) -> Process:
            process = Process(args, {**base_env, **env}, name)
            started.append(process)
            return process

    yield Starter()
    for process in started:
        if process.popen.poll() is None:
            process.signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()

"""Processes that heal: the worker waits for Redis and outlives its outages (a job finishing
during one included), and `flask billing serve` starts a killed child again."""

from __future__ import annotations

import os
import signal
import socket
from datetime import timedelta

import pytest

from portal.extensions import db
from portal.tasks import queues, relay
from tests.reliability.jobs import traces
from tests.support.processes import wait_until

pytestmark = pytest.mark.redis
# Apps on a Redis that goes away keep their rate limits in memory: the limiter is shared, and
# the next test resets it.
MEMORY_LIMITS = {"RATELIMIT_STORAGE_URI": "memory://"}

JOB = "tests.reliability.jobs.slow_touch"


def ask(app, path, slot: str, seconds: float = 0) -> None:
    with app.app_context():
        queues.enqueue_after_commit(
            "default", JOB, str(path), slot, seconds, job_id=f"touch:{slot}"
        )
        db.session.commit()
        db.session.remove()


def run_relay(app) -> dict:
    with app.app_context():
        try:
            return relay.relay(grace=timedelta(0))
        finally:
            db.session.remove()


def test_the_worker_waits_for_redis_and_survives_a_job_finishing_during_an_outage(
    app, make_app, processes, private_redis, tmp_path
):
    trace = tmp_path / "trace"
    worker = processes.worker(REDIS_URL=private_redis.url, BUILTIN_BILLING="false")
    worker.wait_for_line("Redis is unavailable", timeout=60)  # started before Redis: waits
    private_redis.start()
    portal = make_app(RQ_ASYNC=True, REDIS_URL=private_redis.url, **MEMORY_LIMITS)
    ask(portal, trace, "first")
    wait_until(lambda: "first" in traces(trace), timeout=60, message="the first job")

    ask(portal, trace, "during", seconds=3)
    # Killed once the job runs: a job taken from the queue a moment before Redis goes away
    # never starts (its work horse cannot record the start) and is the relay's to send again.
    wait_until(lambda: "during:started" in traces(trace), timeout=30, message="the slow job")
    private_redis.kill()  # the job finishes while Redis is down
    wait_until(lambda: "during" in traces(trace), timeout=30, message="the slow job's end")
    worker.wait_for_line("starting it again", timeout=60)
    worker.wait_for_line("Redis is unavailable", timeout=60)
    assert worker.popen.poll() is None
    # The RQ worker that quit stopped listening: nothing of it retries beside the wait.
    worker.wait_for_line("waiting 4.0 s", timeout=30)
    after_restart = worker.output.split("starting it again", 1)[1]
    assert "could not connect to Redis instance" not in after_restart

    private_redis.start()  # empty: the relay sends again what it lost
    ask(portal, trace, "after")
    wait_until(lambda: run_relay(portal) is not None and "after" in traces(trace), timeout=60)
    wait_until(lambda: run_relay(portal)["sent"] == 0 and traces(trace).count("during") >= 1)
    assert worker.popen.poll() is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _child(parent: int, marker: str) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if ppid == parent and marker in command:
            return int(pid)
    return None


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.decode().partition("=") for item in f.read().split(b"\0") if item]
    return {name: value for name, _, value in pairs}


def test_serve_restarts_a_killed_worker_and_keeps_the_others(app, processes):
    serve = processes.serve(
        _free_port(), STRIPE_SECRET_KEY="sk_test_reliability", BUILTIN_BILLING="false"
    )
    serve.wait_for_line("portal running at", timeout=90)
    worker = wait_until(lambda: _child(serve.pid, "jobs.worker"), message="the worker")
    web = _child(serve.pid, "gunicorn")
    # The web server's statements keep a generic plan each; the worker's batch work does not.
    assert _environ(web).get("DATABASE_GENERIC_PLANS") == "true"
    assert "DATABASE_GENERIC_PLANS" not in _environ(worker)
    os.kill(worker, signal.SIGKILL)
    serve.wait_for_line(r"worker exited with -9; restarting it in 1 s", timeout=30)
    serve.wait_for_line(r"worker restarted \(pid \d+\)", timeout=30)
    assert _child(serve.pid, "jobs.worker") not in (None, worker)
    assert _child(serve.pid, "gunicorn") == web  # the others kept running
    serve.signal(signal.SIGTERM)
    assert serve.wait(timeout=60) == 0


def test_the_daemon_relays_a_job_asked_for_while_redis_was_down(
    app, make_app, processes, private_redis, tmp_path
):
    trace = tmp_path / "trace"
    portal = make_app(RQ_ASYNC=True, REDIS_URL=private_redis.url, **MEMORY_LIMITS)
    ask(portal, trace, "while-down")  # commits; Redis does not answer
    private_redis.start()
    env = {"REDIS_URL": private_redis.url, "BUILTIN_BILLING": "false"}
    processes.worker(**env)
    daemon = processes.daemon(JOB_RELAY_SECONDS="0.5", BILLING_ENABLED="false", **env)
    daemon.wait_for_line("leading the schedule", timeout=60)
    wait_until(lambda: "while-down" in traces(trace), timeout=60, message="the relayed job")

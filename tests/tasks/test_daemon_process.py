"""The billing daemon as real processes (`flask billing daemon`, `python -m jobs.worker`)
against the test database and Redis, with a fast heartbeat (0.5 s) and a short lease (3 s).
The schedule's clock is pinned with --now to half past an hour in the past, so a test never
crosses an hour boundary; leases and heartbeats use the real clock. Metering is real: a VM
with 2 cores bills 2000 milli-core-seconds per second, so the usage rollups show exactly
which hours were metered, and how often."""

from __future__ import annotations

import signal
import socket
import urllib.request
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import (
    DaemonStatus,
    JobRun,
    ScheduledJob,
    SchedulerLease,
    UsageDaily,
    User,
    utcnow,
)
from portal.services.metering import deployments, rollups
from portal.tasks import queues, scheduler
from tests.support.processes import query, wait_until

pytestmark = pytest.mark.redis

NOW = "2026-03-02T12:30:00Z"
HEARTBEAT, LEASE = timedelta(seconds=0.5), timedelta(seconds=3)
CPU_MS_PER_HOUR = 2000 * 3600  # 2 cores


def hour(h: int) -> datetime:
    return datetime(2026, 3, 2, h, tzinfo=UTC)


def deploy_vm(app, make_user, start: datetime) -> None:
    user = make_user()
    with app.app_context():
        deployments.create_deployment(
            external_id="vm-1",
            user=db.session.get(User, user.id),
            kind="vm",
            started_at=start,
            cpu_cores=2,
            memory_gb=4,
            storage_gb=0,
        )
        db.session.commit()
        db.session.remove()


def set_mark(app, through: datetime) -> None:
    """As if an earlier scheduler had scheduled calculate-usage up to ``through``."""

    def write():
        row = db.session.get(ScheduledJob, "calculate-usage")
        if row is None:
            db.session.add(
                ScheduledJob(
                    name="calculate-usage", scheduled_through=through, epoch=0, updated_at=utcnow()
                )
            )
        else:
            row.scheduled_through = through
        db.session.commit()

    query(app, write)


def runs(app) -> list[tuple[str, str, str]]:
    """The runs of calculate-usage (other capabilities schedule their own jobs too)."""
    return query(
        app,
        lambda: [
            (r.job_id, r.status, r.scheduled_by)
            for r in db.session.scalars(
                select(JobRun)
                .where(JobRun.job_name == "calculate-usage")
                .order_by(JobRun.due_at, JobRun.id)
            )
        ],
    )


def statuses(app) -> dict[str, tuple[str, str, str]]:
    return query(
        app,
        lambda: {
            r.daemon_instance_id: (r.kind, r.status, r.role)
            for r in db.session.scalars(select(DaemonStatus))
        },
    )


def lease(app) -> SchedulerLease | None:
    def load():
        row = db.session.get(SchedulerLease, scheduler.LEASE_NAME)
        if row is not None:
            db.session.expunge(row)
        return row

    return query(app, load)


def metered_cpu_ms(app) -> int:
    return query(
        app, lambda: db.session.scalar(select(func.coalesce(func.sum(UsageDaily.cpu_ms), 0)))
    )


def instance_of(app, pid: int) -> str:
    return wait_until(
        lambda: next((i for i in statuses(app) if i.endswith(f"-{pid}")), None),
        message=f"the status row of process {pid}",
    )


def meter_jobs_waiting(redis_url: str) -> list[str]:
    return Queue("metering", connection=Redis.from_url(redis_url)).job_ids


def work_metering_queue(async_app) -> None:
    with async_app.app_context():
        queue = queues.get_queue("metering")
        assert SimpleWorker([queue], connection=queue.connection).work(burst=True)
        db.session.remove()


def test_two_daemons_at_once_one_leads_and_every_hour_is_metered_once(
    app, async_app, processes, make_user, redis_url
):
    deploy_vm(app, make_user, hour(6))
    set_mark(app, hour(6))  # six hours are due: 07:00 ... 12:00
    a = processes.daemon("--now", NOW, name="a", JOB_RELAY_SECONDS="0.5")
    b = processes.daemon("--now", NOW, name="b", JOB_RELAY_SECONDS="0.5")
    wait_until(lambda: len(runs(app)) >= 6, message="six runs")
    ids = {instance_of(app, a.pid), instance_of(app, b.pid)}
    # Both keep beating for a while; nothing more is scheduled, nobody else leads.
    seen = {
        i: query(
            app,
            lambda i=i: db.session.scalar(
                select(DaemonStatus.heartbeat_at).where(DaemonStatus.daemon_instance_id == i)
            ),
        )
        for i in ids
    }
    wait_until(
        lambda: all(
            query(
                app,
                lambda i=i: db.session.scalar(
                    select(DaemonStatus.heartbeat_at).where(DaemonStatus.daemon_instance_id == i)
                ),
            )
            > seen[i] + 4 * HEARTBEAT
            for i in ids
        ),
        message="both daemons beating",
    )

    roles = {i: statuses(app)[i][2] for i in ids}
    [leader] = [i for i, role in roles.items() if role == "leader"]
    assert sorted(roles.values()) == ["leader", "standby"]
    assert lease(app).holder == leader
    assert runs(app) == [(f"meter:2026-03-02T{h:02d}", "queued", leader) for h in range(7, 13)]
    assert sorted(meter_jobs_waiting(redis_url)) == [
        f"meter_2026-03-02T{h:02d}" for h in range(7, 13)
    ]

    work_metering_queue(async_app)
    # Each run ends with its chunks: the leader's relay and sweep see them done.
    wait_until(lambda: [s for _, s, _ in runs(app)] == ["succeeded"] * 6, message="the runs' ends")
    assert metered_cpu_ms(app) == 6 * CPU_MS_PER_HOUR
    assert query(app, rollups.audit_usage) == []

    for process in (a, b):
        process.signal(signal.SIGTERM)
    assert (a.wait(), b.wait()) == (0, 0)
    assert {s for _, s, _ in statuses(app).values()} == {"stopped"}


def test_sigkill_of_the_leader_the_standby_leads_within_lease_and_one_heartbeat(
    app, processes, redis_url
):
    a = processes.daemon("--now", NOW, name="a")
    a_id = instance_of(app, a.pid)
    wait_until(lambda: (lease(app) or SchedulerLease()).holder == a_id, message="a leads")
    b = processes.daemon("--now", NOW, name="b")
    b_id = instance_of(app, b.pid)
    wait_until(lambda: statuses(app)[b_id][2] == "standby", message="b stands by")

    a.kill()  # SIGKILL: no chance to release the lease or say goodbye
    held = lease(app)  # as a last renewed it
    assert (held.holder, held.epoch) == (a_id, 1)
    taken = wait_until(
        lambda: (lambda row: row if row.holder == b_id else None)(lease(app)),
        timeout=60,
        message="b takes the lease over",
    )
    assert taken.epoch == 2
    assert taken.acquired_at >= held.expires_at  # not before a's lease ran out ...
    # ... and at the first heartbeat after it (allowing for a busy machine)
    assert taken.acquired_at <= held.expires_at + HEARTBEAT + timedelta(seconds=5)
    wait_until(lambda: statuses(app)[b_id][2] == "leader", message="b reports leading")

    # Nothing was scheduled twice: a's run of 12:00 is the only one.
    assert runs(app) == [("meter:2026-03-02T12", "queued", a_id)]
    assert meter_jobs_waiting(redis_url) == ["meter_2026-03-02T12"]
    assert statuses(app)[a_id][1] == "running"  # killed: its row just stops beating
    b.signal(signal.SIGINT)
    assert b.wait() == 0


def test_sigterm_stops_gracefully_and_hands_the_lease_back(app, processes):
    daemon = processes.daemon("--now", NOW)
    me = instance_of(app, daemon.pid)
    wait_until(lambda: (lease(app) or SchedulerLease()).holder == me, message="leading")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert statuses(app)[me] == ("daemon", "stopped", "standby")
    assert lease(app).holder is None
    daemon.wait_for_line(r"\[INFO\] jobs\.daemon: SIGTERM received: finishing the current cycle")
    daemon.wait_for_line(rf"\[INFO\] jobs\.daemon: billing daemon {me} stopped")


@pytest.mark.postgres
def test_sigterm_during_a_cycle_lets_the_cycle_and_its_runs_complete(
    app, processes, make_user, database_url
):
    deploy_vm(app, make_user, hour(6))
    # RQ_ASYNC off: the daemon runs the jobs it schedules itself, inside its cycle.
    daemon = processes.daemon("--now", NOW, RQ_ASYNC="false")
    me = instance_of(app, daemon.pid)
    wait_until(
        lambda: runs(app) == [("meter:2026-03-02T12", "succeeded", me)], message="the first run"
    )
    assert metered_cpu_ms(app) == 6 * CPU_MS_PER_HOUR  # 06:00-12:00 in one run

    with (
        psycopg.connect(database_url) as holder,
        psycopg.connect(database_url, autocommit=True) as watch,
    ):
        # Hold the schedule's row: the daemon's next cycle waits for it mid-way.
        holder.execute(
            "UPDATE scheduled_jobs SET scheduled_through = %s WHERE name = 'calculate-usage'",
            (hour(9),),
        )
        wait_until(
            lambda: (
                watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                ).fetchone()[0]
                > 0
            ),
            message="the daemon's cycle waiting on the row lock",
        )
        daemon.signal(signal.SIGTERM)
        daemon.wait_for_line("SIGTERM received: finishing the current cycle", timeout=30)
        holder.commit()  # the cycle goes on: 10 and 11 are due again (12 has its run)
    assert daemon.wait() == 0, daemon.output
    assert runs(app) == [
        ("meter:2026-03-02T10", "succeeded", me),
        ("meter:2026-03-02T11", "succeeded", me),
        ("meter:2026-03-02T12", "succeeded", me),
    ]
    # Metering's own marks make the runs of 10 and 11 harmless: still six hours, once each.
    assert metered_cpu_ms(app) == 6 * CPU_MS_PER_HOUR
    assert statuses(app)[me][1] == "stopped"
    out = daemon.output
    assert (
        out.index("SIGTERM received")
        < out.index("enqueued meter:2026-03-02T10")
        < out.index(f"billing daemon {me} stopped")
    )


def test_down_for_three_hours_then_up_each_missed_hour_is_metered_once(app, processes, make_user):
    deploy_vm(app, make_user, hour(11))
    first = processes.daemon("--now", NOW, "--once", RQ_ASYNC="false")
    assert first.wait() == 0, first.output
    assert [j for j, _, _ in runs(app)] == ["meter:2026-03-02T12"]
    assert metered_cpu_ms(app) == 1 * CPU_MS_PER_HOUR

    # Three hours later (15:30) the daemon comes back.
    back = processes.daemon("--now", "2026-03-02T15:30:00Z", "--once", RQ_ASYNC="false")
    assert back.wait() == 0, back.output
    assert [(j, s) for j, s, _ in runs(app)] == [
        (f"meter:2026-03-02T{h}", "succeeded") for h in (12, 13, 14, 15)
    ]
    assert metered_cpu_ms(app) == 4 * CPU_MS_PER_HOUR

    again = processes.daemon("--now", "2026-03-02T15:45:00Z", "--once", RQ_ASYNC="false")
    assert again.wait() == 0, again.output
    assert len(runs(app)) == 4
    assert metered_cpu_ms(app) == 4 * CPU_MS_PER_HOUR
    assert query(app, rollups.audit_usage) == []


def test_built_in_billing_runs_when_no_daemon_beats_and_pauses_when_one_is_back(app, processes):
    # A daemon that died two hours ago; the threshold is 0.1 minutes (6 s) here.
    query(
        app,
        lambda: (
            db.session.add(
                DaemonStatus(
                    daemon_instance_id="old-host-1",
                    kind="daemon",
                    hostname="old-host",
                    pid=1,
                    status="running",
                    role="leader",
                    heartbeat_at=utcnow() - timedelta(hours=2),
                )
            ),
            db.session.commit(),
        ),
    )
    threshold = {"BUILTIN_BILLING_AFTER_MINUTES": "0.1"}
    worker = processes.worker("metering", **threshold)

    def builtin() -> tuple[str, tuple[str, str, str]] | None:
        return next(((i, s) for i, s in statuses(app).items() if s[0] == "builtin"), None)

    builtin_id, _ = wait_until(builtin, message="the built-in scheduler's status row")
    wait_until(lambda: statuses(app)[builtin_id][2] == "leader", message="built-in leads")
    wait_until(
        lambda: runs(app) and all(s == "succeeded" for _, s, _ in runs(app)),
        message="the built-in scheduler's run, done by the worker",
    )
    assert {by for _, _, by in runs(app)} == {builtin_id}

    daemon = processes.daemon(**threshold)
    daemon_id = instance_of(app, daemon.pid)
    wait_until(lambda: statuses(app)[builtin_id][2] == "paused", message="built-in pauses")
    wait_until(
        lambda: (lease(app) or SchedulerLease()).holder == daemon_id, message="the daemon leads"
    )
    worker.wait_for_line(r"a billing daemon is alive: built-in billing pauses")

    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    wait_until(
        lambda: statuses(app)[builtin_id][2] == "leader",
        timeout=60,
        message="built-in billing takes over again",
    )
    worker.wait_for_line(r"no billing daemon heartbeat for .*: built-in billing takes over")

    job_ids = [j for j, _, _ in runs(app)]
    assert len(job_ids) == len(set(job_ids))
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output
    assert statuses(app)[builtin_id][1] == "stopped"


def test_a_bad_now_is_refused(app, processes):
    bad = processes.daemon("--now", "yesterday")
    future = processes.daemon("--now", "2999-01-01T00:00Z")
    assert (bad.wait(), future.wait()) == (1, 1)
    assert "error: --now must be an ISO 8601 time, not 'yesterday'" in bad.output
    assert "error: --now must not be in the future, not '2999-01-01T00:00Z'" in future.output
    assert runs(app) == []


def test_serve_runs_the_daemon_beside_the_web_server_and_the_worker(app, processes):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve = processes.serve(port)
    serve.wait_for_line(r"portal running at http://127\.0\.0\.1:\d+/")

    def kinds() -> dict[str, str]:
        return {kind: role for kind, _, role in statuses(app).values()}

    wait_until(lambda: kinds().get("daemon") == "leader", message="the daemon leads")
    wait_until(lambda: kinds().get("builtin") == "paused", message="built-in billing pauses")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/auth/login", timeout=30) as page:
        assert page.status == 200

    serve.signal(signal.SIGINT)  # Ctrl+C
    assert serve.wait() == 0, serve.output
    assert {state for _, state, _ in statuses(app).values()} == {"stopped"}

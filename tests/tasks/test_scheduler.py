"""The schedule in one process: schedulers stepped by hand on an injected clock. Jobs run
synchronously (RQ_ASYNC off) as each cycle commits, so a test job's executions are the
proof that a slot ran once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from sqlalchemy import func, select, update

from portal.config import BillingSettings, ConfigError, build_config
from portal.extensions import db
from portal.models import (
    DaemonStatus,
    JobRequest,
    JobRun,
    ScheduledJob,
    SchedulerKind,
    SchedulerLease,
    SchedulerRole,
    utcnow,
)
from portal.tasks import queues, requests, scheduler
from portal.tasks.daemon import Scheduler
from tests.support.processes import query
from tests.support.schedule import BASE
from tests.tasks import fake_jobs

pytestmark = pytest.mark.redis


def step(app, *schedulers: Scheduler) -> None:
    for sched in schedulers:
        with app.app_context():
            sched.step()
            db.session.remove()


def executions(app) -> list[str]:
    return query(app, fake_jobs.executions)


def runs(app) -> list[tuple[str, str, str]]:
    return query(
        app,
        lambda: [
            (r.job_id, r.status, r.scheduled_by)
            for r in db.session.scalars(select(JobRun).order_by(JobRun.id))
        ],
    )


def lease(app) -> tuple[str | None, int]:
    return query(
        app,
        lambda: (lambda row: (row.holder, row.epoch))(
            db.session.get(SchedulerLease, scheduler.LEASE_NAME)
        ),
    )


def status(app, instance: str) -> DaemonStatus:
    def load():
        row = db.session.scalar(
            select(DaemonStatus).where(DaemonStatus.daemon_instance_id == instance)
        )
        db.session.expunge(row)
        return row

    return query(app, load)


# -- due times -------------------------------------------------------------------------------


def test_due_times_slot_names_and_the_metering_argument():
    hourly = scheduler.PeriodicJob("x", "0 * * * *", "f", "default", "x")
    assert hourly.latest_due(BASE) == datetime(2026, 3, 2, 12, tzinfo=UTC)
    assert hourly.latest_due(BASE.replace(minute=0)) == BASE.replace(minute=0)
    assert hourly.due_after(BASE - timedelta(hours=3), BASE) == [
        datetime(2026, 3, 2, h, tzinfo=UTC) for h in (10, 11, 12)
    ]
    assert scheduler.slot_name(BASE.replace(minute=0)) == "2026-03-02T12"
    quarter = scheduler.PeriodicJob("q", "*/15 * * * *", "f", "default", "q")
    assert [
        scheduler.slot_name(d) for d in quarter.due_after(BASE - timedelta(minutes=31), BASE)
    ] == ["2026-03-02T12", "2026-03-02T12:15", "2026-03-02T12:30"]

    config = {"BILLING": BillingSettings(usage_calculation_interval="*/30 * * * *")}
    [usage] = [j for j in scheduler.periodic_jobs(config) if j.name == "calculate-usage"]
    assert (usage.cron, usage.func, usage.queue) == (
        "*/30 * * * *",
        "metering.meter_due",
        "metering",
    )
    # At 18:00 the hour 17-18 is complete: meter_due meters up to the 18:00 boundary.
    assert usage.args(datetime(2026, 11, 21, 18, tzinfo=UTC)) == ("2026-11-21T18",)
    assert usage.job_id("2026-11-21T18") == "meter:2026-11-21T18"
    off = {"BILLING": BillingSettings(enabled=False)}
    assert "calculate-usage" not in [j.name for j in scheduler.periodic_jobs(off)]


def test_the_lease_must_outlast_the_heartbeat(tmp_path):
    env = {"SECRET_KEY": "x" * 32, "DAEMON_HEARTBEAT_SECONDS": "60", "DAEMON_LEASE_SECONDS": "60"}
    with pytest.raises(ConfigError, match="DAEMON_LEASE_SECONDS"):
        build_config(str(tmp_path), environ=env)
    env["DAEMON_LEASE_SECONDS"] = "0.5"
    with pytest.raises(ConfigError, match="DAEMON_LEASE_SECONDS"):
        build_config(str(tmp_path), environ=env)


# -- one scheduler ---------------------------------------------------------------------------


def test_the_first_cycle_runs_the_latest_due_time_and_later_cycles_catch_up_once_each(
    app, fast_app, counting_job, clock
):
    daemon = Scheduler(fast_app, clock=clock, instance="host-1")
    step(fast_app, daemon)
    assert executions(fast_app) == ["2026-03-02T12"]
    step(fast_app, daemon)
    clock.advance(minutes=20)
    step(fast_app, daemon)
    assert executions(fast_app) == ["2026-03-02T12"]

    clock.advance(hours=3)  # down for three hours (15:50 now)
    step(fast_app, daemon)
    assert executions(fast_app) == [
        "2026-03-02T12",
        "2026-03-02T13",
        "2026-03-02T14",
        "2026-03-02T15",
    ]
    assert runs(fast_app) == [
        (f"count:2026-03-02T{h}", "succeeded", "host-1") for h in (12, 13, 14, 15)
    ]
    row = status(fast_app, "host-1")
    assert (row.kind, row.status, row.role, row.lease_epoch) == ("daemon", "running", "leader", 1)
    # The seed's figures come from the job's return value.
    assert (row.last_run_success, row.instances_billed, row.total_amount_minor, row.currency) == (
        True,
        2,
        150,
        "USD",
    )


def test_a_mark_moved_back_by_hand_schedules_no_slot_twice(app, fast_app, counting_job, clock):
    daemon = Scheduler(fast_app, clock=clock, instance="host-1")
    step(fast_app, daemon)
    clock.advance(hours=2)
    step(fast_app, daemon)
    assert len(executions(fast_app)) == 3

    def rewind():
        db.session.execute(update(ScheduledJob).values(scheduled_through=BASE - timedelta(hours=5)))
        db.session.commit()

    query(fast_app, rewind)
    step(fast_app, daemon)
    # 08..11 are new; 12..14 already had their runs (UNIQUE job_name, slot).
    assert sorted(executions(fast_app)) == [f"2026-03-02T{h:02d}" for h in range(8, 15)]
    assert len(runs(fast_app)) == 7


def test_a_failing_run_is_recorded_and_the_daemon_keeps_going(
    app, fast_app, only_jobs, clock, caplog
):
    only_jobs(
        {
            "name": "flaky",
            "cron": "0 * * * *",
            "func": "tests.tasks.fake_jobs.flaky",
            "queue": "default",
            "id_prefix": "flaky",
            "args": lambda due: (due.strftime("%Y-%m-%dT%H"),),
        }
    )
    query(fast_app, lambda: queues.redis_connection().set(fake_jobs.FAIL_FLAG, "1"))
    daemon = Scheduler(fast_app, clock=clock, instance="host-1")
    step(fast_app, daemon)
    [(job_id, state, _)] = runs(fast_app)
    assert (job_id, state) == ("flaky:2026-03-02T12", "failed")
    assert "flaky:2026-03-02T12 failed: RuntimeError: the test job failed on purpose" in caplog.text
    run = query(fast_app, lambda: db.session.scalar(select(JobRun)).error)
    assert run == "RuntimeError: the test job failed on purpose at 2026-03-02T12"
    row = status(fast_app, "host-1")
    assert (row.status, row.last_run_success) == ("running", False)
    assert query(
        fast_app, lambda: FailedJobRegistry(queue=queues.get_queue("default")).get_job_ids()
    ) == ["flaky_2026-03-02T12"]

    query(fast_app, lambda: queues.redis_connection().delete(fake_jobs.FAIL_FLAG))
    clock.advance(hours=1)
    step(fast_app, daemon)
    assert [state for _, state, _ in runs(fast_app)] == ["failed", "succeeded"]
    assert status(fast_app, "host-1").last_run_success is True


def test_runs_committed_while_redis_is_down_wait_as_requests_and_a_later_cycle_enqueues_them(
    app, fast_app, counting_job, clock, monkeypatch, caplog
):
    real_enqueue = queues.enqueue

    def redis_down(*args, **kwargs):
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(queues, "enqueue", redis_down)
    daemon = Scheduler(fast_app, clock=clock, instance="host-1")
    step(fast_app, daemon)
    # The commit stands; the run's job request waits for Redis instead of failing the cycle.
    assert "Redis is unavailable (Redis is down): 1 job request(s) wait" in caplog.text
    row = status(fast_app, "host-1")
    assert (row.status, row.last_error) == ("running", None)
    # Queued durably: its job request is in the database.
    assert runs(fast_app) == [("count:2026-03-02T12", "queued", "host-1")]
    assert executions(fast_app) == []
    requested = query(
        fast_app, lambda: [(r.dedupe_key, r.status) for r in db.session.scalars(select(JobRequest))]
    )
    assert requested == [("count:2026-03-02T12", "requested")]

    monkeypatch.setattr(queues, "enqueue", real_enqueue)
    clock.advance(seconds=2)  # older than one heartbeat: the sweep enqueues it again
    step(fast_app, daemon)
    step(fast_app, daemon)
    assert executions(fast_app) == ["2026-03-02T12"]
    assert runs(fast_app) == [("count:2026-03-02T12", "succeeded", "host-1")]
    row = status(fast_app, "host-1")
    assert (row.status, row.last_error) == ("running", None)


# -- several schedulers ----------------------------------------------------------------------


def test_two_schedulers_one_leader_every_slot_once(app, fast_app, counting_job, clock):
    a = Scheduler(fast_app, clock=clock, instance="host-a")
    b = Scheduler(fast_app, clock=clock, instance="host-b")
    for _ in range(4):
        step(fast_app, a, b)
        step(fast_app, b, a)
        clock.advance(hours=1)
    assert executions(fast_app) == [f"2026-03-02T{h}" for h in (12, 13, 14, 15)]
    assert {by for _, _, by in runs(fast_app)} == {"host-a"}
    assert (a.role, b.role) == (SchedulerRole.LEADER, SchedulerRole.STANDBY)
    assert lease(fast_app) == ("host-a", 1)


def test_a_standby_takes_over_an_expired_lease_and_the_stale_leader_is_refused(
    app, fast_app, counting_job, clock
):
    a = Scheduler(fast_app, clock=clock, instance="host-a")
    b = Scheduler(fast_app, clock=clock, instance="host-b")
    step(fast_app, a, b)
    assert lease(fast_app) == ("host-a", 1)

    clock.advance(hours=1, seconds=6)  # a hangs: its 5 s lease expires unrenewed
    step(fast_app, b)
    assert lease(fast_app) == ("host-b", 2)
    assert runs(fast_app) == [
        ("count:2026-03-02T12", "succeeded", "host-a"),
        ("count:2026-03-02T13", "succeeded", "host-b"),
    ]

    # a wakes up still believing it leads with epoch 1: every write it tries is refused.
    def stale_writes():
        jobs = scheduler.periodic_jobs()
        with pytest.raises(scheduler.LeaseLost):
            scheduler.claim_due_runs(
                jobs,
                holder="host-a",
                epoch=1,
                now=clock(),
                ttl=timedelta(seconds=5),
                until=clock() + timedelta(hours=3),
            )
        db.session.rollback()
        mark = db.session.get(ScheduledJob, "count")
        assert not scheduler.advance_mark(
            "count",
            from_=mark.scheduled_through,
            to=mark.scheduled_through + timedelta(hours=3),
            epoch=1,
            now=clock(),
        )
        db.session.rollback()

    query(fast_app, stale_writes)
    step(fast_app, a)
    assert a.role == SchedulerRole.STANDBY and a.epoch is None
    clock.advance(hours=1)
    step(fast_app, b, a)  # b renews first: a keeps standing by
    assert executions(fast_app) == ["2026-03-02T12", "2026-03-02T13", "2026-03-02T14"]
    assert runs(fast_app)[-1] == ("count:2026-03-02T14", "succeeded", "host-b")


def test_a_graceful_stop_hands_the_lease_over_at_once(app, fast_app, counting_job, clock):
    a = Scheduler(fast_app, clock=clock, instance="host-a")
    b = Scheduler(fast_app, clock=clock, instance="host-b")
    step(fast_app, a, b)
    with fast_app.app_context():
        a.shutdown()
    assert lease(fast_app) == (None, 1)
    assert status(fast_app, "host-a").status == "stopped"
    step(fast_app, b)  # no waiting for the lease to expire
    assert lease(fast_app) == ("host-b", 2)
    assert executions(fast_app) == ["2026-03-02T12"]


def test_built_in_billing_runs_without_a_daemon_and_pauses_while_one_is_alive(
    app, fast_app, counting_job, clock
):
    builtin = Scheduler(fast_app, kind=SchedulerKind.BUILTIN, clock=clock, instance="worker-1")
    step(fast_app, builtin)  # no daemon has ever beaten
    assert builtin.role == SchedulerRole.LEADER
    assert executions(fast_app) == ["2026-03-02T12"]

    daemon = Scheduler(fast_app, clock=clock, instance="daemon-1")
    step(fast_app, daemon)  # stands by: the built-in scheduler holds the lease
    assert daemon.role == SchedulerRole.STANDBY
    step(fast_app, builtin)  # sees the daemon's heartbeat: pauses and lets go of the lease
    assert builtin.role == SchedulerRole.PAUSED and lease(fast_app) == (None, 1)
    clock.advance(hours=1)
    step(fast_app, daemon, builtin)
    assert daemon.role == SchedulerRole.LEADER and builtin.role == SchedulerRole.PAUSED
    assert status(fast_app, "worker-1").role == "paused"

    clock.advance(minutes=9)  # the daemon dies; 9 minutes is within the 10-minute threshold
    step(fast_app, builtin)
    assert builtin.role == SchedulerRole.PAUSED
    clock.advance(minutes=2)  # now 11 minutes without a daemon heartbeat
    step(fast_app, builtin)
    assert builtin.role == SchedulerRole.LEADER and lease(fast_app) == ("worker-1", 3)
    clock.advance(hours=1)
    step(fast_app, builtin)

    step(fast_app, daemon)  # the daemon is back: the lease is held, it stands by ...
    step(fast_app, builtin)  # ... and built-in billing pauses again
    clock.advance(hours=1)
    step(fast_app, daemon, builtin)
    assert runs(fast_app) == [
        ("count:2026-03-02T12", "succeeded", "worker-1"),
        ("count:2026-03-02T13", "succeeded", "daemon-1"),
        ("count:2026-03-02T14", "succeeded", "worker-1"),
        ("count:2026-03-02T15", "succeeded", "daemon-1"),
    ]
    assert executions(fast_app) == [f"2026-03-02T{h}" for h in (12, 13, 14, 15)]


def test_the_sweep_enqueues_a_lost_run_again_and_fails_a_run_whose_worker_died(
    app, async_app, counting_job, clock
):
    later, grace = clock() + timedelta(minutes=2), timedelta(minutes=1)
    with async_app.app_context():
        lost, _ = scheduler.request_run("count", requested_by=None, request_key="a", now=clock())
        dead, _ = scheduler.request_run("count", requested_by=None, request_key="b", now=clock())
        db.session.commit()  # both wait in Redis now
        scheduler.mark_enqueued([lost.id, dead.id], now=clock())
        db.session.commit()
        connection = queues.redis_connection()
        # Redis lost one job; the work horse running the other died and RQ gave up on it.
        Job.fetch(queues.rq_job_id(lost.job_id), connection=connection).delete()
        db.session.execute(update(JobRun).where(JobRun.id == dead.id).values(status="running"))
        db.session.commit()
        Job.fetch(queues.rq_job_id(dead.job_id), connection=connection).set_status(JobStatus.FAILED)

        again = scheduler.sweep_runs(now=later, grace=grace)
        assert [r.id for r in again] == [lost.id]
        db.session.commit()
        assert queues.get_queue("default").job_ids.count(queues.rq_job_id(lost.job_id)) == 1
        failed = scheduler.get_run(dead.id)
        assert failed.status == "failed"
        assert failed.error == "the worker running it was lost (RQ status failed)"
        db.session.remove()


# -- one clock -------------------------------------------------------------------------------


def test_a_daemon_three_hours_fast_does_not_lead_and_schedules_nothing_in_the_future(
    app, fast_app, counting_job, caplog
):
    """Both read the database's time; the one whose own clock is 3 h fast refuses to lead,
    says why, and cannot take the lease the other holds."""
    leader = Scheduler(fast_app, instance="host-ok")
    fast = Scheduler(
        fast_app, instance="host-fast", local_clock=lambda: utcnow() + timedelta(hours=3)
    )
    step(fast_app, leader)
    step(fast_app, fast)
    assert lease(fast_app)[0] == "host-ok"
    row = status(fast_app, "host-fast")
    assert (row.status, row.role) == ("error", "standby")
    assert "clock differs from the database's by +10800 s" in row.last_error
    assert "not leading" in caplog.text

    # Even once the leader is gone and its lease expired, the fast one does not lead.
    query(fast_app, lambda: (leader._release(utcnow()), db.session.commit()))
    step(fast_app, fast)
    assert lease(fast_app)[0] is None
    latest = query(fast_app, lambda: db.session.scalar(select(func.max(JobRun.due_at))))
    assert latest is not None and latest <= utcnow()


def test_a_run_ends_with_its_chunks_failed_when_one_gave_up_and_a_retry_reopens_it(
    app, async_app, counting_job, clock
):
    later, grace = clock() + timedelta(minutes=2), timedelta(minutes=1)
    with async_app.app_context():
        run, _ = scheduler.request_run("count", requested_by=None, request_key="c", now=clock())
        db.session.execute(update(JobRun).where(JobRun.id == run.id).values(status="running"))
        with requests.for_run(run.id):  # what a run's job asks for are its chunks
            chunks = [
                requests.add(
                    "default", "tests.tasks.fake_jobs.record", [n], dedupe_key=None, now=clock()
                )
                for n in range(3)
            ]
        db.session.commit()

        def chunk_status(ids, status, error=None):
            db.session.execute(
                update(JobRequest)
                .where(JobRequest.id.in_(ids))
                .values(status=status, last_error=error)
            )
            db.session.commit()

        chunk_status(chunks[:2], "done")
        scheduler.sweep_runs(now=later, grace=grace)
        db.session.commit()
        assert scheduler.get_run(run.id).status == "running"  # one chunk still under way

        chunk_status(chunks[2:], "failed", "chunk 2: database is locked")
        scheduler.sweep_runs(now=later, grace=grace)
        db.session.commit()
        failed = scheduler.get_run(run.id)
        assert failed.status == "failed"
        assert failed.error.startswith("1 of 3 chunks failed on every attempt")
        assert failed.error.endswith("chunk 2: database is locked")
        assert (failed.figures["chunks_done"], failed.figures["chunks_failed"]) == (2, 1)

        assert requests.retry_failed(task=None, now=later) == 1  # Retry all failed
        db.session.commit()
        assert scheduler.get_run(run.id).status == "running"
        chunk_status(chunks[2:], "done")
        scheduler.sweep_runs(now=later, grace=grace)
        db.session.commit()
        assert scheduler.get_run(run.id).status == "succeeded"
        db.session.remove()

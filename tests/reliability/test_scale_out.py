"""Work spread over processes: three RQ workers and two daemons at once, on one PostgreSQL
and one Redis, meter several hours (runs asked for together, their chunks shared among the
workers) and invoice a period for a few hundred users. Every hour is metered once (the
rollups equal a recomputation from the intervals) and every user invoiced once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import Invoice, JobRequest, JobRun, MeterMark, User, utcnow
from portal.services import accounts
from portal.services.metering import deployments, rollups
from portal.services.wallet.reconcile import find_discrepancies
from portal.tasks import scheduler
from tests.support.invoices import SEP
from tests.support.processes import query, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.postgres]  # many processes on one database

USERS = 240
CHUNK = 30  # users a chunk: eight chunks to share among the workers
HOURS = 5  # metering runs, one per hour, asked for at once


def make_usage(portal) -> None:
    with portal.app_context():
        for n in range(USERS):
            user = accounts.create_user(email=f"scale{n}@example.com", password=None, name="")
            deployments.create_deployment(
                external_id=f"vm-{n}",
                user=user,
                kind="vm",
                name="vm",
                cpu_cores=1 + n % 4,
                memory_gb=n % 3,
                storage_gb=10,
                started_at=SEP[0] + timedelta(minutes=7 * (n % 9)),
            )
        db.session.commit()
        db.session.remove()


def request_runs(portal, job: str, args: list[list[str]]) -> list[int]:
    """Run now, once per ``args``: what Admin › Jobs does; the daemons send them on."""

    def ask() -> list[int]:
        ids = []
        for n, run_args in enumerate(args):
            run, _ = scheduler.request_run(
                job, requested_by=None, request_key=f"{job}-{n}", now=utcnow()
            )
            run.args = run_args
            ids.append(run.id)
        db.session.commit()
        return ids

    return query(portal, ask)


def wait_for_runs(portal, run_ids: list[int], processes_: list, timeout: float) -> list[str]:
    """The runs' statuses once all have ended; on a timeout, what the processes said."""
    try:
        return wait_until(
            lambda: ended(portal, run_ids), timeout=timeout, interval=0.5, message="the runs"
        )
    except AssertionError:
        state = query(
            portal,
            lambda: (
                db.session.execute(select(JobRun.id, JobRun.status, JobRun.error)).all(),
                db.session.execute(
                    select(JobRequest.task, JobRequest.status, JobRequest.last_error)
                ).all(),
            ),
        )
        tails = "\n".join(f"--- {p.name}\n{p.output[-3000:]}" for p in processes_)
        raise AssertionError(f"runs not ended: {state}\n{tails}") from None


def ended(portal, run_ids: list[int]) -> list[str] | None:
    statuses = query(
        portal,
        lambda: list(db.session.scalars(select(JobRun.status).where(JobRun.id.in_(run_ids)))),
    )
    return statuses if all(s in ("succeeded", "failed") for s in statuses) else None


def test_three_workers_and_two_daemons_meter_each_hour_and_invoice_each_user_once(
    app, make_app, processes, private_redis
):
    private_redis.start()
    settings = {
        "REDIS_URL": private_redis.url,
        "BUILTIN_BILLING": "false",
        "METER_CHUNK_USERS": str(CHUNK),
        "JOB_RETRY_SECONDS": "0.5",
        "BILLING_ENABLED": "false",  # no scheduled run beside the ones asked for here
    }
    portal = make_app(
        RQ_ASYNC=True,
        REDIS_URL=private_redis.url,
        METER_CHUNK_USERS=CHUNK,
        RATELIMIT_STORAGE_URI="memory://",
    )
    make_usage(portal)
    chunks = query(portal, lambda: db.session.scalar(select(func.count()).select_from(MeterMark)))
    assert chunks == USERS // CHUNK + 1  # ids from 1: the last chunk holds one user

    workers = [
        processes.worker("default", "metering", "invoicing", name=f"worker-{n}", **settings)
        for n in range(3)
    ]
    daemons = [
        processes.daemon(name=f"daemon-{n}", JOB_RELAY_SECONDS="0.5", **settings) for n in range(2)
    ]
    for worker in workers:
        worker.wait_for_line("Listening on", timeout=90)
    wait_until(
        lambda: any("leading the schedule" in d.output for d in daemons),
        timeout=90,
        message="a daemon leading",
    )

    hours = [SEP[0] + timedelta(hours=h) for h in range(1, HOURS + 1)]
    metering = request_runs(
        portal, "calculate-usage", [[h.strftime("%Y-%m-%dT%H")] for h in reversed(hours)]
    )
    statuses = wait_for_runs(portal, metering, workers + daemons, timeout=300)
    assert statuses == ["succeeded"] * HOURS

    def metered():
        marks = set(db.session.scalars(select(MeterMark.metered_through)))
        return marks, rollups.audit_usage(), rollups.rollup_count()

    marks, problems, rows = query(portal, metered)
    assert marks == {hours[-1]}  # every chunk through the last hour...
    assert problems == []  # ...each hour in the rollups once
    assert rows == USERS

    [invoicing] = request_runs(portal, "generate-invoices", [[SEP[0].strftime("%Y-%m-%d")]])
    statuses = wait_for_runs(portal, [invoicing], workers + daemons, timeout=300)
    assert statuses == ["succeeded"]

    def invoiced():
        per_user = db.session.execute(
            select(Invoice.user_id, func.count()).group_by(Invoice.user_id)
        ).all()
        numbers = db.session.scalar(select(func.count(func.distinct(Invoice.number))))
        chunk_jobs = db.session.execute(
            select(JobRequest.status, func.count())
            .where(JobRequest.run_id == invoicing)
            .group_by(JobRequest.status)
        ).all()
        users = db.session.scalar(select(func.count()).select_from(User))
        return per_user, numbers, dict(chunk_jobs), users

    per_user, numbers, chunk_jobs, users = query(portal, invoiced)
    assert users == USERS
    assert len(per_user) == USERS and {count for _, count in per_user} == {1}
    assert numbers == USERS
    assert chunk_jobs == {"done": chunks}
    # The chunks were shared: more than one worker ran some.
    ran = [w for w in workers if "generate_chunk" in w.output or "meter_chunk" in w.output]
    assert len(ran) >= 2, "\n".join(w.output[-2000:] for w in workers)
    with portal.app_context():
        assert find_discrepancies() == []
        assert rollups.audit_usage() == []
        db.session.remove()

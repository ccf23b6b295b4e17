"""An invoice run whose fan-out Redis loses: Redis is killed after the run asked for its
chunks and comes back empty. With a real worker and the relay, every user is invoiced once,
every invoice gets its PDF and its mail, and the ledger and the usage still reconcile."""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest
from rq.job import Job
from sqlalchemy import func, select, text

from portal.extensions import db
from portal.models import Invoice, JobRequest, JobRun, OutboundEmail, User, utcnow
from portal.services.invoicing import jobs as invoicing_jobs
from portal.services.metering import deployments, rollups
from portal.services.metering.rollups import MeterMark
from portal.services.wallet.reconcile import find_discrepancies
from portal.tasks import queues, relay, runs, scheduler
from portal.tasks.queues import rq_job_id
from tests.support.invoices import SEP
from tests.support.processes import query, wait_until
from tests.support.smtp import smtp_server, smtp_sink  # noqa: F401  (fixtures)

pytestmark = pytest.mark.redis

USERS = 5


def make_usage(app, make_user) -> list[int]:
    ids = []
    for n in range(USERS):
        user = make_user(f"run{n}@example.com")
        with app.app_context():
            dep, _ = deployments.create_deployment(
                external_id=f"vm-{n}",
                user=db.session.get(User, user.id),
                kind="vm",
                name="vm",
                cpu_cores=1 + n,
                memory_gb=0,
                storage_gb=0,
                started_at=SEP[0],
            )
            deployments.delete_deployment(dep, ended_at=SEP[1])
            db.session.commit()
            db.session.remove()
        ids.append(user.id)
    return ids


def progress(app) -> dict:
    def read():
        return {
            "invoices": db.session.scalar(select(func.count()).select_from(Invoice)),
            "users": db.session.scalar(select(func.count(func.distinct(Invoice.user_id)))),
            "pdfs": db.session.scalar(
                select(func.count()).select_from(Invoice).where(Invoice.pdf_status == "ready")
            ),
            "mails sent": db.session.scalar(
                select(func.count())
                .select_from(OutboundEmail)
                .where(OutboundEmail.attachment_invoice_id.is_not(None))
                .where(OutboundEmail.status == "sent")
            ),
            "requests open": db.session.scalar(
                select(func.count())
                .select_from(JobRequest)
                .where(JobRequest.status.in_(("requested", "sent")))
            ),
        }

    return query(app, read)


def test_redis_restarted_empty_during_the_fan_out_loses_no_invoice_pdf_or_mail(
    app,
    make_app,
    make_user,
    processes,
    private_redis,
    smtp_sink,  # noqa: F811
):
    private_redis.start()
    settings = {
        "REDIS_URL": private_redis.url,
        "MAIL_SERVER": smtp_sink.host,
        "MAIL_PORT": str(smtp_sink.port),
    }
    portal = make_app(
        RQ_ASYNC=True,
        MAIL_SUPPRESS_SEND=False,
        RATELIMIT_STORAGE_URI="memory://",
        **{**settings, "MAIL_PORT": smtp_sink.port},
    )
    make_usage(app, make_user)

    def fan_out():
        return invoicing_jobs.generate_invoices(SEP[0].strftime("%Y-%m-%d"))

    assert query(portal, fan_out)["chunks"] >= 1  # the chunks went to Redis...
    assert private_redis.client().llen("rq:queue:invoicing") >= 1
    private_redis.kill()  # ...which loses them
    private_redis.start()
    assert private_redis.client().llen("rq:queue:invoicing") == 0

    processes.worker(BUILTIN_BILLING="false", **settings)

    def settled():
        query(portal, lambda: relay.relay(grace=timedelta(0)))
        state = progress(app)
        return state if state["requests open"] == 0 and state["mails sent"] == USERS else None

    state = wait_until(settled, timeout=180, interval=0.5, message="every invoice's PDF and mail")
    assert state == {
        "invoices": USERS,
        "users": USERS,
        "pdfs": USERS,
        "mails sent": USERS,
        "requests open": 0,
    }
    assert len(smtp_sink.messages) == USERS  # each mail once
    with app.app_context():
        assert find_discrepancies() == []
        assert rollups.audit_usage() == []
        db.session.remove()


def test_post_admin_invoices_with_redis_down_is_201_and_the_pdf_comes_when_redis_is_back(
    app, make_app, make_user, api, processes, private_redis
):
    portal = make_app(RQ_ASYNC=True, REDIS_URL=private_redis.url, RATELIMIT_STORAGE_URI="memory://")
    [user_id] = make_usage(app, make_user)[:1]
    token = api.token(make_user(admin=True), "admin")
    response = portal.test_client().post(
        "/api/plugins/billing/admin/invoices",
        json={"user_id": user_id, "period_start": "2026-09-01", "period_end": "2026-09-30"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.get_json()
    invoice_id = response.get_json()["id"]
    pdf_status = lambda: query(app, lambda: db.session.get(Invoice, invoice_id).pdf_status)  # noqa: E731
    assert pdf_status() == "pending"

    private_redis.start()
    processes.worker(BUILTIN_BILLING="false", REDIS_URL=private_redis.url)
    wait_until(
        lambda: (
            query(portal, lambda: relay.relay(grace=timedelta(0))) is not None
            and pdf_status() == "ready"
        ),
        timeout=120,
        interval=0.5,
        message="the PDF",
    )


def _horse(worker_pid: int) -> int | None:
    """The worker's work horse (its only child: built-in billing is off)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == worker_pid:
                    return int(pid)
        except (OSError, ValueError):
            continue
    return None


def _waiting_on_a_lock(app) -> bool:
    def read() -> bool:
        if db.engine.dialect.name != "postgresql":
            return True  # SQLite's lock is the whole database's: the chunk cannot begin
        return bool(
            db.session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        )

    return query(app, read)


def test_a_chunk_killed_mid_run_is_resumed_on_its_own_and_the_run_succeeds(
    app, make_app, make_user, processes, private_redis
):
    private_redis.start()
    portal = make_app(RQ_ASYNC=True, REDIS_URL=private_redis.url, RATELIMIT_STORAGE_URI="memory://")
    make_usage(app, make_user)

    def fan_out() -> tuple[int, JobRequest]:
        run, _ = scheduler.request_run(
            "generate-invoices", requested_by=None, request_key="killed", now=utcnow()
        )
        run.args = [SEP[0].strftime("%Y-%m-%d")]
        db.session.commit()
        runs.execute(run.id)  # the run asks for its chunk
        chunk = db.session.scalars(select(JobRequest).where(JobRequest.run_id == run.id)).one()
        # Both jobs are taken out of RQ for now: the chunk goes back once its mark is held
        # (a worker starting reads the database), the run's job when the relay finds it gone
        # (it then finds the run under way and does nothing).
        for job_id in (run.job_id, chunk.dedupe_key):
            Job.fetch(rq_job_id(job_id), connection=private_redis.client()).delete()
        db.session.expunge(chunk)
        return run.id, chunk

    run_id, chunk = query(portal, fan_out)
    run_status = lambda: query(app, lambda: db.session.get(JobRun, run_id).status)  # noqa: E731
    assert run_status() == "running"  # it asked for its chunk: not "succeeded" yet

    settings = {
        "REDIS_URL": private_redis.url,
        "BUILTIN_BILLING": "false",
        "JOB_MONITORING_SECONDS": "1",
        "JOB_RETRY_SECONDS": "0.5",
    }
    worker = processes.worker(**settings)
    worker.wait_for_line("Listening on", timeout=60)
    # A transaction holds the chunk's mark: the chunk job stops there, mid-run.
    with app.app_context():
        blocker = db.engine.connect()
        blocker.begin()
        blocker.execute(select(MeterMark).where(MeterMark.chunk == 0).with_for_update()).all()
        db.session.remove()
    try:
        with portal.app_context():
            queues.enqueue(chunk.queue, chunk.task, *chunk.args, job_id=chunk.dedupe_key)
        worker.wait_for_line(r"\(invoice_0_", timeout=60)
        horse = wait_until(lambda: _horse(worker.pid), message="the chunk's work horse")
        job_key = Job.key_for(rq_job_id(chunk.dedupe_key))
        wait_until(  # RQ has it as started (a horse killed before that never began)
            lambda: private_redis.client().hget(job_key, "status") == b"started",
            message="the chunk started",
        )
        wait_until(lambda: _waiting_on_a_lock(app), message="the chunk waiting for its mark")
        os.kill(horse, signal.SIGKILL)  # kill -9 of the worker, its horse with it
        worker.kill()
    finally:
        blocker.rollback()
        blocker.close()

    processes.worker(name="worker-2", **settings)
    daemon = processes.daemon(JOB_RELAY_SECONDS="0.5", BILLING_ENABLED="false", **settings)
    daemon.wait_for_line("leading the schedule", timeout=60)
    wait_until(lambda: run_status() != "running", timeout=90, interval=0.5, message="the run's end")

    def outcome():
        run = db.session.get(JobRun, run_id)
        chunk = db.session.scalars(select(JobRequest).where(JobRequest.run_id == run_id)).one()
        per_user = db.session.execute(
            select(Invoice.user_id, func.count()).group_by(Invoice.user_id)
        ).all()
        return run.status, run.figures["chunks_done"], chunk.status, chunk.attempts, per_user

    status, chunks_done, chunk_status, attempts, per_user = query(app, outcome)
    assert (status, chunks_done, chunk_status) == ("succeeded", 1, "done")
    assert attempts == 1  # the killed attempt, counted; the next one did the work
    assert len(per_user) == USERS and all(count == 1 for _, count in per_user)
    with app.app_context():
        assert find_discrepancies() == []
        assert rollups.audit_usage() == []
        db.session.remove()

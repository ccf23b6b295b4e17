"""With RQ_ASYNC on, jobs wait in the real Redis until a worker runs them: an in-process
SimpleWorker, and a real forking worker process (``python -m jobs.worker --burst``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from sqlalchemy import select

from portal.extensions import db
from portal.models import OutboundEmail
from portal.tasks import queues
from tests.support.app import BASE_CONFIG

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
RESET_LINK = re.compile(r"http://portal\.test/auth/reset/\S+")


@pytest.fixture(scope="module")
def mailing_app(make_app, smtp_server):  # noqa: F811
    return make_app(
        MAIL_SERVER=smtp_server.host,
        MAIL_PORT=smtp_server.port,
        RQ_ASYNC=True,
        MAIL_SUPPRESS_SEND=False,
    )


@pytest.fixture
def default_queue(app, redis_url) -> Queue:
    connection = Redis.from_url(redis_url)
    yield Queue("default", connection=connection)
    connection.close()


def mail_row(app) -> tuple[int, str]:
    with app.app_context():
        row = db.session.scalars(select(OutboundEmail)).one()
        try:
            return row.id, row.status
        finally:
            db.session.remove()


def run_simple_worker(app, queue: Queue, max_jobs: int | None = None) -> None:
    """Run what waits in ``queue`` in this process (burst), in an app context of its own."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with app.app_context():
            assert SimpleWorker([queue], connection=queue.connection).work(
                burst=True, max_jobs=max_jobs
            )
            db.session.remove()
    finally:  # the worker installs its own; give pytest back Ctrl+C
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def request_reset(app, queue: Queue, email: str) -> int:
    """Ask for a reset link through the web, and let a worker run the look-up job that
    queued (it writes the mail); the mail job is now waiting in Redis."""
    client = app.test_client()
    assert client.submit("/auth/forgot", {"email": email}).status_code == 303
    [lookup] = queue.jobs
    assert (lookup.func_name, lookup.args) == (
        queues.RUN_TASK,
        ("accounts.send_password_reset", email),
    )
    run_simple_worker(app, queue, max_jobs=1)
    message_id, status = mail_row(app)
    assert status == "pending"
    return message_id


def test_mail_job_waits_in_redis_until_a_simple_worker_runs_it(
    app, mailing_app, default_queue, smtp_sink, make_user
):  # noqa: F811
    user = make_user()
    message_id = request_reset(mailing_app, default_queue, user.email)
    job_id = queues.rq_job_id(f"mail:{message_id}")
    assert default_queue.job_ids == [job_id]
    assert smtp_sink.messages == []

    run_simple_worker(mailing_app, default_queue)

    [received] = smtp_sink.wait_for(1)
    assert received.rcpt_tos == [user.email]
    assert RESET_LINK.search(received.text)
    assert mail_row(mailing_app) == (message_id, "sent")
    assert default_queue.job_ids == []
    assert Job.fetch(job_id, connection=default_queue.connection).get_status() == JobStatus.FINISHED


def test_forking_worker_process_sends_the_mail(
    app,
    mailing_app,
    default_queue,
    smtp_sink,  # noqa: F811
    make_user,
    database_url,
    redis_url,
    tmp_path,
):
    user = make_user()
    message_id = request_reset(mailing_app, default_queue, user.email)
    job_id = queues.rq_job_id(f"mail:{message_id}")
    assert default_queue.job_ids == [job_id]

    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in (
            "TESTING",
            "BILLING_CONFIG",
            "MAIL_USE_TLS",
            "MAIL_USE_SSL",
            "MAIL_USERNAME",
            "MAIL_PASSWORD",
        )
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SECRET_KEY=BASE_CONFIG["SECRET_KEY"],
        MAIL_SERVER=smtp_sink.host,
        MAIL_PORT=str(smtp_sink.port),
        INSTANCE_PATH=str(tmp_path / "instance"),
        LOG_LEVEL="info",
    )
    worker = subprocess.run(
        [sys.executable, "-m", "jobs.worker", "--burst", "default"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = worker.stdout + worker.stderr
    assert worker.returncode == 0, output
    job = Job.fetch(job_id, connection=default_queue.connection)
    assert job.get_status() == JobStatus.FINISHED, output + (
        job.latest_result().exc_string if job.latest_result() else ""
    )
    assert mail_row(mailing_app) == (message_id, "sent"), output

    [received] = smtp_sink.wait_for(1)
    assert received.rcpt_tos == [user.email]
    assert RESET_LINK.search(received.text)
    assert default_queue.job_ids == []
    assert job.worker_name and job.worker_name in output  # a worker process other than us


def test_enqueueing_a_waiting_job_id_twice_keeps_one(app, mailing_app, default_queue):
    with mailing_app.app_context():
        first = queues.enqueue("default", "mail.send_email", 424242, job_id="mail:424242")
        again = queues.enqueue("default", "mail.send_email", 424242, job_id="mail:424242")
    assert first is not None and again is None
    assert default_queue.job_ids == ["mail_424242"]

    run_simple_worker(mailing_app, default_queue)  # no such message: nothing to claim
    assert (
        Job.fetch("mail_424242", connection=default_queue.connection).get_status()
        == JobStatus.FINISHED
    )
    with mailing_app.app_context():  # done, so no longer waiting: the id may be enqueued again
        assert (
            queues.enqueue("default", "mail.send_email", 424242, job_id="mail:424242") is not None
        )
    assert default_queue.job_ids == ["mail_424242"]

"""Job requests: a job a transaction asks for is a row of that transaction; the relay moves
it to RQ when Redis answers, sends it again when Redis lost it, and retries a failed job
with backoff a bounded number of times."""

from __future__ import annotations

from datetime import timedelta

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from sqlalchemy import select, text, update

from portal.extensions import db
from portal.models import JobRequest, utcnow
from portal.tasks import queues, relay, requests, worker
from tests.support.processes import query
from tests.tasks import fake_jobs

pytestmark = pytest.mark.redis
# Apps on a Redis that goes away keep their rate limits in memory: the limiter is shared, and
# the next test resets it.
MEMORY_LIMITS = {"RATELIMIT_STORAGE_URI": "memory://"}

FUNC = "tests.tasks.fake_jobs.record"
FLAKY = "tests.tasks.fake_jobs.flaky"
NO_REDIS = "redis://127.0.0.1:9/0"  # the discard port: nothing answers


def rows(app) -> list[tuple]:
    return query(
        app,
        lambda: [
            (r.dedupe_key, r.status, r.attempts)
            for r in db.session.scalars(select(JobRequest).order_by(JobRequest.id))
        ],
    )


def make_due(app) -> None:
    """Skip the backoff: every waiting request's time has come."""

    def due():
        db.session.execute(update(JobRequest).values(next_attempt_at=utcnow()))
        db.session.commit()

    query(app, due)


def test_a_commit_with_redis_down_stands_and_the_relay_sends_the_job_later(
    app, make_app, redis_url, caplog
):
    down = make_app(RQ_ASYNC=True, REDIS_URL=NO_REDIS, **MEMORY_LIMITS)
    up = make_app(RQ_ASYNC=True)
    queue = Queue("default", connection=Redis.from_url(redis_url))
    with down.app_context():
        queues.enqueue_after_commit("default", FUNC, "slot-1", job_id="rec:1")
        db.session.commit()  # does not raise
        db.session.remove()
    assert "Redis is unavailable" in caplog.text
    assert rows(app) == [("rec:1", "requested", 0)]
    assert queue.job_ids == []

    with up.app_context():
        assert relay.relay(grace=timedelta(0))["sent"] == 1
    assert rows(app) == [("rec:1", "sent", 0)]
    assert queue.job_ids == ["rec_1"]
    assert queues.task_args(queue.fetch_job("rec_1")) == ("slot-1",)


def test_a_rollback_drops_the_request(app, make_app, redis_url):
    up = make_app(RQ_ASYNC=True)
    with up.app_context():
        db.session.execute(text("SELECT 1"))
        queues.enqueue_after_commit("default", FUNC, "undone", job_id="rec:undone")
        db.session.rollback()
        db.session.commit()
        db.session.remove()
    assert rows(app) == []
    assert Queue("default", connection=Redis.from_url(redis_url)).job_ids == []


def test_a_job_redis_lost_is_sent_again_and_asking_twice_is_one_row(app, make_app, redis_url):
    up = make_app(RQ_ASYNC=True)
    connection = Redis.from_url(redis_url)
    queue = Queue("default", connection=connection)
    with up.app_context():
        for _ in range(2):
            queues.enqueue_after_commit("default", FUNC, "slot-2", job_id="rec:2")
            db.session.commit()
        queues.enqueue_after_commit("default", FUNC, "no key")
        db.session.commit()
        assert len(queue.job_ids) == 2

        connection.flushdb()  # Redis restarted empty
        assert relay.relay(grace=timedelta(0)) == {"done": 0, "failed": 0, "lost": 2, "sent": 2}
        assert sorted(queue.job_ids)[0] == "rec_2" and len(queue.job_ids) == 2
        # Nothing is sent twice while it waits in RQ.
        assert relay.relay(grace=timedelta(0)) == {"done": 0, "failed": 0, "lost": 0, "sent": 0}
        db.session.remove()
    assert [(key, status) for key, status, _ in rows(app)] == [("rec:2", "sent"), (None, "sent")]


def test_a_started_job_whose_worker_is_gone_is_a_failed_attempt_retried(app, make_app, redis_url):
    up = make_app(RQ_ASYNC=True, JOB_RETRY_SECONDS=60)
    connection = Redis.from_url(redis_url)
    with up.app_context():
        for slot in ("killed", "alive", "other kind"):
            queues.enqueue_after_commit("default", FUNC, slot, job_id=f"rec:{slot}")
        db.session.commit()
        # As workers would leave them: each job started on a worker of its own. The first
        # worker kept an alive key and was killed (the key expired); the second's key is
        # fresh; the third is not one of ours (no alive key ever) and is never judged.
        workers = {"killed": "w-killed", "alive": "w-alive", "other kind": "w-other"}
        for slot, name in workers.items():
            key = Job.key_for(queues.rq_job_id(f"rec:{slot}"))
            connection.hset(key, mapping={"status": "started", "worker_name": name})
            connection.hset(f"rq:worker:{name}", "birth", "x")
        for name in ("w-killed", "w-alive"):
            connection.hset(f"rq:worker:{name}", worker.ALIVE_FIELD, 1)
        connection.set(worker.alive_key("w-alive"), 1, ex=60)

        assert relay.relay(grace=timedelta(0)) == {"done": 0, "failed": 1, "lost": 0, "sent": 0}
        assert not connection.exists(Job.key_for("rec_killed"))  # enqueued afresh when due
        killed = db.session.scalar(select(JobRequest).where(JobRequest.dedupe_key == "rec:killed"))
        assert (killed.status, killed.attempts) == ("requested", 1)
        assert killed.last_error == relay.LOST
        db.session.remove()
    assert [status for _, status, _ in rows(app)] == ["requested", "sent", "sent"]


def test_a_finished_job_is_done_and_a_failing_one_is_retried_then_failed(app, make_app):
    sync = make_app(JOB_MAX_ATTEMPTS=3, JOB_RETRY_SECONDS=60)
    with sync.app_context():
        queues.enqueue_after_commit("default", FUNC, "fine", job_id="rec:fine")
        db.session.commit()
        queues.redis_connection().set(fake_jobs.FAIL_FLAG, "1")
        queues.enqueue_after_commit("default", FLAKY, "bad", job_id="rec:bad")
        db.session.commit()
        db.session.remove()
    assert rows(app) == [("rec:fine", "done", 0), ("rec:bad", "requested", 1)]
    bad = query(app, lambda: db.session.scalar(select(JobRequest).where(JobRequest.id == 2)))
    # Backoff: the first retry a minute on, the error is the exception's text.
    assert timedelta(seconds=55) < bad.next_attempt_at - utcnow() <= timedelta(seconds=60)
    assert bad.last_error == "RuntimeError: the test job failed on purpose at bad"
    with sync.app_context():
        assert relay.relay()["sent"] == 0  # not due yet
    make_due(app)
    with sync.app_context():
        relay.relay()
    assert rows(app)[1] == ("rec:bad", "requested", 2)
    after_two = query(app, lambda: db.session.get(JobRequest, 2).next_attempt_at - utcnow())
    assert after_two > timedelta(seconds=115)  # doubled
    make_due(app)
    with sync.app_context():
        relay.relay()
    assert rows(app)[1] == ("rec:bad", "failed", 3)  # every attempt used: waits for a person

    with sync.app_context():
        queues.redis_connection().delete(fake_jobs.FAIL_FLAG)
        assert requests.retry_failed(task=FLAKY, now=utcnow()) == 1
        db.session.commit()
        relay.relay()
        db.session.remove()
    assert rows(app)[1] == ("rec:bad", "done", 0)
    assert requests.backoff(20, 30) == timedelta(hours=1)


def test_post_users_answers_201_with_redis_down_and_the_mail_waits(make_app, app, api, make_user):
    down = make_app(
        RQ_ASYNC=True, REDIS_URL=NO_REDIS, MAIL_SERVER="127.0.0.1", MAIL_PORT=9, **MEMORY_LIMITS
    )
    platform = api.token(make_user("platform@example.com"), "platform")
    client = down.test_client()
    response = client.post(
        "/api/plugins/billing/users",
        json={"email": "new.person@example.com", "name": "New Person"},
        headers={"Authorization": f"Bearer {platform}"},
    )
    assert response.status_code == 201
    assert [(key.split(":")[0], status) for key, status, _ in rows(app)] == [("mail", "requested")]

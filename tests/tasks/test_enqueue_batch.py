"""Many jobs from one commit (an invoice run's PDFs) go to Redis as one batch job, which
enqueues them as ``enqueue`` would: each under its id, none twice while it waits."""

from __future__ import annotations

import pytest
from redis import Redis
from rq import Queue
from sqlalchemy import text

from portal.extensions import db
from portal.tasks import queues

pytestmark = pytest.mark.redis

FUNC = "tests.tasks.fake_jobs.record"


def test_many_jobs_from_one_commit_go_to_redis_as_one_batch_job(app, make_app, redis_url):
    async_app = make_app(RQ_ASYNC=True)
    connection = Redis.from_url(redis_url)
    queue = Queue("default", connection=connection)
    count = queues.BATCH_AT + 5
    with async_app.app_context():
        queues.enqueue_after_commit("default", FUNC, "first", job_id="rec:0")
        db.session.commit()
        assert queue.job_ids == ["rec_0"]  # a few jobs go as they are

        db.session.execute(text("SELECT 1"))  # a transaction under way
        for n in range(count):
            queues.enqueue_after_commit("default", FUNC, f"slot-{n}", job_id=f"rec:{n}")
        db.session.rollback()
        db.session.commit()
        assert queue.job_ids == ["rec_0"]  # a rollback drops them, batch or not

        for n in range(count):
            queues.enqueue_after_commit("default", FUNC, f"slot-{n}", job_id=f"rec:{n}")
        db.session.commit()
        assert len(queue.job_ids) == 2
        batch = queue.fetch_job(queue.job_ids[1])
        assert queues.task_name(batch) == "tasks.enqueue_batch"

        assert batch.perform() == count - 1  # rec:0 is still waiting: not enqueued twice
        db.session.remove()
    ids = queue.job_ids
    assert len(ids) == count + 1 and set(ids) - {batch.id} == {f"rec_{n}" for n in range(count)}
    assert queues.task_args(queue.fetch_job("rec_0")) == ("first",)
    assert queues.task_args(queue.fetch_job("rec_7")) == ("slot-7",)
    assert queues.task_name(queue.fetch_job("rec_7")) == FUNC
    connection.close()


def test_a_released_savepoint_enqueues_nothing_until_the_commit(app, make_app, redis_url):
    """SQLAlchemy signals after_commit for a savepoint too; a job must wait for the real
    commit, or it would read rows that are not visible yet (or wait on our own locks)."""
    async_app = make_app(RQ_ASYNC=True)
    connection = Redis.from_url(redis_url)
    queue = Queue("default", connection=connection)
    with async_app.app_context():
        db.session.execute(text("SELECT 1"))
        with db.session.begin_nested():
            queues.enqueue_after_commit("default", FUNC, "inner", job_id="rec:inner")
            with db.session.begin_nested():
                queues.enqueue_after_commit("default", FUNC, "deeper", job_id="rec:deeper")
        assert queue.job_ids == []
        # A savepoint rolled back takes its jobs along, nested ones included.
        try:
            with db.session.begin_nested():
                queues.enqueue_after_commit("default", FUNC, "undone", job_id="rec:undone")
                with db.session.begin_nested():
                    queues.enqueue_after_commit("default", FUNC, "undone2", job_id="rec:undone2")
                raise ValueError("roll this savepoint back")
        except ValueError:
            pass
        db.session.commit()
        assert sorted(queue.job_ids) == ["rec_deeper", "rec_inner"]
        db.session.remove()

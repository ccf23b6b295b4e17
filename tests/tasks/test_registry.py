"""Task names: every job is enqueued by a registered name, and a job stored under the dotted
path it had before tasks had names still finds its function."""

from __future__ import annotations

import functools

import pytest
from redis import Redis
from rq.job import Job

from portal.services import jobs as service_jobs
from portal.services.metering import jobs as metering_jobs
from portal.tasks import registry, scheduler
from portal.tasks.queues import RUN_TASK, TaskJob

pytestmark = pytest.mark.once


def test_every_legacy_name_runs_its_task(app):
    for old, new in registry.LEGACY_NAMES.items():
        assert new in registry._TASKS, new
        assert registry.resolve(old) is registry.resolve(new)
    assert registry.resolve("jobs.notify.send_email") is service_jobs.send_email
    assert registry.resolve("metering.meter_due") is metering_jobs.meter_due


def test_every_scheduled_job_runs_a_registered_task(app):
    with app.app_context():
        jobs = scheduler.periodic_jobs()
    assert jobs and all(job.func in registry._TASKS for job in jobs)


def test_a_job_queued_under_its_old_path_runs_its_task(app, redis_url):
    redis = Redis.from_url(redis_url)
    old = TaskJob.create("jobs.metering.meter_due", args=("2026-11-21T18",), connection=redis)
    func = old.func
    assert isinstance(func, functools.partial)
    assert (func.func, func.args) == (registry.run_task, ("metering.meter_due",))
    new = Job.create(registry.run_task, args=("metering.meter_due",), connection=redis)
    assert new.func_name == RUN_TASK


def test_an_unknown_name_is_refused():
    with pytest.raises(registry.UnknownTask):
        registry.resolve("no.such_task")

"""The Jobs page and the jobs API: admins only; daemon health, last runs, queues, failed
jobs with Retry, and "Run now" whose run polls itself until it ends."""

from __future__ import annotations

import re

import pytest
from rq import SimpleWorker
from rq.registry import StartedJobRegistry

from portal.extensions import db
from portal.tasks import monitor, queues
from portal.tasks.daemon import Scheduler
from tests.support.app import AuthActions
from tests.support.processes import query
from tests.tasks import fake_jobs

pytestmark = pytest.mark.redis

PAGES = [
    ("get", "/admin/jobs"),
    ("get", "/admin/jobs/runs/1"),
    ("post", "/admin/jobs/calculate-usage/run"),
    ("post", "/admin/jobs/failed/x/retry"),
    ("post", "/admin/jobs/failed-tasks/x/retry"),
]


def _flaky(only_jobs) -> None:
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


def run_worker(app) -> None:
    with app.app_context():
        queue = queues.get_queue("default")
        SimpleWorker([queue], connection=queue.connection).work(burst=True)
        db.session.remove()


def logged_in(app, user):
    client = app.test_client()
    assert AuthActions(client).login(user).status_code == 303
    return client


def call(client, method: str, path: str):
    return client.get(path) if method == "get" else client.submit(path)


@pytest.mark.parametrize("method,path", PAGES)
def test_the_jobs_pages_are_for_admins_only(app, client, make_user, method, path):
    response = call(client, method, path)
    assert response.status_code == 302 and "/auth/login" in response.location
    user = make_user()
    AuthActions(client).login(user)
    assert call(client, method, path).status_code == 403


@pytest.mark.parametrize(
    "method,path",
    [("get", "/jobs/status"), ("post", "/jobs/calculate-usage"), ("get", "/jobs/runs/1")],
)
def test_the_jobs_api_is_for_admin_tokens_only(app, api, make_user, method, path):
    send = api.get if method == "get" else api.post
    assert send(path).status_code == 401
    assert send(path, token="not-a-token").status_code == 401
    user = make_user()
    for scope in ("user", "platform"):
        response = send(path, token=api.token(user, scope))
        assert response.status_code == 403
        assert response.get_json()["error"]["code"] == "forbidden"


def test_the_page_shows_the_daemon_its_runs_and_the_queues(app, fast_app, counting_job, make_user):
    daemon = Scheduler(fast_app, instance="host-7")  # the real clock, as the page has
    with fast_app.app_context():
        daemon.step()
        db.session.remove()
    client = logged_in(fast_app, make_user(admin=True))
    page = client.get("/admin/jobs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<a href="/admin/jobs" aria-current="page">Jobs</a>' in html
    assert "Leader: <strong>host-7</strong> (lease epoch 1" in html
    row = re.search(r'<tr id="instance-\d+">(.*?)</tr>', html, re.S).group(1)
    assert "host-7" in row and "running" in row and "leader" in row and " s ago" in row
    assert ">2<" in row and "$1.50" in row  # instances billed and total amount of the last run
    job = re.search(r'<tr id="job-count">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r"count:\d{4}-\d\d-\d\dT\d\d", job)
    assert "succeeded" in job and "hx-trigger" not in job
    assert 'action="/admin/jobs/count/run"' in job and "Run now" in job
    assert re.search(r'<tr id="queue-default"><td>default</td><td class="num">0</td>', html)
    assert "No failed jobs." in html


def test_run_now_shows_a_progress_fragment_that_polls_until_the_run_ends(
    app, async_app, counting_job, make_user
):
    client = logged_in(async_app, make_user(admin=True))
    page = client.get("/admin/jobs")
    token = re.search(
        r'name="request_id" type="hidden" value="(\w+)"', page.get_data(as_text=True)
    ).group(1)
    response = client.submit("/admin/jobs/count/run", {"request_id": token})
    assert response.status_code == 303 and response.location.endswith("/admin/jobs#job-count")
    again = client.submit("/admin/jobs/count/run", {"request_id": token})  # a double click
    assert again.status_code == 303

    html = client.get("/admin/jobs").get_data(as_text=True)
    assert "Started count (count:manual-" in html
    assert "count was already started from this page" in html
    run_id = int(re.search(r'<div id="job-run-(\d+)"', html).group(1))
    assert html.count('id="job-run-') == 1
    assert (
        f'hx-get="/admin/jobs/runs/{run_id}" hx-trigger="load delay:1s" hx-target="this" '
        'hx-swap="outerHTML"'
    ) in html

    fragment = client.htmx_get(f"/admin/jobs/runs/{run_id}", target=f"job-run-{run_id}")
    body = fragment.get_data(as_text=True).strip()
    assert body.startswith(f'<div id="job-run-{run_id}"') and "<html" not in body
    assert "<progress" in body and "waiting for a worker" in body and "load delay:1s" in body
    assert "HX-Request" in fragment.headers["Vary"]

    run_worker(async_app)
    assert len(query(async_app, fake_jobs.executions)) == 1
    done = client.htmx_get(f"/admin/jobs/runs/{run_id}", target=f"job-run-{run_id}")
    body = done.get_data(as_text=True)
    assert "hx-trigger" not in body and "succeeded" in body
    assert 'value="100"' in body and "deployments 2" in body and "$1.50" in body
    full = client.get(f"/admin/jobs/runs/{run_id}").get_data(as_text=True)
    assert (
        "<html" in full
        and f'id="job-run-{run_id}"' in full
        and "tests.tasks.fake_jobs.record" in full
    )


def test_a_failed_job_is_listed_with_its_error_and_retried(app, async_app, only_jobs, make_user):
    _flaky(only_jobs)
    query(async_app, lambda: queues.redis_connection().set(fake_jobs.FAIL_FLAG, "1"))
    client = logged_in(async_app, make_user(admin=True))
    client.get("/admin/jobs")
    assert client.submit("/admin/jobs/flaky/run", {"request_id": "r1"}).status_code == 303
    run_worker(async_app)

    html = client.get("/admin/jobs").get_data(as_text=True)
    failed = re.search(r'<tr id="failed-(flaky_manual-\w+)">(.*?)</tr>', html, re.S)
    job_id, row = failed.group(1), failed.group(2)
    assert "RuntimeError: the test job failed on purpose" in row
    assert f'action="/admin/jobs/failed/{job_id}/retry"' in row and "Retry" in row
    assert re.search(
        r'<tr id="queue-default"><td>default</td><td class="num">0</td>'
        r'<td class="num">0</td><td class="num">1</td>',
        html,
    )
    # The page's one Redis round trip reads what RQ's own calls read.
    quick, depths, failed_jobs, workers = query(
        async_app,
        lambda: (
            monitor.snapshot(),
            monitor.depths(),
            monitor.failed_jobs(),
            monitor.worker_count(),
        ),
    )
    assert (quick.depths, quick.failed, quick.workers) == (depths, failed_jobs, workers)
    assert [f.job_id for f in quick.failed] == [job_id]

    query(async_app, lambda: queues.redis_connection().delete(fake_jobs.FAIL_FLAG))
    response = client.submit(f"/admin/jobs/failed/{job_id}/retry")
    assert response.status_code == 303
    assert f"{job_id} is back on the default queue." in client.get("/admin/jobs").get_data(
        as_text=True
    )
    run_worker(async_app)
    html = client.get("/admin/jobs").get_data(as_text=True)
    assert "No failed jobs." in html
    job = re.search(r'<tr id="job-flaky">(.*?)</tr>', html, re.S).group(1)
    assert "succeeded" in job
    assert client.submit("/admin/jobs/failed/nothing-here/retry").status_code == 404


def test_failed_job_requests_are_counted_by_task_and_retried_all_at_once(app, make_app, make_user):
    once = make_app(JOB_MAX_ATTEMPTS=1)
    flaky = "tests.tasks.fake_jobs.flaky"

    def ask():
        queues.redis_connection().set(fake_jobs.FAIL_FLAG, "1")
        for n in range(2):
            queues.enqueue_after_commit("default", flaky, f"slot-{n}", job_id=f"flaky:{n}")
        db.session.commit()  # each runs now (synchronous queue) and fails for good

    query(once, ask)
    client = logged_in(once, make_user(admin=True))
    html = client.get("/admin/jobs").get_data(as_text=True)
    row = re.search(rf'<tr id="failed-task-{flaky}">(.*?)</tr>', html, re.S).group(1)
    assert '<td class="num">2</td>' in row
    # The exception's own text, not a traceback's last line of boilerplate.
    assert "RuntimeError: the test job failed on purpose at slot-1" in row
    assert "Retry all failed" in row
    waiting = re.search(r'<table id="waiting-work">(.*?)</table>', html, re.S).group(1)
    assert re.search(r"<td>job requests</td><td class=\"num\">0</td>", waiting)

    query(once, lambda: queues.redis_connection().delete(fake_jobs.FAIL_FLAG))
    response = client.submit(f"/admin/jobs/failed-tasks/{flaky}/retry")
    assert response.status_code == 303
    html = client.get("/admin/jobs").get_data(as_text=True)
    assert f"2 failed {flaky} jobs will run again." in html
    assert 'id="failed-tasks"' not in html
    assert query(once, fake_jobs.executions) == ["slot-0", "slot-1"]


def test_the_jobs_api_status_and_run_now(app, async_app, api, counting_job, make_user):
    api = type(api)(async_app, async_app.test_client())
    token = api.token(make_user(), "admin")
    assert api.post("/jobs/no-such-job", token=token).status_code == 404
    assert api.post("/jobs/no-such-job", token=token).get_json()["error"]["code"] == "not_found"

    first = api.post("/jobs/count", token=token, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    body = first.get_json()
    assert body["job_id"].startswith("count:manual-") and body["status"] == "pending"
    again = api.post("/jobs/count", token=token, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.get_json()["run_id"] == body["run_id"]

    status = api.get("/jobs/status", token=token).get_json()
    assert status["leader"] is None and status["builtin_billing"]["active"] is True
    [job] = status["jobs"]
    assert (job["name"], job["cron"], job["last_run"]["job_id"]) == (
        "count",
        "0 * * * *",
        body["job_id"],
    )
    default = next(q for q in status["queues"] if q["name"] == "default")
    assert default["queued"] == 1

    run_worker(async_app)
    run = api.get(f"/jobs/runs/{body['run_id']}", token=token).get_json()
    assert run["status"] == "succeeded" and run["figures"]["deployments"] == 2
    assert run["duration_ms"] is not None and run["finished_at"].endswith("Z")


def test_an_abandoned_started_job_is_read_through_rqs_cleanup(async_app):
    def read():
        connection = queues.redis_connection()
        started = StartedJobRegistry(queue=queues.get_queue("default"))
        connection.zadd(started.key, {"gone:abc": 1})  # its worker died long ago
        default = next(d for d in monitor.snapshot().depths if d.name == "default")
        return default, connection.zcard(started.key)

    default, left = query(async_app, read)
    assert default.started == 0 and left == 0  # RQ's cleanup dropped it, as depths() does

"""Admin: the billing daemon, job runs, queues and failed jobs."""

from __future__ import annotations

import uuid

from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import HiddenField
from wtforms.validators import Length

from ... import htmx as hx
from ...models import utcnow
from ...services.admin import jobs as admin_jobs
from ...tasks import requests, scheduler
from .. import helpers
from . import bp


class RunNowForm(FlaskForm):
    # One run per rendered page and job, however often the button is pressed.
    request_id = HiddenField(validators=[Length(max=64)])


class RetryForm(FlaskForm):
    pass


@bp.get("/jobs")
def jobs():
    form = RunNowForm(formdata=None, request_id=uuid.uuid4().hex)
    return render_template(
        "admin/jobs.html",
        overview=scheduler.overview(now=utcnow()),
        run_form=form,
        retry_form=RetryForm(formdata=None),
    )


@bp.get("/jobs/<name>/run")
def confirm_run(name: str):
    """Run now: are you sure? (an unknown job: 404)"""
    job = scheduler.find_job(name)
    return render_template(
        "confirm.html",
        title=f"Run {job.name} now?",
        message=f"{job.name} runs now, outside its schedule ({job.cron} UTC).",
        action=url_for("admin.run_job", name=job.name),
        hidden={"request_id": helpers.query_arg("request_id", 64) or uuid.uuid4().hex},
        confirm=f"Run {job.name} now",
        cancel=url_for("admin.jobs", _anchor=f"job-{job.name}"),
    )


@bp.post("/jobs/<name>/run")
def run_job(name: str):
    form = RunNowForm()
    if not form.validate_on_submit():
        abort(400)
    run, created = admin_jobs.run_now(
        name, requested_by=current_user, request_key=form.request_id.data or None, now=utcnow()
    )
    flash(
        f"Started {run.job_name} ({run.job_id})."
        if created
        else f"{run.job_name} was already started from this page ({run.job_id}).",
        "success",
    )
    return redirect(url_for("admin.jobs", _anchor=f"job-{run.job_name}"), code=303)


@bp.get("/jobs/runs/<int:run_id>")
def job_run(run_id: int):
    view = scheduler.show_run(run_id)
    if hx.is_fragment_request(f"job-run-{run_id}"):
        return render_template("admin/_job_run.html", view=view)
    return render_template("admin/job_run.html", view=view)


@bp.post("/jobs/failed/<job_id>/retry")
def retry_job(job_id: str):
    if not RetryForm().validate_on_submit():
        abort(400)
    queue = scheduler.retry_failed(job_id, now=utcnow())
    flash(f"{job_id} is back on the {queue} queue.", "success")
    return helpers.see_other("admin.jobs")


@bp.post("/jobs/failed-tasks/<task>/retry")
def retry_task(task: str):
    if not RetryForm().validate_on_submit():
        abort(400)
    count = requests.retry_failed(task=task, now=utcnow())
    flash(f"{count} failed {task} job{'' if count == 1 else 's'} will run again.", "success")
    return helpers.see_other("admin.jobs")

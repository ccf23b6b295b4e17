"""Invoicing jobs: the period run fans out one job per chunk of users; overdue marking."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from flask import current_app

from ...extensions import db
from ...models import Invoice
from ...tasks.queues import enqueue_after_commit, get_queue
from ...tasks.registry import schedule, task
from .. import calendar
from . import documents, invoices, run

log = logging.getLogger(__name__)


def _period(start_iso: str | None) -> tuple[datetime, datetime]:
    if not start_iso:
        return calendar.last_complete_period()
    start = datetime.fromisoformat(start_iso).replace(tzinfo=UTC)
    return calendar.period_containing(start, current_app.config["BILLING"].invoice_day)


@task("invoicing.generate_invoices")
def generate_invoices(period_start_iso: str | None = None) -> dict[str, int | str]:
    """The "generate-invoices" job: every chunk of users for one ended billing period."""
    start, end = _period(period_start_iso)
    run.check_period(start, end)
    started = time.monotonic()
    chunks = run.chunks_with_users()
    db.session.commit()
    if not get_queue("invoicing").is_async:
        totals = run.RunResult()
        for chunk in chunks:
            totals.add(run.generate_chunk(chunk, start, end))
            db.session.commit()
        run.log_run(start, end, totals, started)
        return dict(totals.figures())
    stamp = start.strftime("%Y-%m-%d")
    for chunk in chunks:
        enqueue_after_commit(
            "invoicing",
            "invoicing.generate_chunk",
            chunk,
            stamp,
            job_id=f"invoice:{chunk}:{stamp}",
        )
    log.info(
        "invoice run for %s..%s: %d chunks queued (each logs its figures)",
        start.date(),
        end.date(),
        len(chunks),
    )
    db.session.commit()
    return {"chunks": len(chunks), "period_start": stamp}


@task("invoicing.generate_chunk")
def generate_chunk(chunk: int, period_start_iso: str) -> dict[str, int]:
    start, end = _period(period_start_iso)
    result = run.generate_chunk(chunk, start, end)
    db.session.commit()
    return result.figures()


@task("invoicing.mark_overdue")
def mark_overdue() -> dict[str, int]:
    count = invoices.mark_overdue()
    db.session.commit()
    log.info("%d invoices became overdue", count)
    return {"overdue": count}


def period_ending_at(due: datetime) -> tuple[str]:
    """Schedule arguments: the period that ends at the invoice-day boundary ``due``."""
    return ((due - timedelta(days=1)).strftime("%Y-%m-%d"),)


@task("invoicing.render_invoice_pdf")
def render_invoice_pdf(invoice_id: int) -> str:
    """Render and store an issued invoice's PDF, then mail it (the mail needs the PDF)."""
    try:
        sha256 = documents.render_invoice_pdf(invoice_id).sha256
        db.session.commit()
    except documents.PdfRenderFailed:
        db.session.commit()  # keeps pdf_status "failed"; the job fails with the reason
        raise
    except Exception:
        db.session.rollback()  # storing it failed (a full disk, the database): say so
        documents.mark_pdf_failed(invoice_id)
        db.session.commit()
        raise
    documents.queue_invoice_created_email(db.session.get_one(Invoice, invoice_id))
    db.session.commit()
    return sha256


def last_ended_period(now: datetime) -> tuple[str]:
    """Run now's arguments: the last billing period that has ended at ``now`` (any day,
    not only the invoice day)."""
    return (calendar.last_complete_period(now)[0].strftime("%Y-%m-%d"),)


# On the invoice day, just after midnight UTC, the period that ended is invoiced.
schedule(
    "generate-invoices",
    cron=lambda config: f"5 0 {config['BILLING'].invoice_day} * *",
    func="invoicing.generate_invoices",
    queue="invoicing",
    id_prefix="invoices",
    args=period_ending_at,
    manual_args=last_ended_period,
    enabled=lambda config: config["BILLING"].enabled,
)
schedule(
    "mark-overdue",
    cron="15 0 * * *",
    func="invoicing.mark_overdue",
    queue="invoicing",
    id_prefix="overdue",
    enabled=lambda config: config["BILLING"].enabled,
)

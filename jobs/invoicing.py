"""Invoicing jobs: the period run fans out one job per chunk of users; overdue marking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import current_app

from portal.extensions import db
from portal.models import Invoice
from portal.services import invoice_documents, invoicing, usage

from .queues import enqueue, get_queue


def _period(start_iso: str | None) -> tuple[datetime, datetime]:
    if not start_iso:
        return invoicing.last_complete_period()
    start = datetime.fromisoformat(start_iso).replace(tzinfo=UTC)
    return usage.period_containing(start, current_app.config["BILLING"].invoice_day)


def generate_invoices(period_start_iso: str | None = None) -> dict:
    """The "generate-invoices" job: every chunk of users for one ended billing period."""
    start, end = _period(period_start_iso)
    invoicing.check_period(start, end)
    chunks = invoicing.chunks_with_users()
    db.session.commit()
    if not get_queue("invoicing").is_async:
        totals = invoicing.RunResult()
        for chunk in chunks:
            totals.add(invoicing.generate_chunk(chunk, start, end))
            db.session.commit()
        return totals.figures()
    stamp = start.strftime("%Y-%m-%d")
    for chunk in chunks:
        enqueue(
            "invoicing",
            "jobs.invoicing.generate_chunk",
            chunk,
            stamp,
            job_id=f"invoice:{chunk}:{stamp}",
        )
    return {"chunks": len(chunks), "period_start": stamp}


def generate_chunk(chunk: int, period_start_iso: str) -> dict:
    start, end = _period(period_start_iso)
    result = invoicing.generate_chunk(chunk, start, end)
    db.session.commit()
    return result.figures()


def mark_overdue() -> dict:
    count = invoicing.mark_overdue()
    db.session.commit()
    return {"overdue": count}


def period_ending_at(due: datetime) -> tuple:
    """Schedule arguments: the period that ends at the invoice-day boundary ``due``."""
    return ((due - timedelta(days=1)).strftime("%Y-%m-%d"),)


def render_invoice_pdf(invoice_id: int) -> str:
    """Render and store an issued invoice's PDF, then mail it (the mail needs the PDF)."""
    try:
        sha256 = invoice_documents.render_invoice_pdf(invoice_id).sha256
    except invoice_documents.PdfRenderFailed:
        db.session.commit()  # keeps pdf_status "failed"; the job fails with the reason
        raise
    db.session.commit()
    invoice_documents.queue_invoice_created_email(db.session.get(Invoice, invoice_id))
    db.session.commit()
    return sha256

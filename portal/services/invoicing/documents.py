"""Invoice documents: the stored PDF of a finalized invoice and the mail that carries it.

A finalized invoice's PDF is rendered once, from its snapshot, on the invoicing queue, and
kept with its SHA-256; it is never rendered again. pdf_status: none -> pending (requested)
-> ready | failed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ...documents import invoice_pdf
from ...errors import Conflict, InvalidTransition, NotFound, ServiceError
from ...extensions import db
from ...models import Invoice, InvoicePdf, InvoiceStatus, OutboundEmail, User
from ...tasks import requests
from ...tasks.queues import enqueue_after_commit, enqueue_many_after_commit
from .. import mail
from .invoices import get_for_owner
from .snapshot import Snapshot, with_number


class PdfNotReady(Conflict):
    code = "pdf_not_ready"


class PdfRenderFailed(ServiceError):
    code = "pdf_render_failed"
    http_status = 500


class StoredPdf(NamedTuple):
    """What a download sends: the invoice's number (the file's name), the PDF and its hash."""

    number: str | None
    sha256: str
    content: bytes


def get_invoice_pdf(invoice_id: int, *, user: User | None) -> StoredPdf:
    """``user``'s invoice's stored PDF (None: any invoice, for admins), read in one
    statement: the invoice's number (given when it is issued; a draft has none) and the
    stored file, without loading the invoice (its snapshot, lines and payments). Another
    user's invoice is NotFound, as in ``get_for_owner``; an invoice without its PDF yet is
    PdfNotReady."""
    query = (
        select(Invoice.number, InvoicePdf.sha256, InvoicePdf.content)
        .outerjoin(InvoicePdf, InvoicePdf.invoice_id == Invoice.id)
        .where(Invoice.id == invoice_id)
    )
    if user is not None:
        query = query.where(Invoice.user_id == user.id)
    row = db.session.execute(query).one_or_none()
    if row is None:
        raise NotFound("no such invoice")
    number, sha256, content = row
    if content is None:
        raise PdfNotReady(
            "This invoice's PDF is not ready yet."
            if number is not None
            else "A draft invoice has no PDF; it is made when the invoice is issued."
        )
    return StoredPdf(number, sha256, content)


def request_pdf(invoice: Invoice) -> None:
    """Render the PDF on the invoicing queue once this transaction commits."""
    if invoice.snapshot is None:
        raise InvalidTransition(f"invoice {invoice.id} is a draft; it has no PDF")
    if invoice.pdf_status == "ready":
        return
    invoice.pdf_status = "pending"
    enqueue_render(invoice.id)


def enqueue_render(invoice_id: int) -> None:
    """The render job of an issued invoice whose pdf_status is already "pending" (bulk
    finalization writes it in its INSERT), enqueued once this transaction commits."""
    enqueue_after_commit(
        "invoicing", "invoicing.render_invoice_pdf", invoice_id, job_id=f"pdf:{invoice_id}"
    )


def enqueue_renders(invoice_ids: Sequence[int], *, new: bool = False) -> None:
    """``enqueue_render`` for many invoices in one write (``new``: issued in this
    transaction, as an invoice run's are)."""
    enqueue_many_after_commit(
        "invoicing",
        "invoicing.render_invoice_pdf",
        [((invoice_id,), f"pdf:{invoice_id}") for invoice_id in invoice_ids],
        new=new,
    )


def request_missing_pdfs(limit: int = 500) -> int:
    """The sweep: every issued invoice without its PDF (pending, or failed) whose render job
    is not waiting, running or failed for good gets one. Returns how many."""
    ids = db.session.scalars(
        select(Invoice.id)
        .where(
            Invoice.snapshot.is_not(None),
            Invoice.pdf_status.in_(("pending", "failed")),
            requests.no_open_request("pdf:", Invoice.id),
        )
        .order_by(Invoice.id)
        .limit(limit)
    ).all()
    enqueue_renders(ids)
    return len(ids)


def mark_pdf_failed(invoice_id: int) -> None:
    """The render job failed otherwise than in the render (storing it, the database): the
    invoice's page says so and stops polling; the retry or the sweep makes it."""
    invoice = db.session.get(Invoice, invoice_id)
    if invoice is not None and invoice.pdf_status == "pending":
        invoice.pdf_status = "failed"
        db.session.flush()


def render_invoice_pdf(invoice_id: int) -> InvoicePdf:
    """Render and store the invoice's PDF; an invoice that has one gets it back unchanged.

    The render (a few hundred milliseconds of WeasyPrint) happens between transactions, so
    it holds no lock (on SQLite a transaction holds the write lock from its start): the
    snapshot is read and that transaction committed, the PDF rendered, then stored by a
    short transaction that the caller commits; if two renders race, the first stored
    stands. A failed render leaves pdf_status "failed" (flushed) and raises PdfRenderFailed.
    """
    invoice = get_for_owner(None, invoice_id)
    pdf = db.session.get(InvoicePdf, invoice.id)
    if pdf is None:
        if invoice.snapshot is None:
            raise InvalidTransition(f"invoice {invoice.id} is a draft; it has no PDF")
        snapshot = with_number(invoice)
        db.session.commit()
        try:
            content = invoice_pdf.render_pdf_bytes(snapshot)
        except Exception as exc:  # template, snapshot or WeasyPrint errors alike
            invoice.pdf_status = "failed"
            db.session.flush()
            raise PdfRenderFailed(f"invoice {invoice.id}: {type(exc).__name__}: {exc}") from exc
        pdf = _store(invoice.id, snapshot, content)
    invoice.pdf_status, invoice.pdf_sha256 = "ready", pdf.sha256
    db.session.flush()
    return pdf


def _store(invoice_id: int, snapshot: Snapshot, content: bytes) -> InvoicePdf:
    pdf = InvoicePdf(
        invoice_id=invoice_id,
        template_version=invoice_pdf.template_version(snapshot),
        sha256=hashlib.sha256(content).hexdigest(),
        content=content,
    )
    try:
        with db.session.begin_nested():
            db.session.add(pdf)
    except IntegrityError:  # a concurrent render stored it first: theirs stands
        pdf = db.session.scalars(
            select(InvoicePdf)
            .where(InvoicePdf.invoice_id == invoice_id)
            .execution_options(populate_existing=True)
        ).one()
    return pdf


def _issued_snapshot(invoice: Invoice) -> Snapshot:
    if invoice.snapshot is None:
        raise InvalidTransition(f"invoice {invoice.id} is a draft; it was not issued")
    return invoice.snapshot


def invoice_created_subject(invoice: Invoice) -> str:
    return f"Invoice {invoice.number} from {_issued_snapshot(invoice)['seller']['name']}"


def queue_invoice_created_email(invoice: Invoice) -> OutboundEmail | None:
    """The "invoice created" mail to the invoice's user with its PDF attached; queued once
    per invoice (a repeated call returns the first). None for a voided invoice."""
    snapshot = _issued_snapshot(invoice)
    # Serialize with a concurrent call for the same invoice before looking for its mail.
    db.session.execute(select(Invoice.id).where(Invoice.id == invoice.id).with_for_update())
    subject = invoice_created_subject(invoice)
    existing = db.session.scalar(
        select(OutboundEmail).where(
            OutboundEmail.attachment_invoice_id == invoice.id, OutboundEmail.subject == subject
        )
    )
    if existing is not None or invoice.status == InvoiceStatus.VOID:
        return existing
    if db.session.get(InvoicePdf, invoice.id) is None:
        raise PdfNotReady(f"invoice {invoice.id} has no PDF to attach yet")
    user = db.session.get_one(User, invoice.user_id)
    return mail.queue_email(
        to=user.email,
        subject=subject,
        template="invoice_created",
        user_id=user.id,
        attachment_invoice_id=invoice.id,
        inv=snapshot,
        name=user.name,
        link=f"{current_app.config['PUBLIC_URL']}/invoices/{invoice.id}",
        nothing_due=not invoice_pdf.is_nonzero(snapshot["amount_due"]),
    )

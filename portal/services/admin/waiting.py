"""Work waiting for one account or one invoice (the admin's user and invoice pages): invoice
PDFs not made yet and mail not sent yet, each with where its job stands (waiting, sent to a
worker, retrying after a failure, or failed on every attempt)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select

from ...extensions import db
from ...models import EmailStatus, Invoice, JobRequest, OutboundEmail, User

SHOWN = 50
_MAIL_WAITING = (EmailStatus.PENDING, EmailStatus.SENDING, EmailStatus.FAILED)


@dataclass(frozen=True)
class Waiting:
    kind: str  # "invoice PDF" or "mail"
    what: str  # the invoice's number, the message's subject
    status: str  # the PDF's or the message's
    since: datetime | None
    invoice_id: int | None
    message_id: int | None
    job: str  # where its job stands, in words
    error: str | None  # the job's last error, or the message's


def _job_words(row: JobRequest | None) -> str:
    if row is None:
        return "no job yet: the next sweep asks for one"
    if row.status == "failed":
        return f"failed on every attempt ({row.attempts}): Admin › Jobs › Retry all failed"
    if row.status == "requested" and row.attempts:
        return f"retrying after {row.attempts} failed attempt(s)"
    return {"requested": "waiting for the relay", "sent": "with a worker"}.get(
        row.status, row.status
    )


def _jobs(keys: list[str]) -> dict[str, JobRequest]:
    if not keys:
        return {}
    rows = db.session.scalars(select(JobRequest).where(JobRequest.dedupe_key.in_(keys)))
    return {row.dedupe_key: row for row in rows if row.dedupe_key}


def _collect(invoices: list[Invoice], messages: list[OutboundEmail]) -> list[Waiting]:
    jobs = _jobs([f"pdf:{i.id}" for i in invoices] + [f"mail:{m.id}" for m in messages])
    items = []
    for invoice in invoices:
        job = jobs.get(f"pdf:{invoice.id}")
        items.append(
            Waiting(
                "invoice PDF",
                invoice.number or f"invoice {invoice.id}",
                invoice.pdf_status,
                invoice.finalized_at,
                invoice.id,
                None,
                _job_words(job),
                job.last_error if job is not None else None,
            )
        )
    for message in messages:
        job = jobs.get(f"mail:{message.id}")
        items.append(
            Waiting(
                "mail",
                message.subject,
                message.status,
                message.created_at,
                message.attachment_invoice_id,
                message.id,
                _job_words(job),
                (job.last_error if job is not None else None) or message.error,
            )
        )
    return items


def _pending_pdfs(*where) -> list[Invoice]:
    return list(
        db.session.scalars(
            select(Invoice)
            .where(Invoice.pdf_status.in_(("pending", "failed")), *where)
            .order_by(Invoice.id)
            .limit(SHOWN)
        )
    )


def _unsent_mail(*where) -> list[OutboundEmail]:
    return list(
        db.session.scalars(
            select(OutboundEmail)
            .where(OutboundEmail.status.in_(_MAIL_WAITING), *where)
            .order_by(OutboundEmail.id)
            .limit(SHOWN)
        )
    )


def for_user(user: User) -> list[Waiting]:
    """The user's invoice PDFs and mail still waiting (mail to their address included)."""
    to_them = or_(OutboundEmail.user_id == user.id, OutboundEmail.to_addr == user.email)
    return _collect(_pending_pdfs(Invoice.user_id == user.id), _unsent_mail(to_them))


def for_invoice(invoice_id: int) -> list[Waiting]:
    """The invoice's PDF, if not made yet, and the mail that carries it, if not sent yet."""
    return _collect(
        _pending_pdfs(Invoice.id == invoice_id),
        _unsent_mail(OutboundEmail.attachment_invoice_id == invoice_id),
    )

"""Work waiting for one account or one invoice (the admin's user and invoice pages): invoice
PDFs not made yet and mail not sent yet, each with where its job stands (waiting, sent to a
worker, retrying after a failure, or failed on every attempt)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, String, bindparam, cast, literal, null, or_, select, union_all

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


def _job_words(status: str | None, attempts: int | None) -> str:
    """Where a job stands (its request's status and attempts; None: no request)."""
    if status is None:
        return "no job yet: the next sweep asks for one"
    if status == "failed":
        return f"failed on every attempt ({attempts}): Admin › Jobs › Retry all failed"
    if status == "requested" and attempts:
        return f"retrying after {attempts} failed attempt(s)"
    return {"requested": "waiting for the relay", "sent": "with a worker"}.get(status, status)


def _statement(pdfs_where, mail_where) -> Select:
    """The invoice PDFs and the mail waiting (at most SHOWN of each, oldest first), each
    with its job request (``pdf:<invoice id>``, ``mail:<message id>``), in one statement."""
    pdfs = (
        select(Invoice.id, Invoice.number, Invoice.pdf_status, Invoice.finalized_at)
        .where(Invoice.pdf_status.in_(("pending", "failed")), *pdfs_where)
        .order_by(Invoice.id)
        .limit(SHOWN)
        .subquery()
    )
    mail = (
        select(
            OutboundEmail.id,
            OutboundEmail.subject,
            OutboundEmail.status,
            OutboundEmail.created_at,
            OutboundEmail.attachment_invoice_id,
            OutboundEmail.error,
        )
        .where(OutboundEmail.status.in_(_MAIL_WAITING), *mail_where)
        .order_by(OutboundEmail.id)
        .limit(SHOWN)
        .subquery()
    )

    def job(prefix: str, row_id):
        return JobRequest.dedupe_key == literal(prefix) + cast(row_id, String)

    both = union_all(
        select(
            literal(0).label("kind"),
            pdfs.c.id,
            pdfs.c.number.label("what"),
            pdfs.c.pdf_status.label("status"),
            pdfs.c.finalized_at.label("since"),
            pdfs.c.id.label("invoice_id"),
            null().label("error"),
            JobRequest.status.label("job_status"),
            JobRequest.attempts,
            JobRequest.last_error,
        ).outerjoin(JobRequest, job("pdf:", pdfs.c.id)),
        select(
            literal(1),
            mail.c.id,
            mail.c.subject,
            mail.c.status,
            mail.c.created_at,
            mail.c.attachment_invoice_id,
            mail.c.error,
            JobRequest.status,
            JobRequest.attempts,
            JobRequest.last_error,
        ).outerjoin(JobRequest, job("mail:", mail.c.id)),
    ).subquery()
    return select(both).order_by(both.c.kind, both.c.id)


# Built once (building costs more than running them); the user or invoice is bound per call.
@functools.cache
def _user_statement() -> Select:
    to_them = or_(
        OutboundEmail.user_id == bindparam("user_id"),
        OutboundEmail.to_addr == bindparam("email"),
    )
    return _statement([Invoice.user_id == bindparam("user_id")], [to_them])


@functools.cache
def _invoice_statement() -> Select:
    return _statement(
        [Invoice.id == bindparam("invoice_id")],
        [OutboundEmail.attachment_invoice_id == bindparam("invoice_id")],
    )


def _waiting(statement: Select, params: dict[str, object]) -> list[Waiting]:
    items = []
    for r in db.session.execute(statement, params):
        if r.kind == 0:
            items.append(
                Waiting(
                    "invoice PDF",
                    r.what or f"invoice {r.id}",
                    r.status,
                    r.since,
                    r.id,
                    None,
                    _job_words(r.job_status, r.attempts),
                    r.last_error,
                )
            )
        else:
            items.append(
                Waiting(
                    "mail",
                    r.what,
                    r.status,
                    r.since,
                    r.invoice_id,
                    r.id,
                    _job_words(r.job_status, r.attempts),
                    r.last_error or r.error,
                )
            )
    return items


def for_user(user: User) -> list[Waiting]:
    """The user's invoice PDFs and mail still waiting (mail to their address included)."""
    return _waiting(_user_statement(), {"user_id": user.id, "email": user.email})


def for_invoice(invoice_id: int) -> list[Waiting]:
    """The invoice's PDF, if not made yet, and the mail that carries it, if not sent yet."""
    return _waiting(_invoice_statement(), {"invoice_id": invoice_id})

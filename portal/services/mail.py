"""Mail: written to the outbox table in the caller's transaction, sent after commit.

Sending has a timeout (MAIL_TIMEOUT); a message the server refused or did not answer for
stays "failed" with the reason and its job fails, so the job request retries it with
backoff. A message left "sending" by a worker that died is taken again once it has been
"sending" for MAIL_SENDING_STALE_SECONDS."""

from __future__ import annotations

import smtplib
from datetime import timedelta

import flask_mail
from flask import current_app, render_template
from flask_mail import Message
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..db import Page, rowcount
from ..extensions import db
from ..models import EmailStatus, Invoice, InvoicePdf, OutboundEmail, utcnow
from ..tasks import requests
from ..tasks.queues import enqueue_after_commit


def queue_email(
    *,
    to: str,
    subject: str,
    template: str,
    user_id: int | None = None,
    attachment_invoice_id: int | None = None,
    dedupe_key: str | None = None,
    **context,
) -> OutboundEmail | None:
    """Render ``email/<template>.txt`` and keep it; the send job runs after commit.
    With no SMTP server configured the message stays in the outbox for admins to read.
    ``attachment_invoice_id``: that invoice's stored PDF is attached when the mail is sent.
    ``dedupe_key``: one message per key, ever (a UNIQUE column): a second is not written
    and None is returned."""
    if dedupe_key is not None and db.session.scalar(
        select(OutboundEmail.id).where(OutboundEmail.dedupe_key == dedupe_key)
    ):
        return None
    body = render_template(f"email/{template}.txt", **context)
    smtp = bool(current_app.config.get("MAIL_SERVER"))
    message = OutboundEmail(
        user_id=user_id,
        to_addr=to,
        subject=subject,
        body_text=body,
        attachment_invoice_id=attachment_invoice_id,
        status=EmailStatus.PENDING if smtp else EmailStatus.OUTBOX,
        dedupe_key=dedupe_key,
    )
    try:
        with db.session.begin_nested():  # the same key written at the same moment
            db.session.add(message)
            db.session.flush()
    except IntegrityError:
        if dedupe_key is None:
            raise
        return None
    if smtp:
        enqueue_after_commit("default", "mail.send_email", message.id, job_id=f"mail:{message.id}")
    return message


def request_unsent(limit: int = 500) -> int:
    """The sweep: every message waiting to be sent (pending, refused before, or "sending"
    by a worker gone for MAIL_SENDING_STALE_SECONDS) whose send job is not waiting, running
    or failed for good gets one. Returns how many."""
    stale = utcnow() - timedelta(seconds=float(current_app.config["MAIL_SENDING_STALE_SECONDS"]))
    ids = db.session.scalars(
        select(OutboundEmail.id)
        .where(
            or_(
                OutboundEmail.status.in_((EmailStatus.PENDING, EmailStatus.FAILED)),
                (OutboundEmail.status == EmailStatus.SENDING) & (OutboundEmail.claimed_at < stale),
            ),
            requests.no_open_request("mail:", OutboundEmail.id),
        )
        .order_by(OutboundEmail.id)
        .limit(limit)
    ).all()
    for message_id in ids:
        enqueue_after_commit("default", "mail.send_email", message_id, job_id=f"mail:{message_id}")
    return len(ids)


class MailBusy(Exception):
    """Another worker is sending the message (or died doing so): try again later."""


class MailNotSent(Exception):
    """The SMTP server refused the message or did not answer in time."""


def claim_email(message_id: int) -> Message | None:
    """Mark a message that waits to be sent (pending, failed before, or "sending" by a
    worker gone for MAIL_SENDING_STALE_SECONDS) as being sent and build it (attachment
    included); None when it is sent already. Raises MailBusy while another worker may be
    sending it."""
    now = utcnow()
    stale = now - timedelta(seconds=float(current_app.config["MAIL_SENDING_STALE_SECONDS"]))
    claimed = rowcount(
        db.session.execute(
            update(OutboundEmail)
            .where(
                OutboundEmail.id == message_id,
                or_(
                    OutboundEmail.status.in_((EmailStatus.PENDING, EmailStatus.FAILED)),
                    (OutboundEmail.status == EmailStatus.SENDING)
                    & (OutboundEmail.claimed_at < stale),
                ),
            )
            .values(status=EmailStatus.SENDING, claimed_at=now)
        )
    )
    if not claimed:
        status = db.session.scalar(
            select(OutboundEmail.status).where(OutboundEmail.id == message_id)
        )
        if status == EmailStatus.SENDING:
            raise MailBusy(f"message {message_id} is being sent by another worker")
        return None
    message = db.session.get_one(OutboundEmail, message_id)
    outgoing = Message(
        subject=message.subject,
        recipients=[message.to_addr],
        body=message.body_text,
        html=message.body_html,
    )
    if message.attachment_invoice_id is not None:
        filename, content = invoice_attachment(message.attachment_invoice_id)
        outgoing.attach(filename, "application/pdf", content)
    return outgoing


def send_message(outgoing: Message) -> str | None:
    """Hand a built message to the SMTP server; the error text, or None when sent. Touches
    no database, so no transaction (or SQLite write lock) is held while SMTP talks."""
    try:
        with _TimedConnection(current_app.extensions["mail"]) as connection:
            outgoing.send(connection)
    except Exception as exc:  # SMTP errors vary; keep the reason for the admin
        return str(exc)[:1000] or exc.__class__.__name__
    return None


class _TimedConnection(flask_mail.Connection):
    """Flask-Mail's connection with a timeout on every socket operation (Flask-Mail has
    none: a server that hangs would hold the worker for the job's whole time limit)."""

    def configure_host(self) -> smtplib.SMTP:
        timeout = float(current_app.config["MAIL_TIMEOUT"])
        smtp = smtplib.SMTP_SSL if self.mail.use_ssl else smtplib.SMTP
        host = smtp(self.mail.server, self.mail.port, timeout=timeout)
        host.set_debuglevel(int(self.mail.debug))
        if self.mail.use_tls:
            host.starttls()
        if self.mail.username and self.mail.password:
            host.login(self.mail.username, self.mail.password)
        return host


def record_delivery(message_id: int, error: str | None) -> None:
    message = db.session.get_one(OutboundEmail, message_id)
    if error is None:
        message.status, message.sent_at, message.error = EmailStatus.SENT, utcnow(), None
    else:
        message.status, message.error = EmailStatus.FAILED, error


def invoice_attachment(invoice_id: int) -> tuple[str, bytes]:
    """The stored PDF of an invoice as (``<number>.pdf``, bytes)."""
    invoice, pdf = db.session.get(Invoice, invoice_id), db.session.get(InvoicePdf, invoice_id)
    if invoice is None or pdf is None:
        raise LookupError(f"invoice {invoice_id} has no stored PDF to attach")
    return f"{invoice.number}.pdf", pdf.content


def list_outbox(*, page: int = 1, per_page: int = 50):

    total = db.session.execute(select(func.count()).select_from(OutboundEmail)).scalar_one()
    items = list(
        db.session.scalars(
            select(OutboundEmail)
            .order_by(OutboundEmail.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
    )
    return Page(items, page, per_page, total)

"""Mail: written to the outbox table in the caller's transaction, sent after commit."""

from __future__ import annotations

from flask import current_app, render_template
from flask_mail import Message
from sqlalchemy import func, select, update

from ..db import Page, rowcount
from ..extensions import db
from ..extensions import mail as mail_ext
from ..models import EmailStatus, Invoice, InvoicePdf, OutboundEmail, utcnow
from ..tasks.queues import enqueue_after_commit


def queue_email(
    *,
    to: str,
    subject: str,
    template: str,
    user_id: int | None = None,
    attachment_invoice_id: int | None = None,
    **context,
) -> OutboundEmail:
    """Render ``email/<template>.txt`` and keep it; the send job runs after commit.
    With no SMTP server configured the message stays in the outbox for admins to read.
    ``attachment_invoice_id``: that invoice's stored PDF is attached when the mail is sent."""
    body = render_template(f"email/{template}.txt", **context)
    smtp = bool(current_app.config.get("MAIL_SERVER"))
    message = OutboundEmail(
        user_id=user_id,
        to_addr=to,
        subject=subject,
        body_text=body,
        attachment_invoice_id=attachment_invoice_id,
        status=EmailStatus.PENDING if smtp else EmailStatus.OUTBOX,
    )
    db.session.add(message)
    db.session.flush()
    if smtp:
        enqueue_after_commit("default", "mail.send_email", message.id, job_id=f"mail:{message.id}")
    return message


def claim_email(message_id: int) -> Message | None:
    """Mark a pending message as being sent and build it (attachment included); None if
    another worker has it or it is done."""
    claimed = rowcount(
        db.session.execute(
            update(OutboundEmail)
            .where(OutboundEmail.id == message_id, OutboundEmail.status == EmailStatus.PENDING)
            .values(status="sending")
        )
    )
    if not claimed:
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
        mail_ext.send(outgoing)
    except Exception as exc:  # SMTP errors vary; keep the reason for the admin
        return str(exc)[:1000] or exc.__class__.__name__
    return None


def record_delivery(message_id: int, error: str | None) -> None:
    message = db.session.get_one(OutboundEmail, message_id)
    if error is None:
        message.status, message.sent_at = EmailStatus.SENT, utcnow()
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

"""Mail: written to the outbox table in the caller's transaction, sent after commit."""
from __future__ import annotations

from flask import current_app, render_template
from flask_mail import Message
from sqlalchemy import update

from ..extensions import db, mail as mail_ext
from ..models import EmailStatus, OutboundEmail, utcnow


def queue_email(*, to: str, subject: str, template: str, user_id: int | None = None,
                **context) -> OutboundEmail:
    """Render ``email/<template>.txt`` and keep it; the send job runs after commit.
    With no SMTP server configured the message stays in the outbox for admins to read."""
    from jobs.queues import enqueue_after_commit  # jobs import services, not the reverse

    body = render_template(f"email/{template}.txt", **context)
    smtp = bool(current_app.config.get("MAIL_SERVER"))
    message = OutboundEmail(user_id=user_id, to_addr=to, subject=subject, body_text=body,
                            status=EmailStatus.PENDING if smtp else EmailStatus.OUTBOX)
    db.session.add(message)
    db.session.flush()
    if smtp:
        enqueue_after_commit("default", "jobs.notify.send_email", message.id,
                             job_id=f"mail:{message.id}")
    return message


def claim_email(message_id: int) -> OutboundEmail | None:
    """Mark a pending message as being sent; None if another worker has it or it is done."""
    claimed = db.session.execute(
        update(OutboundEmail).where(OutboundEmail.id == message_id,
                                    OutboundEmail.status == EmailStatus.PENDING)
        .values(status="sending")).rowcount
    return db.session.get(OutboundEmail, message_id) if claimed else None


def deliver_email(message: OutboundEmail) -> None:
    """Hand a claimed message to the SMTP server and record the outcome (caller commits)."""
    try:
        mail_ext.send(Message(subject=message.subject, recipients=[message.to_addr],
                              body=message.body_text, html=message.body_html))
    except Exception as exc:  # SMTP errors vary; keep the reason for the admin
        message.status, message.error = EmailStatus.FAILED, str(exc)[:1000]
        return
    message.status, message.sent_at = EmailStatus.SENT, utcnow()


def list_outbox(*, page: int = 1, per_page: int = 50):
    from sqlalchemy import func, select

    from .ledger import Page

    total = db.session.scalar(select(func.count()).select_from(OutboundEmail))
    items = list(db.session.scalars(select(OutboundEmail).order_by(OutboundEmail.id.desc())
                                    .limit(per_page).offset((page - 1) * per_page)))
    return Page(items, page, per_page, total)

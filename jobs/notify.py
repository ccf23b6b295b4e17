"""Mail jobs."""

from portal.extensions import db
from portal.services import mail


def send_email(message_id: int) -> None:
    outgoing = mail.claim_email(message_id)
    db.session.commit()  # the claim is durable before the SMTP server sees the message
    if outgoing is None:
        return
    error = mail.send_message(outgoing)
    mail.record_delivery(message_id, error)
    db.session.commit()

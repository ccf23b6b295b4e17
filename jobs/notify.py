"""Mail jobs."""
from portal.extensions import db
from portal.services import mail


def send_email(message_id: int) -> None:
    message = mail.claim_email(message_id)
    db.session.commit()  # the claim is durable before the SMTP server sees the message
    if message is None:
        return
    mail.deliver_email(message)
    db.session.commit()

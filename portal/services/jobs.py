"""Jobs of the account and mail services: sign-up and forgot-password mail, looked up away
from the request so that answering it takes the same work for every address; sending one
message."""

from ..extensions import db
from ..tasks.registry import task
from . import accounts, mail


@task("accounts.register")
def register(email: str, name: str = "") -> None:
    accounts.register(email, name)
    db.session.commit()


@task("accounts.send_password_reset")
def send_password_reset(email: str) -> None:
    accounts.send_password_reset(email)
    db.session.commit()


@task("mail.send_email")
def send_email(message_id: int) -> None:
    outgoing = mail.claim_email(message_id)
    db.session.commit()  # the claim is durable before the SMTP server sees the message
    if outgoing is None:
        return
    error = mail.send_message(outgoing)
    mail.record_delivery(message_id, error)
    db.session.commit()
    if error is not None:  # the job request retries it with backoff
        raise mail.MailNotSent(f"message {message_id}: {error}")

"""Jobs of the account and mail services: sign-up and forgot-password mail, looked up away
from the request so that answering it takes the same work for every address; sending one
message. And the sweep of waiting work, derived from state: whatever a job request was lost
for (or never written for) is asked for again on the daemon's schedule."""

from ..extensions import db
from ..tasks.registry import schedule, task
from . import accounts, mail
from .invoicing import documents
from .payments import settlement


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


@task("sweep.waiting_work")
def sweep_waiting_work() -> dict[str, int]:
    """Every issued invoice without its PDF gets one, every message waiting is sent, and
    every unpaid invoice of a user with a balance is settled (each unless its job is
    waiting, running, or failed for good and shown in Admin › Jobs)."""
    figures = {
        "pdfs": documents.request_missing_pdfs(),
        "mail": mail.request_unsent(),
        "settlements": settlement.request_where_money_waits(),
    }
    db.session.commit()
    return figures


# Every 5 minutes: nothing that waits for a job waits longer than that for it to be asked.
schedule(
    "sweep-waiting-work",
    cron="*/5 * * * *",
    func="sweep.waiting_work",
    queue="default",
    id_prefix="sweep",
)

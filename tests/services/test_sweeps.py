"""The sweep of waiting work (every 5 minutes on the daemon's schedule): work derived from
state is asked for again when its job request is missing (lost, pruned, never written),
and left alone while a request waits, runs or failed for good (that one waits for a person
in Admin › Jobs)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import EmailStatus, Invoice, JobRequest, OutboundEmail, User, utcnow
from portal.money import Money
from portal.services import jobs as service_jobs
from portal.services.invoicing import documents
from portal.services.invoicing import jobs as invoicing_jobs
from portal.services.payments import topups
from portal.tasks import requests, scheduler
from tests.support.payments import invoice_of, settlement_held
from tests.support.processes import query

pytestmark = pytest.mark.redis


def a_request(key: str, status: str) -> None:
    """A job request under ``key`` in ``status`` (as the relay would have left it)."""
    requests.add("default", "mail.send_email", [0], dedupe_key=key, now=utcnow())
    db.session.execute(
        JobRequest.__table__.update().where(JobRequest.dedupe_key == key).values(status=status)
    )


def test_the_sweep_is_on_the_schedule(ctx):
    assert "sweep-waiting-work" in [job.name for job in scheduler.periodic_jobs()]


def test_every_issued_invoice_without_its_pdf_gets_one_unless_its_job_waits_or_gave_up(
    app, make_user, make_invoice
):
    user = make_user()
    lost = make_invoice(user.id, pdf_status="pending")  # its request was lost
    failed_once = make_invoice(user.id, pdf_status="failed")  # retries used up, then pruned
    waiting = make_invoice(user.id, pdf_status="pending")
    gave_up = make_invoice(user.id, pdf_status="failed")
    with app.app_context():
        with db.session.no_autoflush:
            a_request(f"pdf:{waiting}", "sent")
            a_request(f"pdf:{gave_up}", "failed")
        db.session.commit()
        db.session.remove()

    with app.app_context():  # jobs run synchronously here, after the commit
        assert service_jobs.sweep_waiting_work()["pdfs"] == 2
        db.session.remove()

    def statuses():
        return {i.id: i.pdf_status for i in db.session.scalars(select(Invoice))}

    assert query(app, statuses) == {
        lost: "ready",
        failed_once: "ready",
        waiting: "pending",
        gave_up: "failed",
    }


def test_every_message_waiting_is_sent_a_stale_sending_one_too(app, make_app, make_user, smtp_sink):
    mail_app = make_app(
        MAIL_SERVER=smtp_sink.host,
        MAIL_PORT=smtp_sink.port,
        MAIL_SUPPRESS_SEND=False,
        MAIL_SENDING_STALE_SECONDS=60,
    )
    now = utcnow()
    rows = {
        "pending": (EmailStatus.PENDING, None, None),
        "refused": (EmailStatus.FAILED, None, None),
        "stale": (EmailStatus.SENDING, now - timedelta(minutes=5), None),
        "being sent": (EmailStatus.SENDING, now, None),
        "gave up": (EmailStatus.FAILED, None, "failed"),
        "sent": (EmailStatus.SENT, None, None),
    }
    with mail_app.app_context():
        for subject, (status, claimed_at, request) in rows.items():
            message = OutboundEmail(
                to_addr="someone@example.com",
                subject=subject,
                body_text="hello",
                status=status,
                claimed_at=claimed_at,
            )
            db.session.add(message)
            db.session.flush()
            if request:
                a_request(f"mail:{message.id}", request)
        db.session.commit()
        assert service_jobs.sweep_waiting_work()["mail"] == 3
        db.session.remove()
    assert sorted(m.message["Subject"] for m in smtp_sink.messages) == [
        "pending",
        "refused",
        "stale",
    ]


def test_every_unpaid_invoice_of_a_user_with_a_balance_is_settled(ctx, make_user):
    ids = make_user().id, make_user().id  # before this session's transaction (SQLite)
    rich, poor = (db.session.get(User, user_id) for user_id in ids)
    with settlement_held():  # as if the settlement jobs had been lost
        paid_by_sweep = invoice_of(rich, {"web": 100}).id
        unpaid = invoice_of(poor, {"web": 100}).id
        topups.credit_top_up(rich, Money(10_000, "USD"), reference="sweep")
        db.session.commit()
    assert service_jobs.sweep_waiting_work()["settlements"] == 1
    db.session.expire_all()
    assert db.session.get(Invoice, paid_by_sweep).status == "paid"
    assert db.session.get(Invoice, unpaid).status == "open"
    assert service_jobs.sweep_waiting_work()["settlements"] == 0


def test_a_pdf_that_could_not_be_stored_says_failed_and_the_page_stops_polling(
    app, client, auth, make_user, make_invoice, monkeypatch
):
    user = make_user()
    invoice_id = make_invoice(user.id, pdf_status="pending")

    def disk_full(*_args):
        raise OSError("could not extend file: No space left on device")

    monkeypatch.setattr(documents, "_store", disk_full)
    with app.app_context():
        with pytest.raises(OSError):
            invoicing_jobs.render_invoice_pdf(invoice_id)
        db.session.remove()
    assert query(app, lambda: db.session.get(Invoice, invoice_id).pdf_status) == "failed"
    auth.login(user)
    html = client.htmx_get(f"/invoices/{invoice_id}/pdf-status").get_data(as_text=True)
    assert "The PDF could not be prepared; we'll retry." in html
    assert "hx-get" not in html  # no more polling

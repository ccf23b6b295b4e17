"""An issued invoice's PDF: rendered once on the invoicing queue, stored with its SHA-256,
then mailed as an attachment to the invoice's user through a real SMTP server."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import threading

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from sqlalchemy import func, select

from portal.documents import invoice_pdf
from portal.errors import InvalidTransition
from portal.extensions import db
from portal.models import Invoice, InvoicePdf, OutboundEmail
from portal.services import jobs as service_jobs
from portal.services import mail
from portal.services.invoicing import documents
from portal.services.invoicing import jobs as invoicing_jobs
from portal.tasks import queues
from tests.support.documents import pdf_text


@pytest.fixture(scope="module")
def mail_app(make_app, smtp_server):  # noqa: F811
    """Mail goes to the SMTP sink; jobs run synchronously in their own app context."""
    return make_app(
        MAIL_SERVER=smtp_server.host,
        MAIL_PORT=smtp_server.port,
        RQ_ASYNC=False,
        MAIL_SUPPRESS_SEND=False,
    )


@pytest.fixture(scope="module")
def async_app(make_app):
    """Jobs wait in Redis until a worker takes them."""
    return make_app(RQ_ASYNC=True)


def read(app, fn):
    """``fn()`` in a fresh app context and session: sees only committed rows."""
    with app.app_context():
        try:
            return fn()
        finally:
            db.session.remove()


def stored(invoice_id: int):
    invoice = db.session.get(Invoice, invoice_id)
    pdf = db.session.get(InvoicePdf, invoice_id)
    return (
        invoice.pdf_status,
        invoice.pdf_sha256,
        None if pdf is None else (pdf.sha256, pdf.content, pdf.template_version, pdf.rendered_at),
    )


def test_render_stores_the_pdf_with_its_sha256_once(ctx, make_user, make_invoice):
    user = make_user()
    invoice_id = make_invoice(user.id)

    pdf = documents.render_invoice_pdf(invoice_id)
    db.session.commit()
    status, sha, (pdf_sha, content, version, rendered_at) = stored(invoice_id)
    assert (status, version) == ("ready", 1)
    assert sha == pdf_sha == hashlib.sha256(content).hexdigest() == pdf.sha256
    assert "INV-2026-" in pdf_text(content) and "$21.51" in pdf_text(content)

    # Never rendered again, even if someone changed the snapshot since.
    invoice = db.session.get(Invoice, invoice_id)
    invoice.snapshot = {**invoice.snapshot, "amount_due": "$999.00"}
    db.session.commit()
    again = documents.render_invoice_pdf(invoice_id)
    db.session.commit()
    assert again.sha256 == sha
    assert stored(invoice_id) == ("ready", sha, (sha, content, 1, rendered_at))
    assert db.session.scalar(select(func.count()).select_from(InvoicePdf)) == 1


def test_the_render_holds_no_transaction_and_no_lock(ctx, make_user, make_invoice, monkeypatch):
    """While WeasyPrint works the session is between transactions: another connection can
    take SQLite's write lock at once (no waiting), and the PDF is stored afterwards."""
    invoice_id = make_invoice(make_user().id)
    real_render, seen = invoice_pdf.render_pdf_bytes, []

    def render(snapshot):
        seen.append(db.session().in_transaction())
        if db.engine.dialect.name == "sqlite":
            other = sqlite3.connect(db.engine.url.database, timeout=0)
            other.execute("BEGIN IMMEDIATE")  # "database is locked" if the lock were held
            other.rollback()
            other.close()
        return real_render(snapshot)

    monkeypatch.setattr(invoice_pdf, "render_pdf_bytes", render)
    pdf = documents.render_invoice_pdf(invoice_id)
    db.session.commit()
    assert seen == [False]
    status, sha, (pdf_sha, content, _, _) = stored(invoice_id)
    assert status == "ready" and sha == pdf_sha == pdf.sha256
    assert "INV-2026-" in pdf_text(content)


def test_a_draft_has_no_pdf(ctx, make_user, make_invoice):
    invoice_id = make_invoice(make_user().id, draft=True)
    with pytest.raises(InvalidTransition):
        documents.render_invoice_pdf(invoice_id)
    with pytest.raises(InvalidTransition):
        documents.request_pdf(db.session.get(Invoice, invoice_id))
    db.session.rollback()
    assert stored(invoice_id) == ("none", None, None)


def test_request_pdf_enqueues_after_commit_with_a_deterministic_id(
    app, async_app, make_user, make_invoice, redis_url
):
    invoice_id = make_invoice(make_user().id)
    queue = Queue("invoicing", connection=Redis.from_url(redis_url))
    with async_app.app_context():
        documents.request_pdf(db.session.get(Invoice, invoice_id))
        db.session.flush()
        assert queue.job_ids == []  # nothing before commit
        db.session.rollback()
        db.session.commit()
        assert queue.job_ids == []  # a rollback drops it

        documents.request_pdf(db.session.get(Invoice, invoice_id))
        db.session.commit()
        db.session.remove()
    job_id = queues.rq_job_id(f"pdf:{invoice_id}")
    assert queue.job_ids == [job_id]
    assert read(async_app, lambda: stored(invoice_id)) == ("pending", None, None)

    with async_app.app_context():  # asked again while waiting: still one job
        documents.request_pdf(db.session.get(Invoice, invoice_id))
        db.session.commit()
        db.session.remove()
    assert queue.job_ids == [job_id]

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with async_app.app_context():
            assert SimpleWorker([queue], connection=queue.connection).work(burst=True)
            db.session.remove()
    finally:  # the worker installs its own; give pytest back Ctrl+C
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    status, sha, (pdf_sha, content, _, _) = read(async_app, lambda: stored(invoice_id))
    assert status == "ready" and sha == hashlib.sha256(content).hexdigest()
    # No SMTP server: the invoice mail waits in the outbox, with the PDF to attach.
    outbox = read(
        async_app,
        lambda: [
            (m.status, m.attachment_invoice_id) for m in db.session.scalars(select(OutboundEmail))
        ],
    )
    assert outbox == [("outbox", invoice_id)]
    queue.connection.close()


def test_invoice_mail_with_the_pdf_reaches_the_smtp_server(
    app,
    mail_app,
    smtp_sink,  # noqa: F811
    make_user,
    make_invoice,
):
    user = make_user(name="Alice Liddell")
    invoice_id = make_invoice(user.id)
    with mail_app.app_context():  # what finalization does; the job runs after the commit
        documents.request_pdf(db.session.get(Invoice, invoice_id))
        db.session.commit()
        db.session.remove()

    [received] = smtp_sink.wait_for(1)
    number = read(mail_app, lambda: db.session.get(Invoice, invoice_id).number)
    status, sha, (_, content, _, _) = read(mail_app, lambda: stored(invoice_id))
    assert status == "ready"
    assert received.rcpt_tos == [user.email]
    assert received.message["Subject"] == f"Invoice {number} from Example Cloud Ltd."
    body = received.text
    assert "Hello Alice Liddell," in body
    assert f"Your invoice {number} for 2026-10-01 to 2026-10-31 is attached." in body
    assert "Amount due: $21.51 by 2026-11-15" in body
    assert f"http://portal.test/invoices/{invoice_id}" in body

    [attachment] = list(received.message.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == f"{number}.pdf"
    sent = attachment.get_content()
    assert sent == content and hashlib.sha256(sent).hexdigest() == sha
    assert number in pdf_text(sent)
    assert read(
        mail_app, lambda: [(m.status, m.to_addr) for m in db.session.scalars(select(OutboundEmail))]
    ) == [("sent", user.email)]


def test_running_the_job_again_changes_nothing(
    app,
    mail_app,
    smtp_sink,  # noqa: F811
    make_user,
    make_invoice,
):
    invoice_id = make_invoice(make_user().id)
    with mail_app.app_context():
        first = invoicing_jobs.render_invoice_pdf(invoice_id)
        db.session.remove()
    smtp_sink.wait_for(1)
    before = read(mail_app, lambda: stored(invoice_id))
    with mail_app.app_context():
        assert invoicing_jobs.render_invoice_pdf(invoice_id) == first
        db.session.remove()
    assert read(mail_app, lambda: stored(invoice_id)) == before
    assert (
        read(mail_app, lambda: db.session.scalar(select(func.count()).select_from(OutboundEmail)))
        == 1
    )
    assert len(smtp_sink.messages) == 1


def test_a_paid_invoice_mail_says_nothing_is_due(
    app,
    mail_app,
    smtp_sink,  # noqa: F811
    make_user,
    make_invoice,
):
    invoice_id = make_invoice(make_user().id, status="paid", amount_due="$0.00")
    with mail_app.app_context():
        invoicing_jobs.render_invoice_pdf(invoice_id)
        db.session.remove()
    [received] = smtp_sink.wait_for(1)
    assert "Nothing is due: the invoice has been paid in full." in received.text
    assert "Amount due" not in received.text


def test_a_failed_render_is_recorded_and_mails_nothing(
    app,
    mail_app,
    smtp_sink,  # noqa: F811
    make_user,
    make_invoice,
):
    invoice_id = make_invoice(make_user().id, template_version=99)
    with mail_app.app_context():
        with pytest.raises(documents.PdfRenderFailed, match="template version 99"):
            invoicing_jobs.render_invoice_pdf(invoice_id)
        db.session.remove()
    assert read(mail_app, lambda: stored(invoice_id)) == ("failed", None, None)
    assert (
        read(mail_app, lambda: db.session.scalar(select(func.count()).select_from(OutboundEmail)))
        == 0
    )
    assert smtp_sink.messages == []


def test_a_mail_whose_pdf_is_missing_waits_until_it_exists(
    app,
    mail_app,
    smtp_sink,  # noqa: F811
    make_user,
    make_invoice,
):
    """A mail queued before its PDF (never so through the job) is not sent without it: its
    send job fails and the message stays pending; once the PDF exists a retry sends it."""
    user = make_user()
    invoice_id = make_invoice(user.id)
    with mail_app.app_context():
        invoice = db.session.get(Invoice, invoice_id)
        message_id = mail.queue_email(
            to=user.email,
            subject="Your invoice",
            template="invoice_created",
            attachment_invoice_id=invoice_id,
            inv=invoice.snapshot,
            link="x",
            nothing_due=False,
        ).id
        db.session.commit()  # the send job runs now and fails: there is no PDF
        db.session.remove()
    assert read(mail_app, lambda: db.session.get(OutboundEmail, message_id).status) == "pending"
    assert smtp_sink.messages == []

    with mail_app.app_context():
        documents.render_invoice_pdf(invoice_id)
        db.session.commit()
        service_jobs.send_email(message_id)
        db.session.remove()
    [received] = smtp_sink.wait_for(1)
    [attachment] = list(received.message.iter_attachments())
    assert attachment.get_content() == read(
        mail_app, lambda: db.session.get(InvoicePdf, invoice_id).content
    )
    assert read(mail_app, lambda: db.session.get(OutboundEmail, message_id).status) == "sent"


@pytest.mark.postgres
def test_two_concurrent_renders_store_one_pdf(app, make_user, make_invoice, monkeypatch):
    """Two workers render the same invoice at once: the first stored PDF stands and both
    return it (the database's primary key decides, not timing)."""
    invoice_id = make_invoice(make_user().id)
    both_rendered = threading.Barrier(2, timeout=30)
    names = iter(["first", "second"])

    def render(_snapshot):
        content = f"%PDF-1.7 {next(names)}".encode()
        both_rendered.wait()  # neither has stored anything yet
        return content

    monkeypatch.setattr(invoice_pdf, "render_pdf_bytes", render)
    results, errors = [], []

    def worker():
        try:
            with app.app_context():
                results.append(documents.render_invoice_pdf(invoice_id).sha256)
                db.session.commit()
                db.session.remove()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    status, sha, (pdf_sha, content, _, _) = read(app, lambda: stored(invoice_id))
    assert results == [pdf_sha, pdf_sha] and (status, sha) == ("ready", pdf_sha)
    assert pdf_sha == hashlib.sha256(content).hexdigest()
    assert read(app, lambda: db.session.scalar(select(func.count()).select_from(InvoicePdf))) == 1

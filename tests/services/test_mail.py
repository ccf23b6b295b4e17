"""Mail goes through the outbox table and leaves only after the transaction commits; a real
SMTP server (aiosmtpd on loopback) receives it."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.pool import NullPool

from portal.extensions import db
from portal.models import OutboundEmail
from portal.services import accounts

RESET_LINK = re.compile(r"http://portal\.test(/auth/reset/\S+)")


@pytest.fixture(scope="module")
def mail_app(make_app, smtp_server):  # noqa: F811
    """Mail goes to the sink; jobs run synchronously, in their own app context and session.
    (Flask-Mail suppresses sending when TESTING is on unless told otherwise.)"""
    return make_app(
        MAIL_SERVER=smtp_server.host,
        MAIL_PORT=smtp_server.port,
        RQ_ASYNC=False,
        MAIL_SUPPRESS_SEND=False,
    )


@pytest.fixture(scope="module")
def outbox_app(make_app):
    return make_app(MAIL_SERVER="")


@pytest.fixture
def statuses(mail_app):
    """Reads outbound_emails on a connection of its own, so it sees only committed rows."""
    engine = create_engine(mail_app.config["SQLALCHEMY_DATABASE_URI"], poolclass=NullPool)

    def read(*_args) -> dict[int, str]:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT id, status FROM outbound_emails")).all())

    yield read
    engine.dispose()


def test_reset_mail_is_committed_pending_then_sent_after_commit(
    app, mail_app, smtp_sink, make_user, statuses
):  # noqa: F811
    user = make_user()
    # Snapshots of the committed rows: after every commit (before the after-commit enqueue
    # runs the job) and when the SMTP server receives the message.
    after_commits: list[dict[int, str]] = []
    session_class = db.session.session_factory.class_

    def snapshot(_session):
        after_commits.append(statuses())

    event.listen(session_class, "after_commit", snapshot, insert=True)
    smtp_sink.on_message = statuses
    try:
        client = mail_app.test_client()
        response = client.submit("/auth/forgot", {"email": user.email})
    finally:
        event.remove(session_class, "after_commit", snapshot)

    assert response.status_code == 303
    [received] = smtp_sink.wait_for(1)
    with mail_app.app_context():
        row = db.session.scalars(select(OutboundEmail)).one()
        assert (row.status, row.to_addr, row.error) == ("sent", user.email, None)
        assert row.sent_at is not None
        db.session.remove()
    snapshots = [s for s in after_commits if s]
    # The request committed the row as pending before the job saw it; the job committed
    # its claim before the SMTP server got the message; then recorded the delivery.
    assert snapshots[0] == {row.id: "pending"}
    assert received.observed == {row.id: "sending"}
    assert snapshots[-1] == {row.id: "sent"}

    assert received.rcpt_tos == [user.email]
    assert received.message["To"] == user.email
    assert received.message["From"] == "billing@localhost"
    assert received.message["Subject"] == "Reset your billing portal password"
    link = RESET_LINK.search(received.text)
    assert link, received.text
    page = client.get(link.group(1))
    assert page.status_code == 200
    assert "New password" in page.get_data(as_text=True)


def test_rolled_back_transaction_sends_nothing(
    app,
    mail_app,
    smtp_sink,
    make_user,  # noqa: F811
    statuses,
):
    user = make_user()
    with mail_app.app_context():
        accounts.request_password_reset(user.email)
        db.session.rollback()
        db.session.commit()  # a later commit of the same session must not send the dropped job
        assert statuses() == {}
        assert smtp_sink.messages == []

        accounts.request_password_reset(user.email)
        db.session.commit()
        db.session.remove()
    [received] = smtp_sink.wait_for(1)
    assert received.rcpt_tos == [user.email]
    assert list(statuses().values()) == ["sent"]


def test_without_smtp_server_mail_stays_in_outbox(app, outbox_app, smtp_sink, make_user):  # noqa: F811
    user = make_user()
    admin = make_user(admin=True)
    client = outbox_app.test_client()
    assert client.submit("/auth/forgot", {"email": user.email}).status_code == 303
    with outbox_app.app_context():
        row = db.session.scalars(select(OutboundEmail)).one()
        assert (row.status, row.to_addr, row.sent_at) == ("outbox", user.email, None)
        message_id = row.id
        db.session.remove()

    assert (
        client.submit("/auth/login", {"email": admin.email, "password": admin.password}).status_code
        == 303
    )
    listing = client.get("/admin/outbox")
    assert listing.status_code == 200
    html = listing.get_data(as_text=True)
    row_html = re.search(rf'<tr id="message-{message_id}">.*?</tr>', html, re.S)
    assert row_html, html
    assert user.email in row_html.group(0)
    assert "Reset your billing portal password" in row_html.group(0)
    assert "<td>outbox</td>" in row_html.group(0)

    shown = client.get(f"/admin/outbox/{message_id}").get_data(as_text=True)
    assert RESET_LINK.search(shown)
    assert smtp_sink.messages == []

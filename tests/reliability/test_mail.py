"""Mail under a bad SMTP server: one that hangs, then refuses, then accepts. Every message
is delivered once, none holds a worker longer than MAIL_TIMEOUT, and a message left
"sending" by a worker that died is sent again."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from portal.extensions import db
from portal.models import JobRequest, OutboundEmail, utcnow
from portal.services import accounts
from portal.tasks import relay
from tests.support.processes import query
from tests.support.smtp import smtp_server, smtp_sink  # noqa: F401  (fixtures)

pytestmark = pytest.mark.redis


class BadSmtp:
    """A loopback TCP server in front of the SMTP sink: ``mode`` "hang" accepts and never
    answers, "refuse" answers 421 and hangs up, "forward" passes the bytes to the sink."""

    def __init__(self, sink_port: int):
        self.sink_port, self.mode = sink_port, "hang"
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "hang":
                self.held.append(client)
            elif self.mode == "refuse":
                client.sendall(b"421 try again later\r\n")
                client.close()
            else:
                upstream = socket.create_connection(("127.0.0.1", self.sink_port))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, target):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for client in self.held:
            client.close()


@pytest.fixture
def bad_smtp(smtp_sink):  # noqa: F811
    server = BadSmtp(smtp_sink.port)
    yield server
    server.close()


def mails(app) -> list[tuple]:
    return query(
        app,
        lambda: [
            (m.status, m.error is not None)
            for m in db.session.scalars(select(OutboundEmail).order_by(OutboundEmail.id))
        ],
    )


def requests_of(app) -> list[tuple]:
    return query(
        app,
        lambda: [
            (r.status, r.attempts)
            for r in db.session.scalars(select(JobRequest).order_by(JobRequest.id))
        ],
    )


def retry_now(app) -> dict:
    def due():
        db.session.execute(update(JobRequest).values(next_attempt_at=utcnow()))
        db.session.commit()
        return relay.relay(grace=timedelta(0))

    return query(app, due)


def test_hanging_then_refusing_then_accepting_smtp_delivers_each_mail_once(
    app,
    make_app,
    make_user,
    bad_smtp,
    smtp_sink,  # noqa: F811
):
    mail_app = make_app(
        MAIL_SERVER="127.0.0.1",
        MAIL_PORT=bad_smtp.port,
        MAIL_SUPPRESS_SEND=False,
        MAIL_TIMEOUT="0.5",
        JOB_RETRY_SECONDS="60",
    )
    user = make_user()
    started = time.monotonic()
    with mail_app.app_context():
        accounts.request_password_reset(user.email)
        db.session.commit()  # the job runs now (synchronous queue) and times out
        db.session.remove()
    assert time.monotonic() - started < 10  # bounded by MAIL_TIMEOUT, not the job limit
    assert mails(app) == [("failed", True)]
    assert requests_of(app) == [("done", 0), ("requested", 1)]  # register job, then the mail

    bad_smtp.mode = "refuse"
    retry_now(mail_app)
    assert mails(app) == [("failed", True)]
    assert requests_of(app)[1] == ("requested", 2)

    bad_smtp.mode = "forward"
    retry_now(mail_app)
    [received] = smtp_sink.wait_for(1)
    assert received.rcpt_tos == [user.email]
    assert mails(app) == [("sent", False)]
    assert requests_of(app)[1] == ("done", 2)
    retry_now(mail_app)  # nothing left to send
    time.sleep(0.3)
    assert len(smtp_sink.messages) == 1


def test_a_mail_left_sending_by_a_dead_worker_is_sent_once_it_is_stale(
    app,
    make_app,
    make_user,
    smtp_sink,  # noqa: F811
):
    mail_app = make_app(
        MAIL_SERVER=smtp_sink.host,
        MAIL_PORT=smtp_sink.port,
        MAIL_SUPPRESS_SEND=False,
        MAIL_SENDING_STALE_SECONDS="60",
    )
    user = make_user()
    with mail_app.app_context():
        accounts.request_password_reset(user.email)
        db.session.commit()
        smtp_sink.wait_for(1)
        smtp_sink.clear()
        # As a worker killed mid-send leaves it.
        db.session.execute(update(OutboundEmail).values(status="sending", claimed_at=utcnow()))
        db.session.execute(
            update(JobRequest)
            .where(JobRequest.task == "mail.send_email")
            .values(status="requested")
        )
        db.session.commit()
        db.session.remove()
    retry_now(mail_app)  # claimed a moment ago: another worker may be on it
    assert smtp_sink.messages == []
    assert mails(app) == [("sending", False)]

    def gone_long_ago():
        db.session.execute(update(OutboundEmail).values(claimed_at=utcnow() - timedelta(minutes=2)))
        db.session.commit()

    query(mail_app, gone_long_ago)
    retry_now(mail_app)
    [received] = smtp_sink.wait_for(1)
    assert received.rcpt_tos == [user.email]
    assert mails(app) == [("sent", False)]

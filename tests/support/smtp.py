"""A real SMTP server on loopback (aiosmtpd) that keeps every message it receives.

Import the fixtures into a test module (``from tests.support.smtp import smtp_sink``):
``smtp_server`` is one server per test session; ``smtp_sink`` is the same server, emptied
for the test that asks for it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    observed: object = None  # what SmtpSink.on_message returned when this one arrived

    @property
    def text(self) -> str:
        """The plain-text body."""
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""


@dataclass
class SmtpSink:
    host: str = "127.0.0.1"
    port: int = 0
    messages: list[Received] = field(default_factory=list)
    # Called in the server's thread as each message arrives (before the server answers 250).
    on_message: Callable[[Received], object] | None = None
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        received = Received(
            envelope.mail_from,
            list(envelope.rcpt_tos),
            message_from_bytes(envelope.content, policy=policy.default),
        )
        if self.on_message is not None:
            received.observed = self.on_message(received)
        with self._arrived:
            self.messages.append(received)
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} message(s), the SMTP sink got "
                        f"{len(self.messages)} in {timeout}s"
                    )
                self._arrived.wait(left)
            return list(self.messages)

    def clear(self) -> None:
        with self._arrived:
            self.messages.clear()
        self.on_message = None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_sink(host: str = "127.0.0.1", attempts: int = 5) -> tuple[SmtpSink, Controller]:
    """Start a sink on a free port (another process may take the port first: retry)."""
    for attempt in range(attempts):
        sink = SmtpSink(host=host, port=free_port(host))
        controller = Controller(sink, hostname=host, port=sink.port)
        try:
            controller.start()
        except (OSError, RuntimeError):
            if attempt == attempts - 1:
                raise
            continue
        return sink, controller
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def smtp_server():
    sink, controller = start_sink()
    yield sink
    controller.stop()


@pytest.fixture
def smtp_sink(smtp_server) -> SmtpSink:
    smtp_server.clear()
    yield smtp_server
    smtp_server.clear()

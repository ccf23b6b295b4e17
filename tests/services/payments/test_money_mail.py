"""The mail people expect about money, received by a real SMTP server (aiosmtpd on loopback),
with cards charged on the Stripe stand-in over HTTP: a receipt for every card charge and
every top-up, a notice when an invoice is voided, and payment-failure mail at most once per
invoice per day (the outbox's UNIQUE key, not a timer)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Invoice, OutboundEmail, User, utcnow
from portal.money import Money
from portal.services.invoicing import invoices
from portal.services.payments import card_charges, settlement
from tests.support.payments import SECRET_KEY, TEST_CARDS, add_card, invoice_of
from tests.support.smtp import smtp_server, smtp_sink  # noqa: F401


@pytest.fixture
def mail_app(make_app, smtp_server, standin):  # noqa: F811
    """Cards on the stand-in, mail to the sink, jobs run at once."""
    return make_app(
        MAIL_SERVER=smtp_server.host,
        MAIL_PORT=smtp_server.port,
        MAIL_SUPPRESS_SEND=False,
        RQ_ASYNC=False,
        STRIPE_SECRET_KEY=SECRET_KEY,
        STRIPE_WEBHOOK_SECRET="whsec_unused",
        STRIPE_API_BASE=standin.base_url,
    )


@pytest.fixture
def mctx(mail_app):
    with mail_app.app_context():
        yield mail_app
        db.session.remove()


def subjects(sink) -> list[str]:
    return [m.message["Subject"] for m in sink.messages]


def test_a_top_up_and_a_card_payment_each_get_a_receipt(app, mctx, make_user, smtp_sink):  # noqa: F811
    user = db.session.get_one(User, make_user().id)
    card = add_card(user).card
    attempt, _ = card_charges.top_up_with_card(
        user, card.id, Money(2500, "USD"), nonce="n1", return_url="http://portal.test/wallet/"
    )
    db.session.commit()
    assert attempt.status == "succeeded"
    [receipt] = smtp_sink.wait_for(1)
    assert receipt.message["Subject"] == "Receipt: $25.00 added to your prepaid balance"
    assert receipt.rcpt_tos == [user.email]
    assert "Amount:   $25.00" in receipt.text and "Card:     Visa •••• 4242" in receipt.text

    smtp_sink.clear()
    spent = db.session.get_one(User, user.id)
    invoice = invoice_of(spent, {"big": 744})  # $37.20: $25.00 prepaid, $12.20 card
    settlement.settle(user.id, invoice_id=invoice.id)
    db.session.commit()
    assert invoice.total_minor == 3720
    received = smtp_sink.wait_for(1)
    receipts = [m for m in received if m.message["Subject"].startswith("Receipt:")]
    assert [m.message["Subject"] for m in receipts] == [
        f"Receipt: $12.20 paid for {invoice.number}"
    ]
    assert f"Invoice:  {invoice.number}" in receipts[0].text
    assert "Card:     Visa •••• 4242" in receipts[0].text


def test_a_voided_invoice_is_announced_once(app, mctx, make_user, smtp_sink):  # noqa: F811
    user = db.session.get_one(User, make_user().id)
    invoice = invoice_of(user, {"web": 100})
    smtp_sink.clear()
    invoices.void_invoice(invoice, reason="Billed twice by mistake")
    db.session.commit()
    [notice] = smtp_sink.wait_for(1)
    assert notice.message["Subject"] == f"Invoice {invoice.number} is void"
    assert "you do not owe it" in notice.text and "Billed twice by mistake" in notice.text
    rows = db.session.scalars(
        select(OutboundEmail).where(OutboundEmail.subject == f"Invoice {invoice.number} is void")
    ).all()
    assert len(rows) == 1


def test_payment_failure_mail_at_most_once_per_invoice_per_day(
    app,
    mctx,
    make_user,
    smtp_sink,  # noqa: F811
    monkeypatch,
):
    user = db.session.get_one(User, make_user().id)
    add_card(user, TEST_CARDS["charge_declined"])
    invoice = invoice_of(user, {"web": 100})
    invoice_id, number = invoice.id, invoice.number
    for _ in range(4):  # Pay now pressed again and again, the nightly run: four failed rounds
        settlement.settle(user.id, invoice_id=invoice_id)
        db.session.commit()
    failed = f"We could not collect payment for {number}"

    def failure_mails() -> int:
        return len(
            db.session.scalars(select(OutboundEmail).where(OutboundEmail.subject == failed)).all()
        )

    assert failure_mails() == 1
    [mail] = [m for m in smtp_sink.wait_for(1) if m.message["Subject"] == failed]
    assert "Visa •••• 0341: declined" in mail.text
    assert db.session.get_one(Invoice, invoice_id).status == "open"

    # The next day a failed round mails again, once.
    tomorrow = utcnow() + timedelta(days=1)
    monkeypatch.setattr(card_charges, "utcnow", lambda: tomorrow)
    for _ in range(2):
        settlement.settle(user.id, invoice_id=invoice_id)
        db.session.commit()
    assert failure_mails() == 2

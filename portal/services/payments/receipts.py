"""Receipts: one mail for every card charge and every top-up, written in the transaction
that books the money (so a payment booked once is receipted once)."""

from __future__ import annotations

from flask import current_app

from ...models import Invoice, User
from ...money import Money
from .. import mail


def card_payment(user: User, *, amount: Money, card: str, invoice: Invoice, reference: str) -> None:
    """``card`` paid ``amount`` for ``invoice`` (gateway payment ``reference``)."""
    mail.queue_email(
        to=user.email,
        subject=f"Receipt: {amount.format()} paid for {invoice.number}",
        template="receipt",
        user_id=user.id,
        dedupe_key=f"receipt:{reference}",
        amount=amount,
        card=card,
        invoice=invoice,
        reference=reference,
        link=f"{current_app.config['PUBLIC_URL']}/invoices/{invoice.id}",
    )


def top_up(user: User, *, amount: Money, card: str | None, reference: str) -> None:
    """A top-up of ``amount`` reached the prepaid balance."""
    mail.queue_email(
        to=user.email,
        subject=f"Receipt: {amount.format()} added to your prepaid balance",
        template="receipt",
        user_id=user.id,
        dedupe_key=f"receipt:{reference}",
        amount=amount,
        card=card or "card",
        invoice=None,
        reference=reference,
        link=f"{current_app.config['PUBLIC_URL']}/wallet/",
    )

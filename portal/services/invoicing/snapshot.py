"""The plain data an invoice PDF is rendered from, with every amount already formatted."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from flask import current_app

from ...models import Invoice, InvoiceStatus, User
from ...models.invoices import display_status
from ...money import decimal_to_micros, format_micros
from .formatting import money_formatter
from .lines import LineDraft

S = InvoiceStatus

# The snapshot is a JSON document (stored in a JSON column, read by the PDF template): its
# values are strings, lists and nested documents, as the template expects them.
Snapshot = dict[str, Any]


class Customer(Protocol):
    """Who an invoice is for: a User, or a row with these columns (bulk runs)."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def email(self) -> str: ...


def customer_data(user: Customer) -> Snapshot:
    """ "Bill to": the billing details the user entered (company, address, tax id), as they
    are when the invoice is issued; each invoice keeps its own copy."""
    company = getattr(user, "billing_company", None) or ""
    address = getattr(user, "billing_address", None) or ""
    return {
        "name": user.name or user.email,
        "email": user.email,
        "account": str(user.id),
        "company": company,
        "address": [line.strip() for line in address.splitlines() if line.strip()],
        "tax_id": getattr(user, "billing_tax_id", None) or "",
    }


def seller() -> Snapshot:
    cfg = current_app.config
    return {
        "name": cfg.get("SELLER_NAME", ""),
        "address": list(cfg.get("SELLER_ADDRESS_LINES", [])),
        "email": cfg.get("SELLER_EMAIL", ""),
        "tax_id": cfg.get("SELLER_TAX_ID", ""),
    }


def snapshot_data(
    *,
    number: str | None,
    status: S,
    issued_at: datetime,
    due_at: datetime | None,
    period_start: datetime,
    period_end: datetime,
    seller: Snapshot,
    user: Customer,
    currency: str,
    lines: list[LineDraft],
    subtotal: int,
    credits: int,
    total: int,
    amount_paid: int,
    payments: list[tuple[datetime, str, int, str]],
    locale: str | None = None,
) -> Snapshot:
    """The plain data a PDF is rendered from. ``lines`` as stored; ``payments``: (created
    at, tender, amount in minor units, reference), those that make up ``amount_paid`` (the
    credits applied at issue are ``credits``, not a payment). ``number`` None: the invoice is
    numbered after its snapshot is written (an invoice run's are), so the snapshot leaves it
    out and the PDF takes it from the invoice (``with_number``)."""
    locale = locale or current_app.config["BABEL_DEFAULT_LOCALE"]
    fmt = money_formatter(currency, locale)
    data: Snapshot = {"template_version": 1}
    if number is not None:
        data["number"] = number
    return data | {
        "status": status.label,
        "status_display": display_status(status, amount_paid),
        "issued_at": issued_at.date().isoformat(),
        "due_at": due_at.date().isoformat() if due_at else None,
        "period_start": period_start.date().isoformat(),
        "period_end": (period_end - timedelta(days=1)).date().isoformat(),
        "seller": {**seller, "address": list(seller["address"])},
        "customer": customer_data(user),
        "currency": currency,
        "lines": [
            {
                "kind": kind,
                "description": description,
                "quantity": quantity,
                "unit": unit,
                "unit_price": _usage_price(unit_price, currency, locale),
                "amount": fmt(amount),
            }
            for kind, _, _, description, quantity, unit, unit_price, amount in lines
        ],
        "subtotal": fmt(subtotal),
        "credits": fmt(credits),
        "total": fmt(total),
        "amount_paid": fmt(amount_paid),
        "amount_due": fmt(total - amount_paid),
        "payments": [
            {
                "date": created_at.date().isoformat(),
                "tender": tender,
                "amount": fmt(amount),
                "reference": reference,
            }
            for created_at, tender, amount, reference in payments
        ],
    }


def with_number(invoice: Invoice) -> Snapshot:
    """An issued invoice's snapshot as its PDF shows it: with the invoice's number."""
    if invoice.snapshot is None:
        raise ValueError(f"invoice {invoice.id} is a draft: it has no snapshot")
    return invoice.snapshot | {"number": invoice.number}


def build_snapshot(invoice: Invoice, user: User) -> Snapshot:
    if invoice.finalized_at is None:
        raise ValueError(f"invoice {invoice.id} is a draft: it has no snapshot")
    return snapshot_data(
        number=invoice.number,
        status=S(invoice.status),
        issued_at=invoice.finalized_at,
        due_at=invoice.due_at,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        seller=seller(),
        user=user,
        currency=invoice.currency,
        lines=[
            LineDraft(
                l.kind,
                l.deployment_id,
                l.resource,
                l.description,
                l.quantity,
                l.unit,
                l.unit_price,
                l.amount_minor,
            )
            for l in invoice.lines
        ],
        subtotal=invoice.subtotal_minor,
        credits=invoice.credits_minor,
        total=invoice.total_minor,
        amount_paid=invoice.amount_paid_minor,
        payments=[
            (p.created_at, p.tender, p.amount_minor, p.reference)
            for p in invoice.settlement_payments
        ],
    )


def usage_price(unit_price: str, currency: str) -> str:
    return _usage_price(unit_price, currency, current_app.config["BABEL_DEFAULT_LOCALE"])


@functools.lru_cache(maxsize=4096)
def _usage_price(unit_price: str, currency: str, locale: str) -> str:
    # Unit prices are the price versions' rates (or their blends): few, and formatted for
    # every line of every invoice.
    return format_micros(decimal_to_micros(Decimal(unit_price)), currency, locale)

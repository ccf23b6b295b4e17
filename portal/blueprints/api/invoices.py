"""Invoices in the JSON API: the seed's Invoice fields (money as a decimal string, integer
minor units and the currency), lines and payments, the PDF; admins generate, void and record
offline payments. Bare dates in a request are whole days: period_end "2025-01-31" ends at
2025-02-01T00:00:00Z, which is how period_end is returned (the exclusive end instant)."""

from __future__ import annotations

from flask import current_app, g

from ...errors import NotFound, ValidationFailed
from ...models import Invoice, TokenScope
from ...services import calendar
from ...services.invoicing import documents, invoices, run
from ..helpers import pdf_response
from . import bp
from .auth import acting_user, find_user
from .fields import idempotency_key, iso, to_money
from .models import (
    AdminInvoiceQuery,
    CreateInvoice,
    InvoiceDetail,
    InvoiceLineOut,
    InvoiceOut,
    InvoicePage,
    InvoicePaymentOut,
    InvoiceQuery,
    OfflinePayment,
    VoidInvoice,
)
from .spec import operation

USER, ADMIN = TokenScope.USER, TokenScope.ADMIN


def _fields(invoice: Invoice) -> dict:
    return dict(
        id=invoice.id,
        user_id=invoice.user_id,
        invoice_number=invoice.number,
        period_start=iso(invoice.period_start),
        period_end=iso(invoice.period_end),
        **invoice.subtotal.to_json("subtotal"),
        **invoice.credits.to_json("credits"),
        **invoice.total.to_json("total"),
        **invoice.amount_paid.to_json("amount_paid"),
        **invoice.amount_due.to_json("amount_due"),
        currency=invoice.currency,
        status=invoice.invoice_status.label,
        status_display=invoice.display_status,
        due_date=iso(invoice.due_at),
        paid_at=iso(invoice.paid_at),
        created_at=iso(invoice.created_at),
        issued_at=iso(invoice.finalized_at),
        voided_at=iso(invoice.voided_at),
        void_reason=invoice.void_reason,
        pdf_status=invoice.pdf_status,
        pdf_sha256=invoice.pdf_sha256,
    )


def invoice_json(invoice: Invoice) -> InvoiceOut:
    return InvoiceOut(**_fields(invoice))


def detail_fields(invoice: Invoice) -> dict:
    return dict(
        **_fields(invoice),
        lines=[
            InvoiceLineOut(
                position=line.position,
                kind=line.kind,
                description=line.description,
                resource=line.resource,
                quantity=line.quantity,
                unit=line.unit,
                unit_price=line.unit_price,
                **invoice.money(line.amount_minor).to_json("amount"),
            )
            for line in invoice.lines
        ],
        payments=[
            InvoicePaymentOut(
                id=p.id,
                tender=p.tender,
                **p.amount.to_json("amount"),
                currency=p.currency,
                reference=p.reference,
                created_at=iso(p.created_at),
            )
            for p in invoice.settlement_payments
        ],
    )


def invoice_detail(invoice: Invoice) -> InvoiceDetail:
    return InvoiceDetail(**detail_fields(invoice))


def _page_json(page) -> InvoicePage:
    return InvoicePage(
        items=[invoice_json(i) for i in page.items],
        page=page.page,
        per_page=page.per_page,
        total=page.total,
    )


def _owner():
    """User tokens see their own invoices only (another's answers 404); admin tokens any."""
    return None if g.api_token.scope == ADMIN else g.api_user


@bp.get("/invoices")
@operation(
    summary="Invoices, newest first",
    tag="Invoices",
    scopes=(USER, ADMIN),
    query=InvoiceQuery,
    responses={200: InvoicePage},
    errors=(404,),
)
def list_invoices(query: InvoiceQuery):
    user = acting_user(query.user_id)
    return _page_json(
        invoices.list_invoices(
            user=user, status=query.status, page=query.page, per_page=query.per_page
        )
    )


@bp.get("/invoices/<int:invoice_id>")
@operation(
    summary="An invoice with its lines and payments",
    tag="Invoices",
    scopes=(USER, ADMIN),
    responses={200: InvoiceDetail},
)
def show_invoice(invoice_id: int):
    """User tokens see their own invoices only (another's is 404)."""
    return invoice_detail(invoices.get_for_owner(_owner(), invoice_id))


@bp.post("/invoices")
@bp.post("/admin/invoices")
@operation(
    summary="Generate a user's invoice for a billing period",
    tag="Invoices",
    scopes=(ADMIN,),
    body=CreateInvoice,
    responses={201: InvoiceDetail, 200: InvoiceDetail},
    errors=(409,),
)
def create_invoice(body: CreateInvoice):
    """The seed's manual invoice: {user_id, period_start, period_end} naming one billing
    period that has ended. 201 when made now, 200 when it existed, 409 when there is
    nothing to invoice."""
    try:
        user = find_user(body.user_id)
    except NotFound:
        raise ValidationFailed.field("user_id", f"no user {body.user_id!r}") from None
    invoice, created = run.generate_for_user(
        user, body.period_start, body.period_end, created_by=g.api_user
    )
    return invoice_detail(invoice), 201 if created else 200


@bp.get("/admin/invoices")
@operation(
    summary="Every user's invoices",
    tag="Invoices",
    scopes=(ADMIN,),
    query=AdminInvoiceQuery,
    responses={200: InvoicePage},
    errors=(404,),
)
def admin_list_invoices(query: AdminInvoiceQuery):
    user = find_user(query.user_id) if query.user_id else None
    period_start = None
    if query.period:
        try:
            period_start, _ = calendar.parse_period(
                query.period, current_app.config["BILLING"].invoice_day
            )
        except ValueError as exc:
            raise ValidationFailed.field("period", str(exc)) from None
    return _page_json(
        invoices.list_invoices(
            user=user,
            status=query.status,
            period_start=period_start,
            page=query.page,
            per_page=query.per_page,
        )
    )


@bp.post("/admin/invoices/<int:invoice_id>/void")
@operation(
    summary="Void an unpaid invoice",
    tag="Invoices",
    scopes=(ADMIN,),
    body=VoidInvoice,
    responses={200: InvoiceDetail},
    errors=(409,),
)
def void_invoice(invoice_id: int, body: VoidInvoice):
    """Its ledger posting is reversed; credits it applied come back as a new credit."""
    invoice = invoices.void_invoice(
        invoices.get_for_owner(None, invoice_id), reason=body.reason, voided_by=g.api_user
    )
    return invoice_detail(invoice)


@bp.post("/admin/invoices/<int:invoice_id>/payments")
@operation(
    summary="Record an offline payment",
    tag="Invoices",
    scopes=(ADMIN,),
    body=OfflinePayment,
    responses={200: InvoiceDetail},
    errors=(409,),
    idempotency_key="the same key records the payment once",
)
def record_payment(invoice_id: int, body: OfflinePayment):
    """An offline payment (bank transfer), booked through the ledger."""
    invoice = invoices.get_for_owner(None, invoice_id)
    client_key = idempotency_key()
    invoices.record_offline_payment(
        invoice,
        amount=to_money(body.amount, invoice.currency, "amount"),
        reference=body.reference,
        recorded_by=g.api_user,
        idempotency_key=f"api:{g.api_user.id}:{client_key}" if client_key else None,
    )
    return invoice_detail(invoice)


@bp.get("/invoices/<int:invoice_id>/pdf")
@operation(
    summary="The issued invoice's PDF",
    tag="Invoices",
    scopes=(USER, ADMIN),
    responses={200: None},
    errors=(409,),
    media={200: {"application/pdf": "the stored PDF, as an attachment <number>.pdf"}},
)
def invoice_pdf(invoice_id: int):
    """User tokens get their own invoices only (else 404), admin tokens any; 409
    pdf_not_ready while it is being made."""
    return pdf_response(documents.get_invoice_pdf(invoice_id, user=_owner()))

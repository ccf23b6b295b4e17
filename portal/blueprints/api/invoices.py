"""Invoices in the JSON API: the seed's Invoice fields (money as a decimal string, integer
minor units and the currency), lines and payments, the PDF; admins generate, void and record
offline payments. Bare dates in a request are whole days: period_end "2025-01-31" ends at
2025-02-01T00:00:00Z, which is how period_end is returned (the exclusive end instant)."""
from __future__ import annotations

from flask import current_app, g, jsonify, request

from ...extensions import db
from ...models import Invoice, TokenScope
from ...services import accounts, invoice_documents, invoicing, usage
from ...services.errors import NotFound, ValidationFailed
from ..helpers import pdf_response
from . import bp
from .auth import acting_user, require_token
from .parsing import datetime_field, iso, json_body, money_field, page_args, required

USER, ADMIN = TokenScope.USER, TokenScope.ADMIN
STATUSES = ("draft", "sent", "paid", "overdue", "void")


def invoice_json(invoice: Invoice, *, detail: bool = False) -> dict:
    body = {
        "id": invoice.id, "user_id": invoice.user_id, "invoice_number": invoice.number,
        "period_start": iso(invoice.period_start), "period_end": iso(invoice.period_end),
        **invoice.subtotal.to_json("subtotal"), **invoice.credits.to_json("credits"),
        **invoice.total.to_json("total"), **invoice.amount_paid.to_json("amount_paid"),
        **invoice.amount_due.to_json("amount_due"), "currency": invoice.currency,
        "status": invoice.invoice_status.label, "due_date": iso(invoice.due_at),
        "paid_at": iso(invoice.paid_at), "created_at": iso(invoice.created_at),
        "issued_at": iso(invoice.finalized_at), "voided_at": iso(invoice.voided_at),
        "void_reason": invoice.void_reason, "pdf_status": invoice.pdf_status,
        "pdf_sha256": invoice.pdf_sha256,
    }
    if detail:
        body["lines"] = [
            {"position": line.position, "kind": line.kind, "description": line.description,
             "resource": line.resource, "quantity": line.quantity, "unit": line.unit,
             "unit_price": line.unit_price, **invoice.money(line.amount_minor).to_json("amount")}
            for line in invoice.lines]
        body["payments"] = [
            {"id": p.id, "tender": p.tender, **p.amount.to_json("amount"),
             "currency": p.currency, "reference": p.reference, "created_at": iso(p.created_at)}
            for p in invoice.payments]
    return body


def _page_json(page) -> dict:
    return {"items": [invoice_json(i) for i in page.items], "page": page.page,
            "per_page": page.per_page, "total": page.total}


def _status_arg() -> str | None:
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise ValidationFailed.field("status", f"must be one of {', '.join(STATUSES)}")
    return status


def _owner():
    """User tokens see their own invoices only (another's answers 404); admin tokens any."""
    return None if g.api_token.scope == ADMIN else g.api_user


@bp.get("/invoices")
@require_token(USER, ADMIN)
def list_invoices():
    user = acting_user(request.args.get("user_id"))
    page, per_page = page_args()
    return jsonify(_page_json(invoicing.list_invoices(user=user, status=_status_arg(),
                                                      page=page, per_page=per_page)))


@bp.get("/invoices/<int:invoice_id>")
@require_token(USER, ADMIN)
def show_invoice(invoice_id: int):
    return jsonify(invoice_json(invoicing.get_invoice(invoice_id, user=_owner()), detail=True))


@bp.post("/invoices")
@bp.post("/admin/invoices")
@require_token(ADMIN)
def create_invoice():
    """The seed's manual invoice: {user_id, period_start, period_end} naming one billing
    period that has ended. 201 when made now, 200 when it existed."""
    data = json_body()
    user_ref = required(data, "user_id")
    for name in ("period_start", "period_end"):
        required(data, name)
    start = datetime_field(data, "period_start")
    end = datetime_field(data, "period_end", end_of_day=True)  # a bare date: that whole day
    try:
        user = accounts.find_user(str(user_ref))
    except NotFound:
        raise ValidationFailed.field("user_id", f"no user {user_ref!r}") from None
    invoice, created = invoicing.generate_for_user(user, start, end, created_by=g.api_user)
    db.session.commit()
    return jsonify(invoice_json(invoice, detail=True)), 201 if created else 200


@bp.get("/admin/invoices")
@require_token(ADMIN)
def admin_list_invoices():
    user_ref = request.args.get("user_id")
    user = accounts.find_user(user_ref) if user_ref else None
    period_start = None
    if request.args.get("period"):
        try:
            period_start, _ = usage.parse_period(request.args["period"],
                                                 current_app.config["BILLING"].invoice_day)
        except ValueError as exc:
            raise ValidationFailed.field("period", str(exc)) from None
    page, per_page = page_args()
    return jsonify(_page_json(invoicing.list_invoices(
        user=user, status=_status_arg(), period_start=period_start, page=page,
        per_page=per_page)))


@bp.post("/admin/invoices/<int:invoice_id>/void")
@require_token(ADMIN)
def void_invoice(invoice_id: int):
    data = json_body()
    invoice = invoicing.void_invoice(invoicing.get_invoice(invoice_id),
                                     reason=str(data.get("reason") or ""), voided_by=g.api_user)
    db.session.commit()
    return jsonify(invoice_json(invoice, detail=True))


@bp.post("/admin/invoices/<int:invoice_id>/payments")
@require_token(ADMIN)
def record_payment(invoice_id: int):
    """An offline payment (bank transfer): {amount, reference}, booked through the ledger."""
    data = json_body()
    invoice = invoicing.get_invoice(invoice_id)
    client_key = request.headers.get("Idempotency-Key", "").strip()
    invoicing.record_offline_payment(invoice, amount=money_field(data, "amount", invoice.currency),
                                     reference=str(data.get("reference") or ""),
                                     recorded_by=g.api_user,
                                     idempotency_key=f"api:{g.api_user.id}:{client_key}"
                                     if client_key else None)
    db.session.commit()
    return jsonify(invoice_json(invoice, detail=True))


@bp.get("/invoices/<int:invoice_id>/pdf")
@require_token(TokenScope.USER, TokenScope.ADMIN)
def invoice_pdf(invoice_id: int):
    """The stored PDF: user tokens get their own invoices only (else 404), admin tokens any."""
    owner = None if g.api_token.scope == TokenScope.ADMIN else g.api_user
    invoice, document = invoice_documents.get_invoice_pdf(invoice_id, user=owner)
    return pdf_response(invoice, document)

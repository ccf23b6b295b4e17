"""Invoices in the JSON API."""
from __future__ import annotations

from flask import g

from ...models import TokenScope
from ...services import invoice_documents
from ..helpers import pdf_response
from . import bp
from .auth import require_token


@bp.get("/invoices/<int:invoice_id>/pdf")
@require_token(TokenScope.USER, TokenScope.ADMIN)
def invoice_pdf(invoice_id: int):
    """The stored PDF: user tokens get their own invoices only (else 404), admin tokens any."""
    owner = None if g.api_token.scope == TokenScope.ADMIN else g.api_user
    invoice, document = invoice_documents.get_invoice_pdf(invoice_id, user=owner)
    return pdf_response(invoice, document)

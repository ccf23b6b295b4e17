"""Vouchers in the JSON API."""

from __future__ import annotations

from flask import Response, current_app, g, stream_with_context

from ...models import TokenScope
from ...services.wallet import credits, vouchers
from ..limits import voucher_redeem_limit
from . import bp
from .fields import iso, to_money
from .models import (
    CreateVouchers,
    Redeem,
    RedeemOut,
    VoucherBatch,
    VoucherOut,
    VoucherPage,
    VoucherQuery,
)
from .spec import operation

USER, ADMIN = TokenScope.USER, TokenScope.ADMIN


@bp.post("/vouchers/redeem")
@operation(
    summary="Redeem a voucher code",
    tag="Vouchers",
    scopes=(USER,),
    body=Redeem,
    responses={200: RedeemOut},
    errors=(404, 409, 429),
)
@voucher_redeem_limit  # one counter with the Wallet form's
def redeem_voucher(body: Redeem):
    """Into the voucher balance: 404 unknown code, 409 used or expired, 429 after
    VOUCHER_RATE_LIMIT attempts (one count with the Wallet form's)."""
    value = vouchers.redeem(g.api_user, body.code)
    b = credits.spendable_balances(g.api_user)
    return RedeemOut(
        redeemed=str(value.amount),
        redeemed_minor=value.amount_minor,
        currency=b.currency,
        **b.cash.to_json("cash"),
        **b.voucher.to_json("voucher"),
        **b.credit.to_json("credit"),
    )


def voucher_json(v) -> VoucherOut:
    return VoucherOut(
        code=v.display_code,
        currency=v.currency,
        **v.value.to_json("value"),
        max_redemptions=v.max_redemptions,
        redemptions=v.redemptions,
        expires_at=iso(v.expires_at),
        batch=v.batch,
        note=v.note,
    )


@bp.post("/admin/vouchers")
@operation(
    summary="Create voucher codes",
    tag="Vouchers",
    scopes=(ADMIN,),
    body=CreateVouchers,
    responses={201: VoucherBatch},
)
def create_vouchers(body: CreateVouchers):
    created = vouchers.create_vouchers(
        value=to_money(body.value, current_app.config["CURRENCY"], "value"),
        count=body.count,
        max_redemptions=body.max_redemptions,
        expires_at=body.expires_at,
        note=body.note or "",
        created_by=g.api_user,
    )
    return VoucherBatch(batch=created[0].batch, vouchers=[voucher_json(v) for v in created]), 201


@bp.get("/admin/vouchers")
@operation(
    summary="List or export voucher codes",
    tag="Vouchers",
    scopes=(ADMIN,),
    query=VoucherQuery,
    responses={200: VoucherPage},
    media={200: {"text/csv": "with format=csv: every code, streamed"}},
)
def list_vouchers(query: VoucherQuery):
    batch = query.batch or None
    if query.format == "csv":
        return Response(
            stream_with_context(vouchers.vouchers_csv(batch)),
            mimetype="text/csv",
            headers={
                "Content-Disposition": f'attachment; filename="vouchers-{batch or "all"}.csv"'
            },
        )
    found = vouchers.list_vouchers(batch=batch, page=query.page, per_page=query.per_page)
    return VoucherPage(
        items=[voucher_json(v) for v in found.items],
        page=found.page,
        per_page=found.per_page,
        total=found.total,
    )

"""Vouchers in the JSON API."""
from __future__ import annotations

from flask import Response, current_app, g, jsonify, request, stream_with_context

from ...extensions import db
from ...models import TokenScope

from ...services import ledger, vouchers
from ...services.errors import ValidationFailed
from ..limits import voucher_redeem_limit
from . import bp
from .auth import require_token
from .parsing import datetime_field, iso, json_body, money_field, page_args, required

USER, ADMIN = TokenScope.USER, TokenScope.ADMIN


def _int(data: dict, name: str, default: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed.field(name, "must be a whole number")
    return value


@bp.post("/vouchers/redeem")
@require_token(USER)
@voucher_redeem_limit  # one counter with the Wallet form's
def redeem_voucher():
    data = json_body()
    value = vouchers.redeem(g.api_user, str(required(data, "code")))
    db.session.commit()
    b = ledger.balances(g.api_user)
    return jsonify({"redeemed": str(value.amount), "redeemed_minor": value.amount_minor,
                    "currency": b.currency, **b.cash.to_json("cash"),
                    **b.voucher.to_json("voucher"), **b.credit.to_json("credit")})


def voucher_json(v) -> dict:
    return {"code": v.display_code, "currency": v.currency, **v.value.to_json("value"),
            "max_redemptions": v.max_redemptions, "redemptions": v.redemptions,
            "expires_at": iso(v.expires_at), "batch": v.batch, "note": v.note}


@bp.post("/admin/vouchers")
@require_token(ADMIN)
def create_vouchers():
    data = json_body()
    created = vouchers.create_vouchers(
        value=money_field(data, "value", current_app.config["CURRENCY"]),
        count=_int(data, "count", 1), max_redemptions=_int(data, "max_redemptions", 1),
        expires_at=datetime_field(data, "expires_at", end_of_day=True),
        note=str(data.get("note") or ""), created_by=g.api_user)
    db.session.commit()
    return jsonify({"batch": created[0].batch, "vouchers": [voucher_json(v) for v in created]}), 201


@bp.get("/admin/vouchers")
@require_token(ADMIN)
def list_vouchers():
    batch = request.args.get("batch") or None
    if request.args.get("format") == "csv":
        return Response(stream_with_context(vouchers.vouchers_csv(batch)), mimetype="text/csv",
                        headers={"Content-Disposition":
                                 f'attachment; filename="vouchers-{batch or "all"}.csv"'})
    page, per_page = page_args()
    found = vouchers.list_vouchers(batch=batch, page=page, per_page=per_page)
    return jsonify({"items": [voucher_json(v) for v in found.items], "page": found.page,
                    "per_page": found.per_page, "total": found.total})



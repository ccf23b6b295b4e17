from __future__ import annotations

import uuid

from flask import g, jsonify, request

from ...extensions import db
from ...models import TokenScope
from ...services import accounts, credits, ledger
from . import bp
from .auth import acting_user, require_token
from .parsing import datetime_field, iso, json_body, money_field, page_args, required

USER, ADMIN, PLATFORM = TokenScope.USER, TokenScope.ADMIN, TokenScope.PLATFORM


def user_json(user) -> dict:
    return {"id": user.id, "email": user.email, "name": user.name, "currency": user.currency,
            "created_at": iso(user.created_at)}


@bp.post("/users")
@require_token(PLATFORM, ADMIN)
def create_user():
    data = json_body()
    user, created = accounts.ensure_platform_user(email=str(required(data, "email")),
                                                  name=str(data.get("name") or ""))
    db.session.commit()
    return jsonify(user_json(user)), 201 if created else 200


def _credit_json(lot) -> dict:
    from ...money import Money

    return {"id": lot.id, "user_id": lot.user_id, "currency": lot.currency,
            **Money(lot.amount_minor, lot.currency).to_json("amount"),
            **Money(lot.remaining_minor, lot.currency).to_json("remaining"),
            "reason": lot.reason, "expires_at": iso(lot.expires_at),
            "created_at": iso(lot.created_at)}


@bp.post("/credits")
@bp.post("/admin/credits")
@require_token(ADMIN)
def grant_credit():
    data = json_body()
    user = accounts.find_user(str(required(data, "user_id")))
    # A client's Idempotency-Key makes a retried call grant once; without one every call
    # is a new grant (as the seed's curl example expects).
    client_key = request.headers.get("Idempotency-Key", "").strip()
    key = f"api:{g.api_user.id}:{client_key}" if client_key else f"api:{uuid.uuid4().hex}"
    lot, created = credits.grant_credit(
        user=user, amount=money_field(data, "amount", user.currency),
        reason=str(required(data, "reason")),
        expires_at=datetime_field(data, "expires_at", end_of_day=True),
        granted_by=g.api_user, idempotency_key=key)
    db.session.commit()
    return jsonify(_credit_json(lot)), 201 if created else 200


@bp.get("/wallet")
@require_token(USER, ADMIN)
def wallet():
    user = acting_user(request.args.get("user_id"))
    b = ledger.balances(user)
    return jsonify({"user_id": user.id, "currency": b.currency, **b.cash.to_json("cash"),
                    **b.voucher.to_json("voucher"), **b.credit.to_json("credit")})


@bp.get("/wallet/transactions")
@require_token(USER, ADMIN)
def wallet_transactions():
    user = acting_user(request.args.get("user_id"))
    page, per_page = page_args()
    history = ledger.wallet_history(user, page=page, per_page=per_page)
    return jsonify({
        "items": [{"id": row.entry_id, "created_at": iso(row.created_at),
                   "wallet": row.account_kind, "kind": row.transaction_kind,
                   "description": row.description, "currency": row.amount.currency,
                   **row.amount.to_json("amount")} for row in history.items],
        "page": history.page, "per_page": history.per_page, "total": history.total})

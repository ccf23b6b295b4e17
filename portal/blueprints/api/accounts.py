"""Accounts in the JSON API: the platform's users, admins' credits, the wallet."""

from __future__ import annotations

import uuid

from flask import g

from ...models import TokenScope
from ...money import Money
from ...services import accounts
from ...services.wallet import credits, ledger
from . import bp
from .auth import acting_user, find_user
from .fields import idempotency_key, iso, to_money
from .models import (
    CreateUser,
    CreditOut,
    ForUser,
    GrantCredit,
    UserOut,
    WalletEntry,
    WalletOut,
    WalletPage,
    WalletQuery,
)
from .spec import operation

USER, ADMIN, PLATFORM = TokenScope.USER, TokenScope.ADMIN, TokenScope.PLATFORM


def user_json(user) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        currency=user.currency,
        created_at=iso(user.created_at),
    )


@bp.post("/users")
@operation(
    summary="Create a user (the platform's OnUserCreated)",
    tag="Accounts",
    scopes=(PLATFORM, ADMIN),
    body=CreateUser,
    responses={201: UserOut, 200: UserOut},
    errors=(409,),
)
def create_user(body: CreateUser):
    """Idempotent by email: 201 when new (a set-password link is emailed), 200 when the
    user exists, 409 when it exists with another name."""
    user, created = accounts.ensure_platform_user(email=body.email, name=body.name)
    return user_json(user), 201 if created else 200


def credit_json(lot) -> CreditOut:
    return CreditOut(
        id=lot.id,
        user_id=lot.user_id,
        currency=lot.currency,
        **Money(lot.amount_minor, lot.currency).to_json("amount"),
        **Money(lot.remaining_minor, lot.currency).to_json("remaining"),
        reason=lot.reason,
        expires_at=iso(lot.expires_at),
        created_at=iso(lot.created_at),
    )


@bp.post("/credits")
@bp.post("/admin/credits")
@operation(
    summary="Grant a credit",
    tag="Accounts",
    scopes=(ADMIN,),
    body=GrantCredit,
    responses={201: CreditOut, 200: CreditOut},
    errors=(404, 409),
    idempotency_key="the same key grants once (200 with the first grant); with other "
    "content it is 409 idempotency_conflict",
)
def grant_credit(body: GrantCredit):
    """A credit in the user's currency; ``expires_at`` as a bare date is valid through
    that day. Without an Idempotency-Key every call is a new grant."""
    user = find_user(body.user_id)
    client_key = idempotency_key()
    key = f"api:{g.api_user.id}:{client_key}" if client_key else f"api:{uuid.uuid4().hex}"
    lot, created = credits.grant_credit(
        user=user,
        amount=to_money(body.amount, user.currency, "amount"),
        reason=body.reason,
        expires_at=body.expires_at,
        granted_by=g.api_user,
        idempotency_key=key,
    )
    return credit_json(lot), 201 if created else 200


@bp.get("/wallet")
@operation(
    summary="The wallet's balances",
    tag="Wallet",
    scopes=(USER, ADMIN),
    query=ForUser,
    responses={200: WalletOut},
    errors=(404,),
)
def wallet(query: ForUser):
    user = acting_user(query.user_id)
    b = credits.spendable_balances(user)
    return WalletOut(
        user_id=user.id,
        currency=b.currency,
        **b.cash.to_json("cash"),
        **b.voucher.to_json("voucher"),
        **b.credit.to_json("credit"),
    )


@bp.get("/wallet/transactions")
@operation(
    summary="The wallet's history",
    tag="Wallet",
    scopes=(USER, ADMIN),
    query=WalletQuery,
    responses={200: WalletPage},
    errors=(404,),
)
def wallet_transactions(query: WalletQuery):
    user = acting_user(query.user_id)
    history = ledger.wallet_history(user, page=query.page, per_page=query.per_page)
    return WalletPage(
        items=[
            WalletEntry(
                id=row.entry_id,
                created_at=iso(row.created_at),
                wallet=row.account_kind,
                kind=row.transaction_kind,
                description=row.description,
                currency=row.amount.currency,
                **row.amount.to_json("amount"),
            )
            for row in history.items
        ],
        page=history.page,
        per_page=history.per_page,
        total=history.total,
    )

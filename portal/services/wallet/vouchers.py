"""Vouchers: admins issue codes (singly or in batches), users redeem them into the voucher
wallet (the only way it is funded), or ask for one with a reason.

Redemption is atomic by a conditional UPDATE of the code's redemption counter (the row lock
makes concurrent redemptions queue; each sees the count the previous one left) plus a
UNIQUE (voucher, user) constraint; 50 concurrent redemptions of a single-use code: one wins.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import func, select, update

from ...db import Page, rowcount
from ...errors import Conflict, NotFound, ValidationFailed
from ...extensions import db
from ...models import AccountKind, User, Voucher, VoucherRedemption, VoucherRequest, utcnow
from ...money import Money
from .. import audit, events, mail
from . import ledger, settlement_requests

# Crockford base 32: no I, L, O or U, so a code read aloud or retyped survives.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 20  # 100 random bits
MAX_BATCH = 10_000
MAX_PENDING_REQUESTS = 3


def new_code() -> str:
    bits = secrets.randbits(5 * CODE_LENGTH)
    return "".join(ALPHABET[(bits >> (5 * i)) & 31] for i in range(CODE_LENGTH))


def normalize_code(raw: str) -> str | None:
    """What the user typed -> the canonical code, or None if it cannot be one."""
    code = "".join((raw or "").upper().split()).replace("-", "")
    code = code.translate(str.maketrans("OIL", "011"))
    if len(code) != CODE_LENGTH or any(c not in ALPHABET for c in code):
        return None
    return code


def create_vouchers(
    *,
    value: Money,
    count: int = 1,
    max_redemptions: int = 1,
    expires_at: datetime | None = None,
    note: str = "",
    created_by: User | None = None,
    for_user: User | None = None,
    now: datetime | None = None,
) -> list[Voucher]:
    now = now or utcnow()
    if value.amount_minor <= 0:
        raise ValidationFailed.field("value", "must be greater than 0")
    if not 1 <= count <= MAX_BATCH:
        raise ValidationFailed.field("count", f"must be between 1 and {MAX_BATCH}")
    if not 1 <= max_redemptions <= 1_000_000:
        raise ValidationFailed.field("max_redemptions", "must be at least 1")
    if expires_at is not None and expires_at <= now:
        raise ValidationFailed.field("expires_at", "must be in the future")
    note = (note or "").strip()
    if len(note) > 500:
        raise ValidationFailed.field("note", "must be at most 500 characters")
    batch = f"{now:%Y%m%d}-{secrets.token_hex(3)}" if count > 1 else None
    vouchers = [
        Voucher(
            code=new_code(),
            value_minor=value.amount_minor,
            currency=value.currency,
            max_redemptions=max_redemptions,
            expires_at=expires_at,
            note=note,
            batch=batch,
            created_by_id=created_by.id if created_by else None,
            for_user_id=for_user.id if for_user else None,
        )
        for _ in range(count)
    ]
    db.session.add_all(vouchers)
    db.session.flush()
    if for_user is None:  # a request's voucher is recorded with the decision
        audit.record(
            "vouchers.created",
            "voucher_batch" if batch else "voucher",
            batch or vouchers[0].id,
            actor=created_by,
            after={
                "count": count,
                "value": str(value.amount),
                "currency": value.currency,
                "max_redemptions": max_redemptions,
                "expires_at": expires_at.isoformat() if expires_at else None,
                "note": note,
            },
        )
    return vouchers


def redeem(user: User, raw_code: str, now: datetime | None = None) -> Money:
    """Credit the voucher wallet with the code's value. Flushes; the caller commits (or
    rolls back on an error, which also undoes the claim)."""
    now = now or utcnow()
    code = normalize_code(raw_code)
    if code is None:
        raise ValidationFailed.field("code", "is not a voucher code (20 letters and digits)")
    voucher = db.session.scalar(select(Voucher).where(Voucher.code == code))
    if voucher is None or (voucher.for_user_id and voucher.for_user_id != user.id):
        raise NotFound("no voucher has this code", fields={"code": "does not exist"})
    if voucher.currency != user.currency:
        raise Conflict(
            f"this voucher is in {voucher.currency}", fields={"code": "is in another currency"}
        )
    if voucher.expires_at is not None and voucher.expires_at <= now:
        raise Conflict(
            f"this voucher expired on {voucher.expires_at:%Y-%m-%d}", fields={"code": "has expired"}
        )
    claimed = rowcount(
        db.session.execute(
            update(Voucher)
            .where(Voucher.id == voucher.id, Voucher.redemptions < Voucher.max_redemptions)
            .values(redemptions=Voucher.redemptions + 1)
        )
    )
    if claimed != 1:
        raise Conflict("this voucher has already been used", fields={"code": "is used up"})
    # Read after the claim: a concurrent redemption by the same user committed before it.
    if db.session.scalar(
        select(VoucherRedemption.id).where(
            VoucherRedemption.voucher_id == voucher.id, VoucherRedemption.user_id == user.id
        )
    ):
        raise Conflict(
            "you have already redeemed this voucher", fields={"code": "was already redeemed by you"}
        )
    txn = ledger.post_transaction(
        idempotency_key=f"voucher:{voucher.id}:{user.id}",
        kind="voucher_redemption",
        user_id=user.id,
        description=f"Voucher {voucher.display_code[:11]}…",
        legs=[
            (
                ledger.system_account(AccountKind.VOUCHER_ISSUANCE, voucher.currency),
                -voucher.value_minor,
            ),
            (ledger.user_account(user, AccountKind.VOUCHER), voucher.value_minor),
        ],
    )
    db.session.add(
        VoucherRedemption(voucher_id=voucher.id, user_id=user.id, ledger_transaction_id=txn.id)
    )
    db.session.flush()
    events.record(
        "billing.voucher.redeemed",
        f"voucher:{voucher.id}:user:{user.id}",
        {
            "user_id": user.id,
            "voucher_id": voucher.id,
            "amount": str(voucher.value.amount),
            "amount_minor": voucher.value.amount_minor,
            "currency": voucher.currency,
        },
        user.id,
    )
    settlement_requests.request_settlement(user.id)  # new money: pay what is pending
    settlement_requests.request_restore(user.id)
    return voucher.value


def list_vouchers(*, batch: str | None = None, page: int = 1, per_page: int = 50) -> Page:
    query = select(Voucher)
    if batch:
        query = query.where(Voucher.batch == batch)
    total = db.session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    items = list(
        db.session.scalars(
            query.order_by(Voucher.id.desc()).limit(per_page).offset((page - 1) * per_page)
        )
    )
    return Page(items, page, per_page, total)


def vouchers_csv(batch: str | None = None) -> Iterator[str]:
    """Codes for printing or mailing: UTF-8 with BOM, CRLF (spreadsheets open it cleanly)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    buffer.write("\ufeff")
    writer.writerow(
        [
            "code",
            "value",
            "currency",
            "max_redemptions",
            "redemptions",
            "expires_at",
            "batch",
            "note",
        ]
    )
    query = select(Voucher).order_by(Voucher.id)
    if batch:
        query = query.where(Voucher.batch == batch)
    for n, v in enumerate(db.session.execute(query.execution_options(yield_per=500)).scalars(), 1):
        writer.writerow(
            [
                v.display_code,
                str(v.value.amount),
                v.currency,
                v.max_redemptions,
                v.redemptions,
                v.expires_at.isoformat() if v.expires_at else "",
                v.batch or "",
                ("'" + v.note) if v.note[:1] in "=+-@" and v.note else v.note,
            ]
        )
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


# -- requests --------------------------------------------------------------------------------


def request_voucher(user: User, *, amount: Money, reason: str) -> VoucherRequest:
    reason = (reason or "").strip()
    if amount.amount_minor <= 0:
        raise ValidationFailed.field("amount", "must be greater than 0")
    if not reason:
        raise ValidationFailed.field("reason", "is required")
    if len(reason) > 1000:
        raise ValidationFailed.field("reason", "must be at most 1000 characters")
    pending = db.session.execute(
        select(func.count())
        .select_from(VoucherRequest)
        .where(VoucherRequest.user_id == user.id, VoucherRequest.status == "pending")
    ).scalar_one()
    if pending >= MAX_PENDING_REQUESTS:
        raise Conflict(f"you already have {pending} requests waiting for an answer")
    req = VoucherRequest(
        user_id=user.id, amount_minor=amount.amount_minor, currency=amount.currency, reason=reason
    )
    db.session.add(req)
    db.session.flush()
    return req


def get_request_for_owner(
    owner: User | None, request_id: int, *, for_update: bool = False
) -> VoucherRequest:
    """The one owner-scoped voucher request lookup: ``owner``'s request (None: any, for
    admins); another user's is NotFound, as if it did not exist."""
    query = select(VoucherRequest).where(VoucherRequest.id == request_id)
    if owner is not None:
        query = query.where(VoucherRequest.user_id == owner.id)
    req = db.session.scalar(query.with_for_update() if for_update else query)
    if req is None:
        raise NotFound("no such voucher request")
    return req


def decide_request(
    request_id: int, *, approve: bool, admin: User, note: str = ""
) -> VoucherRequest:
    """Approve (a single-use voucher for the requester, redeemed into their wallet at once)
    or reject. Either way the user is told by mail. Deciding twice is refused."""
    req = get_request_for_owner(None, request_id, for_update=True)
    if req.status != "pending":
        raise Conflict(f"this request was already {req.status}")
    user = db.session.get_one(User, req.user_id)
    req.status = "approved" if approve else "rejected"
    req.decided_by_id, req.decided_at = admin.id, utcnow()
    req.decision_note = (note or "").strip()[:500]
    if approve:
        (voucher,) = create_vouchers(
            value=req.amount,
            note=f"Request {req.id}: {req.reason[:200]}",
            created_by=admin,
            for_user=user,
        )
        req.voucher_id = voucher.id
        redeem(user, voucher.code)
    audit.record(
        f"voucher_request.{req.status}",
        "voucher_request",
        req.id,
        actor=admin,
        user_id=user.id,
        before={"status": "pending"},
        after={
            "status": req.status,
            "amount": str(req.amount.amount),
            "currency": req.amount.currency,
            "note": req.decision_note,
            "voucher_id": req.voucher_id,
        },
    )
    mail.queue_email(
        to=user.email,
        subject=f"Your voucher request was {req.status}",
        template="voucher_decision",
        user_id=user.id,
        request=req,
        amount=req.amount,
    )
    db.session.flush()
    return req


def list_requests(
    *, status: str | None = "pending", user: User | None = None
) -> list[VoucherRequest]:
    query = select(VoucherRequest)
    if status:
        query = query.where(VoucherRequest.status == status)
    if user is not None:
        query = query.where(VoucherRequest.user_id == user.id)
    return list(db.session.scalars(query.order_by(VoucherRequest.id.desc()).limit(200)))


def requesters(requests: list[VoucherRequest]) -> dict[int, User]:
    """The users who asked, by id (one query): the admin page shows name and email."""
    ids = {r.user_id for r in requests}
    if not ids:
        return {}
    return {u.id: u for u in db.session.scalars(select(User).where(User.id.in_(ids)))}

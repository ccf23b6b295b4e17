"""The audit log of admin actions. Each entry is written in the transaction of the action it
records, so an action and its entry are committed (or rolled back) together. Entries are only
ever added: nothing here or anywhere in the app changes or deletes one."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Select, func, select

from ..db import Page
from ..extensions import db
from ..models import AuditEntry, User, utcnow

# What is recorded, by the name stored in ``action``.
ACTIONS = (
    "credit.granted",
    "invoice.voided",
    "invoice.offline_payment",
    "price_version.created",
    "vouchers.created",
    "voucher_request.approved",
    "voucher_request.rejected",
    "user.admin_revoked",
    "token.created",
    "token.revoked",
    "job.run_requested",
    "webhook_endpoint.created",
    "webhook_endpoint.updated",
    "webhook_endpoint.enabled",
    "webhook_endpoint.disabled",
    "webhook_endpoint.secret_rotated",
    "webhook.replayed",
    "plan.created",
    "plan.versioned",
    "plan.retired",
    "subscription.set_by_admin",
    "user.billing_mode_set",
)


def record(
    action: str,
    object_type: str,
    object_id: object,
    *,
    actor: User | None,
    user_id: int | None = None,
    before: dict | None = None,
    after: dict | None = None,
) -> AuditEntry:
    """Add an entry to the current transaction (``actor`` None: the command line)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    entry = AuditEntry(
        created_at=utcnow(),
        actor_id=actor.id if actor is not None else None,
        actor_email=actor.email if actor is not None else "",
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        user_id=user_id,
        before=before,
        after=after,
    )
    db.session.add(entry)
    db.session.flush()
    return entry


@dataclass(frozen=True)
class AuditFilter:
    actor: str = ""  # email, or part of it
    object_type: str = ""
    object_id: str = ""
    action: str = ""
    date_from: date | None = None
    date_to: date | None = None  # inclusive
    user_id: int | None = None


def _query(f: AuditFilter) -> Select:
    stmt = select(AuditEntry)
    if f.actor:
        stmt = stmt.where(AuditEntry.actor_email.like(f"%{f.actor.strip().lower()}%"))
    if f.object_type:
        stmt = stmt.where(AuditEntry.object_type == f.object_type)
    if f.object_id:
        stmt = stmt.where(AuditEntry.object_id == f.object_id)
    if f.action:
        stmt = stmt.where(AuditEntry.action == f.action)
    if f.user_id is not None:
        stmt = stmt.where(AuditEntry.user_id == f.user_id)
    if f.date_from:
        stmt = stmt.where(AuditEntry.created_at >= _day_start(f.date_from))
    if f.date_to:
        stmt = stmt.where(AuditEntry.created_at < _day_start(f.date_to + timedelta(days=1)))
    return stmt


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def search(f: AuditFilter, *, page: int = 1, per_page: int = 50) -> Page:
    stmt = _query(f)
    total = db.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    items = list(
        db.session.scalars(
            stmt.order_by(AuditEntry.id.desc()).limit(per_page).offset((page - 1) * per_page)
        )
    )
    return Page(items, page, per_page, total)


def object_types() -> list[str]:
    return sorted(db.session.scalars(select(AuditEntry.object_type).distinct()))


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text, never runs as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_csv(f: AuditFilter) -> Iterator[str]:
    """The entries matching ``f``, oldest first: UTF-8 with BOM, CRLF."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    buffer.write("\ufeff")
    writer.writerow(
        ["id", "time", "actor", "action", "object_type", "object_id", "user_id", "before", "after"]
    )
    stmt = _query(f).order_by(AuditEntry.id).execution_options(yield_per=500)
    for n, e in enumerate(db.session.execute(stmt).scalars(), 1):
        writer.writerow(
            [
                _cell(x)
                for x in (
                    e.id,
                    e.created_at.isoformat(),
                    e.actor_email,
                    e.action,
                    e.object_type,
                    e.object_id,
                    e.user_id if e.user_id is not None else "",
                    _json(e.before),
                    _json(e.after),
                )
            ]
        )
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _json(value: dict | None) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, default=str)

"""Dunning: what happens to an overdue invoice, week by week, until it is paid or voided.

- Every week from the due date, a reminder mail with the invoice's PDF (``reminder-<week>``).
- gracePeriodDays past due: the user's active deployments are suspended
  (``billing.deployment.suspended``).
- A week before the deletion date (deletionDelayDays past due, 90 by default; announced in
  every reminder from the suspension on) they enter REMOVING
  (``billing.deployment.removing``), and on the date they are REMOVED
  (``billing.deployment.removed``).
- Paid or voided at any step: what was suspended or is being removed runs again
  (``billing.deployment.resumed``), once no other overdue invoice of the user is past its
  grace.

Each step is a row of dunning_steps, UNIQUE per invoice and step, inserted before anything
else the step does: a second run, or a second daemon racing the first, finds the step taken
and does nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select

from ...db import dialect_insert
from ...extensions import db
from ...models import (
    Deployment,
    DeploymentState,
    DunningStep,
    Invoice,
    InvoiceStatus,
    User,
    utcnow,
)
from .. import events, mail
from ..invoicing import invoices as invoice_service
from ..metering import deployments as deployment_service

log = logging.getLogger(__name__)

WEEK = timedelta(days=7)
REMOVAL_NOTICE = timedelta(days=7)  # REMOVING this long before the deletion date
S = DeploymentState


@dataclass
class DunningResult:
    reminders: int = 0
    suspended: int = 0
    removing: int = 0
    removed: int = 0
    restored: int = 0

    def figures(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Schedule:
    """An overdue invoice's dates."""

    due_at: datetime
    suspend_at: datetime
    removing_at: datetime
    removal_at: datetime

    def week(self, now: datetime) -> int:
        """1 in the first week past due, 2 in the second, ..."""
        return (now - self.due_at) // WEEK + 1


def schedule_of(invoice: Invoice) -> Schedule:
    settings = current_app.config["BILLING"]
    due = invoice.due_at or invoice.created_at
    suspend_at = due + timedelta(days=settings.grace_period_days)
    removal_at = due + timedelta(days=settings.deletion_delay_days)
    return Schedule(due, suspend_at, max(suspend_at, removal_at - REMOVAL_NOTICE), removal_at)


def _take(invoice: Invoice, step: str, now: datetime, **values) -> DunningStep | None:
    """Record the step; None when it was taken already (by this run's predecessor, or a
    daemon racing this one: the unique index makes the second insert wait, then skip)."""
    step_id = db.session.execute(
        dialect_insert(DunningStep.__table__)
        .values(
            invoice_id=invoice.id,
            user_id=invoice.user_id,
            step=step,
            template="",
            deployments=[],
            created_at=now,
            **values,
        )
        .on_conflict_do_nothing()
        .returning(DunningStep.__table__.c.id)
    ).scalar()
    return None if step_id is None else db.session.get_one(DunningStep, step_id)


def _taken(invoice_id: int) -> dict[str, DunningStep]:
    return {
        s.step: s
        for s in db.session.scalars(select(DunningStep).where(DunningStep.invoice_id == invoice_id))
    }


def _deployments(user_id: int, states: tuple[S, ...]) -> list[Deployment]:
    return list(
        db.session.scalars(
            select(Deployment)
            .where(Deployment.user_id == user_id, Deployment.state.in_([str(s) for s in states]))
            .order_by(Deployment.id)
        )
    )


def _move(
    deps: list[Deployment],
    target: S,
    event: str,
    invoice: Invoice,
    step: str,
    effective_at: datetime,
) -> list[str]:
    """Change each deployment's state and record the event, in the shape of the events
    catalogue's deployment data (reason "overdue", or "paid" when restored)."""
    moved = []
    for dep in deps:
        deployment_service.update_deployment(dep, state=str(target))
        events.record(
            event,
            f"dunning:{invoice.id}:{step}:{dep.external_id}",
            {
                "user_id": invoice.user_id,
                "external_id": dep.external_id,
                "state": str(target),
                "reason": "paid" if step == "restored" else "overdue",
                "effective_at": effective_at.isoformat(),
            },
            invoice.user_id,
        )
        moved.append(dep.external_id)
    return moved


def _mail(
    row: DunningStep, user: User, invoice: Invoice, template: str, subject: str, **context
) -> None:
    message = mail.queue_email(
        to=user.email,
        subject=subject,
        template=template,
        user_id=user.id,
        attachment_invoice_id=invoice.id if template == "dunning_reminder" else None,
        user=user,
        invoice=invoice,
        link=f"{current_app.config['PUBLIC_URL']}/invoices/{invoice.id}",
        **context,
    )
    row.template = template
    row.message_id = message.id if message is not None else None


def _dun(invoice: Invoice, now: datetime, result: DunningResult) -> None:
    user = db.session.get_one(User, invoice.user_id)
    sched = schedule_of(invoice)
    taken = _taken(invoice.id)
    number = invoice.number or f"#{invoice.id}"
    if now >= sched.removal_at and "removed" not in taken:
        row = _take(invoice, "removed", now, removal_at=sched.removal_at)
        if row is not None:
            deps = _deployments(user.id, (S.ACTIVE, S.SUSPENDED))
            # active or suspended ones go through REMOVING (the only way to REMOVED)
            for dep in deps:
                deployment_service.update_deployment(dep, state=str(S.REMOVING))
            deps += _deployments(user.id, (S.REMOVING,))
            row.deployments = _move(
                list({d.id: d for d in deps}.values()),
                S.REMOVED,
                "billing.deployment.removed",
                invoice,
                "removed",
                now,
            )
            _mail(
                row,
                user,
                invoice,
                "dunning_removed",
                f"Deployments removed: invoice {number} unpaid",
                deployments=row.deployments,
            )
            taken["removed"] = row
            result.removed += len(row.deployments)
    if "removed" in taken:
        return  # nothing left to announce; reminders stop with the removal
    if now >= sched.suspend_at and "suspended" not in taken:
        row = _take(invoice, "suspended", now, removal_at=sched.removal_at)
        if row is not None:
            row.deployments = _move(
                _deployments(user.id, (S.ACTIVE,)),
                S.SUSPENDED,
                "billing.deployment.suspended",
                invoice,
                "suspended",
                now,
            )
            _mail(
                row,
                user,
                invoice,
                "dunning_suspended",
                f"Deployments suspended: invoice {number} is overdue",
                deployments=row.deployments,
                removal_at=sched.removal_at,
            )
            taken["suspended"] = row
            result.suspended += len(row.deployments)
    if now >= sched.removing_at and "removing" not in taken:
        row = _take(invoice, "removing", now, removal_at=sched.removal_at)
        if row is not None:
            row.deployments = _move(
                _deployments(user.id, (S.ACTIVE, S.SUSPENDED)),
                S.REMOVING,
                "billing.deployment.removing",
                invoice,
                "removing",
                sched.removal_at,  # the removal time: when it takes effect
            )
            _mail(
                row,
                user,
                invoice,
                "dunning_removing",
                f"Deployments to be removed on {sched.removal_at:%d %b %Y}",
                deployments=row.deployments,
                removal_at=sched.removal_at,
            )
            taken["removing"] = row
            result.removing += len(row.deployments)
    week = sched.week(now)
    row = None if f"reminder-{week}" in taken else _take(invoice, f"reminder-{week}", now)
    if row is not None:
        announced = sched.removal_at if "suspended" in taken else None
        _mail(
            row,
            user,
            invoice,
            "dunning_reminder",
            f"Reminder: invoice {number} is overdue (week {week})",
            week=week,
            amount_due=invoice.amount_due,
            removal_at=announced,
            suspend_at=sched.suspend_at if announced is None else None,
        )
        result.reminders += 1


def _restore(invoice: Invoice, now: datetime, result: DunningResult) -> None:
    """The invoice was paid or voided: resume what it suspended or put up for removal,
    unless another overdue invoice of the user is past its grace."""
    others = db.session.scalars(
        select(Invoice).where(
            Invoice.user_id == invoice.user_id,
            Invoice.status == str(InvoiceStatus.OVERDUE),
            Invoice.id != invoice.id,
        )
    ).all()
    if any(now >= schedule_of(o).suspend_at for o in others):
        return
    row = _take(invoice, "restored", now)
    if row is None:
        return
    names = set()
    for step in ("suspended", "removing"):
        taken = db.session.scalar(
            select(DunningStep).where(
                DunningStep.invoice_id == invoice.id, DunningStep.step == step
            )
        )
        names.update(taken.deployments if taken else [])
    deps = [
        d
        for d in _deployments(invoice.user_id, (S.SUSPENDED, S.REMOVING))
        if d.external_id in names
    ]
    row.deployments = _move(deps, S.ACTIVE, "billing.deployment.resumed", invoice, "restored", now)
    user = db.session.get_one(User, invoice.user_id)
    number = invoice.number or f"#{invoice.id}"
    _mail(
        row,
        user,
        invoice,
        "dunning_restored",
        f"Deployments running again: invoice {number} settled",
        deployments=row.deployments,
    )
    result.restored += len(row.deployments)


def run(now: datetime | None = None) -> DunningResult:
    """One pass over every overdue invoice and every settled one that was dunned. Flushes;
    the caller commits."""
    now = now or utcnow()
    result = DunningResult()
    invoice_service.mark_overdue(now)
    for invoice in db.session.scalars(
        select(Invoice).where(Invoice.status == str(InvoiceStatus.OVERDUE)).order_by(Invoice.id)
    ):
        _dun(invoice, now, result)
    for invoice in db.session.scalars(_settled_dunned()):
        _restore(invoice, now, result)
    db.session.flush()
    if any(result.figures().values()):
        log.info("dunning: %s", result.figures())
    return result


def restore_user(user_id: int, now: datetime | None = None) -> list[str]:
    """Right after a payment: resume what the user's settled invoices had suspended or put up
    for removal (the hourly run would, later). Returns the external ids restored. Flushes;
    the caller commits."""
    now = now or utcnow()
    result = DunningResult()
    restored: list[str] = []
    for invoice in db.session.scalars(_settled_dunned().where(Invoice.user_id == user_id)):
        _restore(invoice, now, result)
        row = _taken(invoice.id).get("restored")
        restored.extend(row.deployments if row is not None else [])
    db.session.flush()
    return restored


def _settled_dunned():
    """Paid or voided invoices whose dunning suspended or put up for removal, not yet
    restored (nor past removal)."""
    return (
        select(Invoice)
        .where(
            Invoice.status.in_((str(InvoiceStatus.PAID), str(InvoiceStatus.VOID))),
            Invoice.id.in_(
                select(DunningStep.invoice_id).where(
                    DunningStep.step.in_(("suspended", "removing"))
                )
            ),
            ~Invoice.id.in_(
                select(DunningStep.invoice_id).where(DunningStep.step.in_(("restored", "removed")))
            ),
        )
        .order_by(Invoice.id)
    )

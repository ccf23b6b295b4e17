"""Prepaid accounts whose funds ran out: their deployments are removed after a day's grace,
unless money arrives first.

Every hour (the "prepaid-standing" job, after metering charged the hour), for each prepaid
account with deployments:

- When the funds (unexpired credits, vouchers, cash) no longer cover what the period still
  owes plus the next hour of what runs, its active deployments enter REMOVING
  (``billing.deployment.removing``, whose ``effective_at`` is the removal time, now + 24 h)
  and the user is mailed the countdown: the amount needed, the removal time, where to top up.
- Once the funds cover it again they run again (``billing.deployment.restored``, and a
  mail). A top-up, a voucher or a credit does this at once (restore.restore_now, the job
  the payment asks for after commit); this hourly pass only catches what that missed.
- At the removal time they are REMOVED (``billing.deployment.removed``, and a mail): the
  platform deletes them.

Each removal is a prepaid_removals row, at most one open per user (a partial UNIQUE index),
inserted before anything else it does; every decision is taken under the metering chunk's
lock and then the user's settlement lock (the order metering takes them in), and reads the
balances after them, so a payment racing a transition leaves the account either never
removing, or removing and then restored, never removing while funded."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from flask import current_app
from sqlalchemy import bindparam, select

from ...db import dialect_insert
from ...extensions import db
from ...models import (
    Deployment,
    DeploymentState,
    PrepaidRemoval,
    User,
    utcnow,
)
from ...money import Money, currency_digits
from .. import events, mail
from ..invoicing import prepaid as charging
from ..metering import deployments as deployment_service
from ..metering import rollups
from .account import read_account

log = logging.getLogger(__name__)

GRACE = timedelta(hours=24)
REASON = "prepaid_funds"
S = DeploymentState


@dataclass
class PrepaidResult:
    removing: int = 0
    restored: int = 0
    removed: int = 0

    def figures(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Countdown:
    """An open removal as the user sees it."""

    removal_at: datetime
    needed: Money  # what to add for the deployments to run again
    deployments: tuple[str, ...]


def hour_minor(hourly_micros: Fraction, currency: str) -> int:
    """An hour of what runs, in minor units, rounded up (what the funds must hold)."""
    return math.ceil(hourly_micros / 10 ** (6 - currency_digits(currency)))


_OPEN_REMOVAL = (  # built once: every Overview and Standing page reads it
    select(PrepaidRemoval)
    .where(PrepaidRemoval.user_id == bindparam("user_id"), PrepaidRemoval.closed_at.is_(None))
    .execution_options(populate_existing=True)
)


def open_removal(user_id: int) -> PrepaidRemoval | None:
    return db.session.scalar(_OPEN_REMOVAL, {"user_id": user_id})


def needed(user: User, removal: PrepaidRemoval, now: datetime) -> int:
    """What the funds lack to pay what the period still owes plus an hour, in minor units."""
    want = charging.shortfall(user, now) + removal.hour_minor
    return max(0, want - charging.funds(user, now))


def countdown(user: User, now: datetime | None = None) -> Countdown | None:
    now = now or utcnow()
    removal = open_removal(user.id)
    if removal is None:
        return None
    return Countdown(
        removal.removal_at,
        Money(needed(user, removal, now), user.currency),
        tuple(removal.deployments),
    )


def _deployments(user_id: int, states: tuple[S, ...], names: list[str] | None = None):
    query = select(Deployment).where(
        Deployment.user_id == user_id, Deployment.state.in_([str(s) for s in states])
    )
    if names is not None:
        query = query.where(Deployment.external_id.in_(names or [""]))
    return list(db.session.scalars(query.order_by(Deployment.id)))


def _move(
    removal: PrepaidRemoval, deps: list[Deployment], target: S, event: str, effective_at: datetime
) -> list[str]:
    moved = []
    for dep in deps:
        deployment_service.update_deployment(dep, state=str(target))
        events.record(
            event,
            f"prepaid:{removal.id}:{target}:{dep.external_id}",
            {
                "user_id": removal.user_id,
                "external_id": dep.external_id,
                "state": str(target),
                "reason": REASON,
                "effective_at": effective_at.isoformat(),
            },
            removal.user_id,
        )
        moved.append(dep.external_id)
    return moved


def _mail(user: User, removal: PrepaidRemoval, step: str, subject: str, **context) -> int | None:
    message = mail.queue_email(
        to=user.email,
        subject=subject,
        template=f"prepaid_{step}",
        user_id=user.id,
        dedupe_key=f"prepaid:{removal.id}:{step}",
        user=user,
        removal=removal,
        link=f"{current_app.config['PUBLIC_URL']}/wallet/",
        **context,
    )
    return message.id if message is not None else None


def lock(user: User) -> None:
    """The metering chunk's lock, then the user's settlement lock: the order the metering
    run (which charges) takes them in; deployment changes take the chunk's lock anyway."""
    rollups.lock_mark(rollups.chunk_of(user.id))
    charging.lock_user(user)


def _start(user: User, now: datetime, result: PrepaidResult) -> None:
    active = _deployments(user.id, (S.ACTIVE,))
    if not active:
        return
    hour = hour_minor(read_account(user, now).hourly_micros, user.currency)
    if hour <= 0:
        return
    want = charging.shortfall(user, now) + hour
    have = charging.funds(user, now)
    if have >= want:
        return
    removal_at = now + GRACE
    removal_id = db.session.execute(
        dialect_insert(PrepaidRemoval.__table__)
        .values(
            user_id=user.id,
            started_at=now,
            removal_at=removal_at,
            hour_minor=hour,
            deployments=[],
        )
        .on_conflict_do_nothing()
        .returning(PrepaidRemoval.__table__.c.id)
    ).scalar()
    if removal_id is None:
        return  # another run started it
    removal = db.session.get_one(PrepaidRemoval, removal_id)
    removal.deployments = _move(
        removal, active, S.REMOVING, "billing.deployment.removing", removal_at
    )
    removal.message_id = _mail(
        user,
        removal,
        "removing",
        f"Top up by {removal_at:%d %b %H:%M} UTC or your deployments are removed",
        needed=Money(want - have, user.currency),
        deployments=removal.deployments,
    )
    result.removing += len(removal.deployments)
    log.info(
        "prepaid: user %s has %s, needs %s: %s removing until %s",
        user.id,
        Money(have, user.currency),
        Money(want, user.currency),
        removal.deployments,
        removal_at.isoformat(),
    )


def _restore(user: User, removal: PrepaidRemoval, now: datetime) -> list[str]:
    if needed(user, removal, now) > 0:
        return []
    removal.outcome, removal.closed_at = "restored", now
    deps = _deployments(user.id, (S.REMOVING,), removal.deployments)
    moved = _move(removal, deps, S.ACTIVE, "billing.deployment.restored", now)
    if moved:
        _mail(user, removal, "restored", "Your deployments run again", deployments=moved)
    db.session.flush()
    log.info("prepaid: user %s is funded again: %s restored", user.id, moved)
    return moved


def _remove(user: User, removal: PrepaidRemoval, now: datetime) -> list[str]:
    removal.outcome, removal.closed_at = "removed", now
    deps = _deployments(user.id, (S.REMOVING,), removal.deployments)
    moved = _move(removal, deps, S.REMOVED, "billing.deployment.removed", now)
    if moved:
        _mail(user, removal, "removed", "Your deployments were removed", deployments=moved)
    db.session.flush()
    log.info("prepaid: user %s was not funded in time: %s removed", user.id, moved)
    return moved


def restore_user(user: User, now: datetime) -> list[str]:
    """Run again what the user's empty funds put up for removal, if the funds cover it now.
    The caller holds the locks (``lock``). Flushes."""
    removal = open_removal(user.id)
    if removal is None:
        return []
    return _restore(user, removal, now)


def check_user(user: User, now: datetime, result: PrepaidResult) -> None:
    """One account's hourly decision, under its locks. Flushes."""
    lock(user)
    removal = open_removal(user.id)
    if removal is None:
        if charging.is_prepaid(user):
            _start(user, now, result)
    else:
        restored = _restore(user, removal, now)
        result.restored += len(restored)
        if not restored and removal.closed_at is None and now >= removal.removal_at:
            result.removed += len(_remove(user, removal, now))
    db.session.flush()


def run(now: datetime | None = None) -> PrepaidResult:
    """The hourly pass over prepaid accounts with active deployments and open removals. One
    transaction per account (COMMITS), so one account's locks are not held over the rest."""
    now = now or utcnow()
    result = PrepaidResult()
    running = select(Deployment.user_id).where(Deployment.state == str(S.ACTIVE))
    waiting = select(PrepaidRemoval.user_id).where(PrepaidRemoval.closed_at.is_(None))
    ids = list(
        db.session.scalars(
            select(User.id)
            .where((User.id.in_(running) & charging.prepaid_clause()) | User.id.in_(waiting))
            .order_by(User.id)
        )
    )
    db.session.commit()
    for user_id in ids:
        check_user(db.session.get_one(User, user_id), now, result)
        db.session.commit()
    if any(result.figures().values()):
        log.info("prepaid standing: %s", result.figures())
    return result

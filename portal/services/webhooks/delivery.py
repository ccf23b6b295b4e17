"""Delivering the event outbox to the platform's endpoints.

Three steps, each safe to run twice or at once in two processes:

1. ``fan_out``: each event not yet handed out gets one delivery row per enabled endpoint that
   takes its type (the (event, endpoint) unique index makes a second fan-out add nothing),
   and is marked handed out (``events.delivered_at``). This runs in a job, never in the
   transaction that recorded the event.
2. ``deliver_round``: one endpoint's due deliveries, POSTed over a few kept-alive
   connections. Deliveries of one user go out in event order: a user's delivery is sent only
   when every earlier one of theirs to that endpoint has succeeded (or been given up). A
   sender holds what it took by pushing ``next_attempt_at`` ahead (its lease), so a crash
   leaves them to be sent again once the lease ends: at least once, and a duplicate carries
   the same event id.
3. The outcome of each attempt is written in bulk: an attempt row (status, time taken, the
   response's start, the error), the delivery succeeded, or retried after an exponential
   backoff with jitter, or given up once it has failed for the retry window (3 days). An
   endpoint whose every attempt has failed for that window is disabled and the admins are
   emailed.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import BigInteger, and_, bindparam, case, func, literal, select, text, update

from ...db import Page, bulk_insert, dialect_insert, ids_in
from ...errors import NotFound, ValidationFailed
from ...extensions import db
from ...models import (
    DeliveryStatus,
    Event,
    User,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from ...models.types import UTCDateTime
from .. import audit, events, mail
from . import endpoints, signing

log = logging.getLogger("portal.webhooks")
D = WebhookDelivery.__table__
A = WebhookAttempt.__table__
EXCERPT = 500  # characters of the response kept with each attempt
READ_AT_MOST = 65_536  # bytes of a response read; beyond it the connection is dropped
WINDOW = 5_000  # pending deliveries an endpoint's sender looks at per round
FAN_OUT_AT_ONCE = 5_000
REPLAY_AT_MOST = 100_000
USER_AGENT = "billing-portal-webhooks/1"


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    timeout: float  # seconds, per connect and per read
    first_retry: float  # seconds before the first retry; it doubles
    max_retry: float  # at most this long between two attempts
    window: timedelta  # retried this long, then given up (and the endpoint disabled)
    batch: int  # deliveries per round
    concurrency: int  # connections per endpoint

    @classmethod
    def from_config(cls) -> Policy:
        c = current_app.config
        return cls(
            timeout=float(c["WEBHOOK_TIMEOUT_SECONDS"]),
            first_retry=float(c["WEBHOOK_FIRST_RETRY_SECONDS"]),
            max_retry=float(c["WEBHOOK_MAX_RETRY_SECONDS"]),
            window=timedelta(hours=float(c["WEBHOOK_RETRY_HOURS"])),
            batch=int(c["WEBHOOK_BATCH"]),
            concurrency=int(c["WEBHOOK_CONCURRENCY"]),
        )

    def lease(self) -> timedelta:
        """How long a sender holds what it took: every request of one connection timing out
        (connect and read), and a minute to spare."""
        per_connection = -(-self.batch // self.concurrency)
        return timedelta(seconds=2 * self.timeout * per_connection + 60)

    def backoff(self, attempts: int, rand: Callable[[], float] = random.random) -> timedelta:
        """The wait after the ``attempts``-th failure: doubling from first_retry, at most
        max_retry, with full jitter on its upper half (so retries of many deliveries spread)."""
        base = min(self.first_retry * 2 ** max(attempts - 1, 0), self.max_retry)
        return timedelta(seconds=base / 2 + rand() * base / 2)


# -- 1. fan-out ---------------------------------------------------------------------------------


def fan_out(*, now: datetime, limit: int = FAN_OUT_AT_ONCE) -> int:
    """Hand out up to ``limit`` events (oldest first) to the enabled endpoints that take them,
    one INSERT ... SELECT per endpoint, and give them their place in the published order.
    Returns how many events were handed out."""
    _lock_hand_out()
    ids = list(
        db.session.scalars(
            select(Event.id).where(Event.delivered_at.is_(None)).order_by(Event.id).limit(limit)
        )
    )
    if not ids:
        return 0
    E = Event.__table__
    for endpoint in endpoints.list_endpoints():
        if not endpoint.enabled:
            continue
        rows = select(
            E.c.id,
            literal(endpoint.id, BigInteger),
            E.c.user_id,
            literal(DeliveryStatus.PENDING),
            literal(0),
            literal(now, UTCDateTime),
            literal(now, UTCDateTime),
        ).where(ids_in(E.c.id, ids))
        if endpoint.event_types is not None:
            rows = rows.where(E.c.name.in_(endpoint.event_types))
        db.session.execute(
            dialect_insert(D)
            .from_select(
                [
                    "event_id",
                    "endpoint_id",
                    "user_id",
                    "status",
                    "attempts",
                    "next_attempt_at",
                    "created_at",
                ],
                rows,
            )
            .on_conflict_do_nothing(index_elements=["event_id", "endpoint_id"])
        )
    # Positions above every earlier one, increasing with the id: one UPDATE, gaps allowed.
    last = db.session.scalar(select(func.max(E.c.position))) or 0
    db.session.execute(
        update(E)
        .where(ids_in(E.c.id, ids))
        .values(delivered_at=now, position=E.c.id + (last - ids[0] + 1))
    )
    return len(ids)


HAND_OUT_LOCK = 0x77656268  # the advisory lock two dispatchers take turns under


def _lock_hand_out() -> None:
    """One hand-out at a time until commit, so positions are published in order (SQLite
    lets one writer at a time anyway)."""
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": HAND_OUT_LOCK})


def endpoints_with_due(now: datetime) -> list[int]:
    """Enabled endpoints with a delivery whose time has come."""
    return list(
        db.session.scalars(
            select(WebhookEndpoint.id)
            .where(
                WebhookEndpoint.enabled.is_(True),
                select(D.c.id)
                .where(
                    D.c.endpoint_id == WebhookEndpoint.id,
                    D.c.status == DeliveryStatus.PENDING,
                    D.c.next_attempt_at <= now,
                )
                .exists(),
            )
            .order_by(WebhookEndpoint.id)
        )
    )


# -- 2. sending ---------------------------------------------------------------------------------


@dataclass
class _Item:
    delivery_id: int
    event_id: int
    user_id: int | None
    attempts: int
    first_failed_at: datetime | None
    body: bytes = b""


@dataclass
class _Outcome:
    item: _Item
    attempted_at: datetime
    status_code: int | None
    duration_ms: int
    excerpt: str
    error: str

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class RoundResult:
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    given_up: int = 0
    disabled: bool = False
    outcomes: list[_Outcome] = field(default_factory=list)


def _take(endpoint_id: int, *, now: datetime, policy: Policy) -> list[_Item]:
    """Claim the endpoint's due deliveries, each user's in event order and only from their
    oldest pending one on, and push them ahead by the lease."""
    window = db.session.execute(
        select(
            D.c.id,
            D.c.event_id,
            D.c.user_id,
            D.c.attempts,
            D.c.first_failed_at,
            (D.c.next_attempt_at <= now).label("due"),
        )
        .where(D.c.endpoint_id == endpoint_id, D.c.status == DeliveryStatus.PENDING)
        .order_by(D.c.event_id)
        .limit(WINDOW)
    ).all()
    blocked: set[int | None] = set()
    picked: list[_Item] = []
    for row in window:
        if row.user_id in blocked:
            continue
        if not row.due:  # waiting for a retry, or held by another sender
            blocked.add(row.user_id)
            continue
        picked.append(_Item(row.id, row.event_id, row.user_id, row.attempts, row.first_failed_at))
        if len(picked) >= policy.batch:
            break
    if not picked:
        return []
    claimed = set(
        db.session.scalars(
            update(D)
            .where(ids_in(D.c.id, [i.delivery_id for i in picked]), D.c.next_attempt_at <= now)
            .values(next_attempt_at=now + policy.lease())
            .returning(D.c.id)
        )
    )
    # Another sender took some first: a user keeps only the run it holds from its oldest
    # picked delivery on; what comes after a gap is given back.
    kept, back, gap = [], [], set()
    for item in picked:
        if item.delivery_id not in claimed:
            gap.add(item.user_id)
        elif item.user_id in gap:
            back.append(item.delivery_id)
        else:
            kept.append(item)
    _give_back(back, now)
    return kept


def _give_back(ids: Sequence[int], now: datetime) -> None:
    if ids:
        db.session.execute(
            update(D)
            .where(ids_in(D.c.id, list(ids)), D.c.status == DeliveryStatus.PENDING)
            .values(next_attempt_at=now)
        )


def _bodies(items: list[_Item]) -> None:
    rows = db.session.execute(
        select(Event.id, Event.name, Event.created_at, Event.payload).where(
            ids_in(Event.id, list({i.event_id for i in items}))
        )
    ).all()
    by_id = {
        r.id: json.dumps(
            events.envelope(r.id, r.name, r.created_at, r.payload),
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        for r in rows
    }
    for item in items:
        item.body = by_id[item.event_id]


class Connection:
    """POSTs to one URL over a kept-alive connection (made again when the server closed it)."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "", parts.port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _open(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """(status, the response's start); raises OSError or HTTPException on failure."""
        for retry in (True, False):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = self._open()
            try:
                self.conn.request("POST", self.path, body, headers)
                response = self.conn.getresponse()
                data = response.read(READ_AT_MOST)
                if not response.isclosed():  # a longer answer than we read: drop it
                    self.close()
                elif response.will_close:
                    self.close()
                return response.status, data[: EXCERPT * 4].decode("utf-8", "replace")[:EXCERPT]
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if not (reused and retry):  # a fresh connection failed: that is the answer
                    raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")


class Sender:
    """Sends to one endpoint on up to ``concurrency`` kept-alive connections (lanes), each
    user's deliveries on one lane, in order, stopping at that user's first failure (the rest
    wait for it). Kept across rounds by a sender job; close() when done."""

    def __init__(self, url: str, policy: Policy):
        self.url, self.policy = url, policy
        self.lanes = [Connection(url, policy.timeout) for _ in range(max(1, policy.concurrency))]
        self.pool = (
            ThreadPoolExecutor(max_workers=len(self.lanes), thread_name_prefix="webhook")
            if len(self.lanes) > 1
            else None
        )

    def close(self) -> None:
        for connection in self.lanes:
            connection.close()
        if self.pool is not None:
            self.pool.shutdown()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, items: list[_Item], keys: list[str], *, now: datetime) -> list[_Outcome]:
        work: list[list[_Item]] = [[] for _ in self.lanes]
        for item in items:
            work[hash(item.user_id) % len(work)].append(item)
        stop = threading.Event()  # the endpoint does not answer at all: stop this round
        pairs = [(c, w) for c, w in zip(self.lanes, work, strict=True) if w]
        if self.pool is None or len(pairs) == 1:
            return [o for c, w in pairs for o in self._run(c, w, keys, now, stop)]
        futures = [self.pool.submit(self._run, c, w, keys, now, stop) for c, w in pairs]
        return [o for f in futures for o in f.result()]

    def _run(
        self,
        connection: Connection,
        lane: list[_Item],
        keys: list[str],
        now: datetime,
        stop: threading.Event,
    ) -> list[_Outcome]:
        failed_users: set[int | None] = set()
        out: list[_Outcome] = []
        for item in lane:
            if item.user_id in failed_users or stop.is_set():
                continue
            started = time.perf_counter()
            status, excerpt, error = None, "", ""
            try:
                timestamp = int(time.time())
                status, excerpt = connection.post(
                    item.body,
                    {
                        "Content-Type": "application/json",
                        "User-Agent": USER_AGENT,
                        signing.HEADER: signing.header(keys, timestamp, item.body),
                        "Idempotency-Key": str(item.event_id),
                    },
                )
            except TimeoutError:
                error = f"timed out after {self.policy.timeout:g} s"
                stop.set()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:EXCERPT]
                stop.set()
            duration = int((time.perf_counter() - started) * 1000)
            outcome = _Outcome(item, now, status, duration, excerpt, error)
            if not outcome.ok and not error:
                outcome.error = f"HTTP {status}"
            if not outcome.ok:
                failed_users.add(item.user_id)
            out.append(outcome)
        return out


def deliver_round(
    endpoint_id: int,
    *,
    now: datetime,
    policy: Policy | None = None,
    sender: Sender | None = None,
) -> RoundResult:
    """Send one batch of an endpoint's due deliveries and record how each went. The caller
    commits (the claim is committed first, so a crash mid-round leaves the lease). A
    ``sender`` kept across rounds keeps its connections; without one, one is made for this
    round."""
    policy = sender.policy if sender is not None else (policy or Policy.from_config())
    endpoint = db.session.get(WebhookEndpoint, endpoint_id)
    result = RoundResult()
    if endpoint is None or not endpoint.enabled:
        return result
    items = _take(endpoint_id, now=now, policy=policy)
    if not items:
        return result
    _bodies(items)
    keys = endpoints.signing_keys(endpoint, now)
    url = endpoint.url
    db.session.commit()  # the claim holds while we send; no transaction stays open meanwhile
    # The threads touch no session: they get plain values.
    if sender is not None and sender.url == url:
        outcomes = sender.send(items, keys, now=now)
    else:
        with Sender(url, policy) as own:
            outcomes = own.send(items, keys, now=now)
    result.outcomes = outcomes
    _record(endpoint_id, items, outcomes, now=now, policy=policy, result=result)
    return result


def _record(
    endpoint_id: int,
    items: list[_Item],
    outcomes: list[_Outcome],
    *,
    now: datetime,
    policy: Policy,
    result: RoundResult,
) -> None:
    bulk_insert(
        A,
        ("delivery_id", "attempted_at", "status_code", "duration_ms", "response_excerpt", "error"),
        [
            (
                o.item.delivery_id,
                o.attempted_at,
                o.status_code,
                o.duration_ms,
                o.excerpt,
                o.error[:EXCERPT],
            )
            for o in outcomes
        ],
    )
    ok = [o for o in outcomes if o.ok]
    bad = [o for o in outcomes if not o.ok]
    by_code: dict[int | None, list[int]] = {}
    for o in ok:
        by_code.setdefault(o.status_code, []).append(o.item.delivery_id)
    for code, ids in by_code.items():  # one statement per status (all 200, mostly)
        db.session.execute(
            update(D)
            .where(ids_in(D.c.id, ids))
            .values(
                status=DeliveryStatus.SUCCEEDED,
                attempts=D.c.attempts + 1,
                delivered_at=now,
                last_status_code=code,
                last_error=None,
            )
        )
    if bad:
        params = []
        for o in bad:
            attempts = o.item.attempts + 1
            since = o.item.first_failed_at or now
            give_up = now - since >= policy.window
            params.append(
                {
                    "b_id": o.item.delivery_id,
                    "b_status": DeliveryStatus.FAILED if give_up else DeliveryStatus.PENDING,
                    "b_attempts": attempts,
                    "b_since": since,
                    "b_next": now + policy.backoff(attempts),
                    "b_code": o.status_code,
                    "b_error": o.error,
                }
            )
            result.given_up += give_up
        db.session.connection().execute(
            update(D)
            .where(D.c.id == bindparam("b_id"))
            .values(
                status=bindparam("b_status"),
                attempts=bindparam("b_attempts"),
                first_failed_at=bindparam("b_since"),
                next_attempt_at=bindparam("b_next"),
                last_status_code=bindparam("b_code"),
                last_error=bindparam("b_error"),
            ),
            params,
        )
    attempted = {o.item.delivery_id for o in outcomes}
    _give_back([i.delivery_id for i in items if i.delivery_id not in attempted], now)
    result.sent, result.succeeded, result.failed = len(outcomes), len(ok), len(bad)
    _endpoint_health(endpoint_id, bool(ok), bool(bad), now=now, policy=policy, result=result)
    if bad:
        log.warning(
            "webhook endpoint %s: %s of %s deliveries failed (first: %s)",
            endpoint_id,
            len(bad),
            len(outcomes),
            bad[0].error,
        )


def _endpoint_health(
    endpoint_id: int,
    any_ok: bool,
    any_bad: bool,
    *,
    now: datetime,
    policy: Policy,
    result: RoundResult,
) -> None:
    """Any success clears the failing streak; a streak as long as the retry window disables
    the endpoint and emails the admins (once: only the round that disables it does)."""
    endpoint = db.session.get_one(WebhookEndpoint, endpoint_id)
    if any_ok:
        endpoint.failing_since = None
        return
    if not any_bad:
        return
    if endpoint.failing_since is None:
        endpoint.failing_since = now
        return
    if endpoint.enabled and now - endpoint.failing_since >= policy.window:
        disable_failing(endpoint, now=now)
        result.disabled = True


def disable_failing(endpoint: WebhookEndpoint, *, now: datetime) -> None:
    endpoint.enabled = False
    endpoint.disabled_reason = "every delivery failed for the retry window"
    endpoint.updated_at = now
    audit.record(
        "webhook_endpoint.disabled",
        "webhook_endpoint",
        endpoint.id,
        actor=None,
        before={"enabled": True},
        after={"enabled": False, "reason": endpoint.disabled_reason},
    )
    failing_since = endpoint.failing_since or now
    for admin in db.session.scalars(select(User).where(User.is_admin.is_(True)).order_by(User.id)):
        mail.queue_email(
            to=admin.email,
            subject=f"Webhook endpoint {endpoint.url} was disabled",
            template="webhook_endpoint_disabled",
            endpoint=endpoint,
            failing_since=failing_since,
            link=f"{current_app.config['PUBLIC_URL']}/admin/webhooks/{endpoint.id}",
        )
    log.error(
        "webhook endpoint %s (%s) disabled: failing since %s",
        endpoint.id,
        endpoint.url,
        failing_since,
    )


# -- replay -------------------------------------------------------------------------------------


def _requeue(endpoint: WebhookEndpoint, rows: Sequence[Any], now: datetime) -> int:
    """Deliveries of these (event id, user id) rows to the endpoint made pending and due."""
    if not rows:
        return 0
    insert = dialect_insert(D)
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        stmt = insert.values(
            [
                {
                    "event_id": r[0],
                    "endpoint_id": endpoint.id,
                    "user_id": r[1],
                    "status": DeliveryStatus.PENDING,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for r in chunk
            ]
        )
        db.session.execute(
            stmt.on_conflict_do_update(
                index_elements=["event_id", "endpoint_id"],
                set_={
                    "status": DeliveryStatus.PENDING,
                    "next_attempt_at": now,
                    "first_failed_at": None,
                },
            )
        )
    return len(rows)


def replay_event(
    endpoint: WebhookEndpoint, event_id: int, *, actor: User | None, now: datetime
) -> None:
    """Send one event to the endpoint again (or for the first time), with its own id."""
    row = db.session.execute(select(Event.id, Event.user_id).where(Event.id == event_id)).first()
    if row is None:
        raise NotFound(f"no event {event_id}")
    _requeue(endpoint, [row], now)
    audit.record(
        "webhook.replayed",
        "webhook_endpoint",
        endpoint.id,
        actor=actor,
        user_id=row.user_id,
        after={"event_id": event_id},
    )


def replay_range(
    endpoint: WebhookEndpoint, start: datetime, end: datetime, *, actor: User | None, now: datetime
) -> int:
    """Send again every event recorded in [start, end) that the endpoint takes."""
    if end <= start:
        raise ValidationFailed(
            "the end must be after the start", fields={"end": "must be after the start"}
        )
    query = select(Event.id, Event.user_id).where(Event.created_at >= start, Event.created_at < end)
    if endpoint.event_types is not None:
        query = query.where(Event.name.in_(endpoint.event_types))
    rows = db.session.execute(query.order_by(Event.id).limit(REPLAY_AT_MOST + 1)).all()
    if len(rows) > REPLAY_AT_MOST:
        raise ValidationFailed(
            f"more than {REPLAY_AT_MOST} events in that range: choose a shorter one",
            fields={"start": "the range holds too many events"},
        )
    count = _requeue(endpoint, rows, now)
    audit.record(
        "webhook.replayed",
        "webhook_endpoint",
        endpoint.id,
        actor=actor,
        after={"from": start.isoformat(), "to": end.isoformat(), "events": count},
    )
    return count


# -- reading ------------------------------------------------------------------------------------


def list_deliveries(
    endpoint: WebhookEndpoint, *, status: str = "", page: int = 1, per_page: int = 50
) -> Page:
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if status:
        query = query.where(WebhookDelivery.status == status)
    total = db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = list(
        db.session.scalars(
            query.order_by(WebhookDelivery.id.desc()).offset((page - 1) * per_page).limit(per_page)
        )
    )
    return Page(items=items, page=page, per_page=per_page, total=total)


def get_delivery(endpoint: WebhookEndpoint, delivery_id: int) -> WebhookDelivery:
    """One of the endpoint's deliveries (another endpoint's is not found)."""
    delivery = db.session.scalar(
        select(WebhookDelivery).where(
            and_(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint.id)
        )
    )
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id} to this endpoint")
    return delivery


def attempts_of(delivery: WebhookDelivery) -> list[WebhookAttempt]:
    return list(
        db.session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery.id)
            .order_by(WebhookAttempt.id)
        )
    )


def counts_by_status(endpoint_ids: Sequence[int]) -> dict[tuple[int, str], int]:
    if not endpoint_ids:
        return {}
    rows = db.session.execute(
        select(D.c.endpoint_id, D.c.status, func.count())
        .where(D.c.endpoint_id.in_(list(endpoint_ids)))
        .group_by(D.c.endpoint_id, D.c.status)
    ).all()
    return {(e, s): n for e, s, n in rows}


def waiting_by_endpoint() -> list[tuple[int, str, int]]:
    """(endpoint id, state, count) of deliveries not delivered: ``pending`` (never tried),
    ``retrying`` (failed at least once, tried again later), ``failed`` (given up). One
    indexed count per endpoint and status (the metrics)."""
    out = []
    tried = func.coalesce(func.sum(case((D.c.attempts > 0, 1), else_=0)), 0)
    for endpoint_id in db.session.scalars(select(WebhookEndpoint.id).order_by(WebhookEndpoint.id)):
        pending, retrying = db.session.execute(
            select(func.count(), tried).where(
                D.c.endpoint_id == endpoint_id, D.c.status == DeliveryStatus.PENDING
            )
        ).one()
        failed = db.session.scalar(
            select(func.count()).where(
                D.c.endpoint_id == endpoint_id, D.c.status == DeliveryStatus.FAILED
            )
        )
        out += [
            (endpoint_id, "pending", pending - retrying),
            (endpoint_id, "retrying", retrying),
            (endpoint_id, "failed", failed or 0),
        ]
    return out

#!/usr/bin/env python
"""Benchmark: outgoing webhooks, 100,000 events delivered to a local receiver.

Builds a fresh database (PostgreSQL ``portal_bench_outbox`` by default, or a temporary
SQLite file), seeds 1,000 users and, in bulk, 100,000 events in the outbox (valid
``billing.credit.granted`` payloads, users interleaved), and registers one endpoint taking
every event. The receiver is a separate process on 127.0.0.1 (asyncio, HTTP/1.1 kept
alive) that answers 200 at once and counts the event ids it received.

Then it runs the real code path the jobs run, in this process: ``delivery.fan_out`` until
every event is handed out (one delivery row each), and ``delivery.deliver_round`` for the
endpoint until nothing is due (signing, POSTing over WEBHOOK_CONCURRENCY connections,
writing every attempt and outcome in bulk). It times the whole (fan-out included) and the
sending alone, samples this process's resident memory after each round, and checks that the
receiver saw every event id, and that every delivery succeeded.

Prints one JSON line on stdout:
    {"bench": "outbox", "db": "postgresql", "events": 100000, "deliveries_per_s": ...,
     "send_per_s": ..., "send_per_cpu_s": ..., "seconds": ..., "rss_mb_first_round": ...,
     "rss_mb_last_round": ...}

``deliveries_per_s`` is events over the whole (fan-out and sending); ``send_per_s`` the
sending alone; ``send_per_cpu_s`` events over this process's CPU seconds while sending (what
one free core would do; on a busy machine the wall-clock figures are lower).

Environment:
    DATABASE_URL   as for bench/pages.py (a PostgreSQL database whose name starts with
                   portal_bench is dropped and re-created). Default: portal_bench_outbox on
                   postgresql://postgres@127.0.0.1:5432.
    REDIS_URL      default redis://127.0.0.1:6379/14 (unused but for the app's setup).
    BENCH_EVENTS   events to deliver (default 100000).
    WEBHOOK_BATCH, WEBHOOK_CONCURRENCY   as in the portal's settings (500, 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import sys
import time
from datetime import UTC, datetime

from pages import build_app, fail, prepare_database
from sqlalchemy import func, insert, select, text

from portal.db import bulk_insert
from portal.extensions import db
from portal.models import DeliveryStatus, Event, User, WebhookDelivery, WebhookEndpoint
from portal.services.webhooks import delivery, endpoints

EVENTS = int(os.environ.get("BENCH_EVENTS", "100000"))
USERS = 1_000
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/portal_bench_outbox"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"


# -- the receiver (another process) ------------------------------------------------------------


async def _serve(port_out, stop, counts) -> None:
    seen: set[int] = set()
    total = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal total
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                # The id is the envelope's first field: {"id":123,...
                seen.add(int(body[6 : body.index(b",")]))
                total += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port_out.send(server.sockets[0].getsockname()[1])
    while not stop.is_set():
        await asyncio.sleep(0.05)
    server.close()
    counts.send((total, len(seen)))


def receiver(port_out, stop, counts) -> None:
    asyncio.run(_serve(port_out, stop, counts))


# -- the data ------------------------------------------------------------------------------------


def seed(app, url: str) -> int:
    now = datetime.now(UTC)
    with app.app_context():
        db.session.execute(
            insert(User),
            [
                {"email": f"user{n}@example.com", "name": f"User {n}", "currency": "USD"}
                for n in range(USERS)
            ],
        )
        user_ids = list(db.session.scalars(select(User.id).order_by(User.id)))
        rows = []
        for n in range(EVENTS):
            uid = user_ids[n % USERS]
            payload = {
                "user_id": uid,
                "credit_id": n + 1,
                "amount": "5.00",
                "amount_minor": 500,
                "currency": "USD",
                "reason": "bench",
                "expires_at": None,
            }
            rows.append(("billing.credit.granted", f"credit:{n + 1}", payload, uid, now, 0))
        bulk_insert(
            Event.__table__,
            ("name", "subject", "payload", "user_id", "created_at", "attempts"),
            rows,
        )
        endpoint, _ = endpoints.create_endpoint(
            endpoints.EndpointInput(url=url, event_types=None), actor=None, now=now
        )
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        return endpoint.id


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def run(app, endpoint_id: int) -> dict:
    rss: list[float] = []
    with app.app_context():
        started = time.perf_counter()
        while delivery.fan_out(now=datetime.now(UTC)):
            db.session.commit()
        db.session.commit()
        handed_out = time.perf_counter()
        cpu_before = time.process_time()
        url = db.session.get_one(WebhookEndpoint, endpoint_id).url
        sender = delivery.Sender(url, delivery.Policy.from_config())  # as the sender job does
        while True:
            result = delivery.deliver_round(endpoint_id, now=datetime.now(UTC), sender=sender)
            db.session.commit()
            db.session.expunge_all()
            rss.append(rss_mb())
            if result.failed:
                fail(f"a delivery failed: {result.outcomes[0].error if result.outcomes else ''}")
            if not result.sent:
                break
        done = time.perf_counter()
        cpu = time.process_time() - cpu_before
        sender.close()
        succeeded = db.session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.status == DeliveryStatus.SUCCEEDED)
        )
    return {
        "seconds": round(done - started, 2),
        "fan_out_seconds": round(handed_out - started, 2),
        "send_seconds": round(done - handed_out, 2),
        # This process's CPU time while sending: the machine's share it got, by the figure
        # below the sending rate one free core would give (the receiver and the database
        # run in other processes).
        "send_cpu_seconds": round(cpu, 2),
        "succeeded": succeeded,
        "rss_mb_first_round": rss[0] if rss else None,
        "rss_mb_last_round": rss[-2] if len(rss) > 1 else None,
        "rss_mb_peak": max(rss) if rss else None,
    }


def main() -> None:
    requested = os.environ.get("DATABASE_URL", DEFAULT_PG)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    port_in, port_out = multiprocessing.Pipe(duplex=False)
    counts_in, counts_out = multiprocessing.Pipe(duplex=False)
    stop = multiprocessing.Event()
    process = multiprocessing.Process(
        target=receiver, args=(port_out, stop, counts_out), daemon=True
    )
    process.start()
    port = port_in.recv()
    with contextlib.ExitStack() as stack:
        database_url = prepare_database(requested, stack)
        app = build_app(database_url, redis_url)
        endpoint_id = seed(app, f"http://127.0.0.1:{port}/hooks")
        print(f"seeded {EVENTS} events", file=sys.stderr)
        figures = run(app, endpoint_id)
        stop.set()
        total, distinct = counts_in.recv()
        process.join(5)
        with app.app_context():
            dialect = db.engine.dialect.name
            db.engine.dispose()
    if distinct != EVENTS or figures["succeeded"] != EVENTS:
        fail(f"received {distinct} distinct events of {EVENTS}; {figures['succeeded']} succeeded")
    print(
        json.dumps(
            {
                "bench": "outbox",
                "db": dialect,
                "events": EVENTS,
                "received": total,
                "deliveries_per_s": round(EVENTS / figures["seconds"]),
                "send_per_s": round(EVENTS / figures["send_seconds"]),
                "send_per_cpu_s": round(EVENTS / figures["send_cpu_seconds"]),
                "batch": app.config["WEBHOOK_BATCH"],
                "concurrency": app.config["WEBHOOK_CONCURRENCY"],
                **{k: v for k, v in figures.items() if k != "succeeded"},
            }
        )
    )


if __name__ == "__main__":
    main()

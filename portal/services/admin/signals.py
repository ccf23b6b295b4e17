"""Operators' signals: the health check and the Prometheus metrics. Every figure is read
when it is scraped (from the database and Redis), so all the processes of a deployment
report the same numbers and nothing is kept in memory between scrapes."""

from __future__ import annotations

import logging
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select, text

from ...extensions import db
from ...models import Event, JobRun, MeterMark, PaymentAttempt, utcnow
from ...tasks import monitor, queues
from ..webhooks import delivery

log = logging.getLogger(__name__)


def health() -> tuple[bool, dict[str, str]]:
    """Whether the database and Redis answer; the details stay in the log."""
    checks = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        log.exception("health check: the database does not answer")
        db.session.rollback()
        checks["database"] = "unavailable"
    try:
        queues.redis_connection().ping()
        checks["redis"] = "ok"
    except Exception:
        log.exception("health check: Redis does not answer")
        checks["redis"] = "unavailable"
    return all(v == "ok" for v in checks.values()), checks


class _Collector:
    def __init__(self, now: datetime):
        self.now = now

    def collect(self):
        runs = CounterMetricFamily(
            "billing_job_runs", "Job runs that ended, by job and outcome", labels=["job", "outcome"]
        )
        seconds = CounterMetricFamily(
            "billing_job_run_seconds",
            "Time spent in job runs that ended, by job and outcome",
            labels=["job", "outcome"],
        )
        last = GaugeMetricFamily(
            "billing_job_last_duration_seconds", "The last ended run's duration", labels=["job"]
        )
        ended = select(
            JobRun.job_name,
            JobRun.status,
            func.count(),
            func.coalesce(func.sum(JobRun.duration_ms), 0),
        ).where(JobRun.status.in_(("succeeded", "failed")))
        for job, status, count, total_ms in db.session.execute(
            ended.group_by(JobRun.job_name, JobRun.status)
        ):
            runs.add_metric([job, status], count)
            seconds.add_metric([job, status], int(total_ms) / 1000)
        latest = (
            select(JobRun.job_name, func.max(JobRun.id).label("id"))
            .where(JobRun.status.in_(("succeeded", "failed")))
            .group_by(JobRun.job_name)
            .subquery()
        )
        for job, ms in db.session.execute(
            select(JobRun.job_name, JobRun.duration_ms).join(latest, latest.c.id == JobRun.id)
        ):
            last.add_metric([job], (ms or 0) / 1000)
        yield from (runs, seconds, last)

        depth = GaugeMetricFamily(
            "billing_queue_jobs", "RQ jobs by queue and state", labels=["queue", "state"]
        )
        for d in monitor.depths():
            depth.add_metric([d.name, "queued"], d.queued)
            depth.add_metric([d.name, "started"], d.started)
            depth.add_metric([d.name, "failed"], d.failed)
        yield depth
        yield GaugeMetricFamily("billing_workers", "RQ workers alive", value=monitor.worker_count())

        oldest_mark = db.session.scalar(select(func.min(MeterMark.metered_through)))
        yield GaugeMetricFamily(
            "billing_metering_lag_seconds",
            "Now minus the oldest metered-through mark (0 before the first metering run)",
            value=(self.now - oldest_mark).total_seconds() if oldest_mark else 0,
        )

        pending, oldest_event = db.session.execute(
            select(func.count(), func.min(Event.created_at)).where(Event.delivered_at.is_(None))
        ).one()
        yield GaugeMetricFamily(
            "billing_outbox_pending_events",
            "Events not yet handed out to the webhook endpoints",
            value=pending,
        )
        yield GaugeMetricFamily(
            "billing_outbox_lag_seconds",
            "Age of the oldest event not yet handed out (0 when none waits)",
            value=(self.now - oldest_event).total_seconds() if oldest_event else 0,
        )

        webhooks = GaugeMetricFamily(
            "billing_webhook_deliveries",
            "Webhook deliveries not delivered, by endpoint and state (pending: not tried yet; "
            "retrying: failed, tried again later; failed: given up after the retry window)",
            labels=["endpoint", "state"],
        )
        for endpoint_id, state, count in delivery.waiting_by_endpoint():
            webhooks.add_metric([str(endpoint_id), state], count)
        yield webhooks

        settlement = CounterMetricFamily(
            "billing_card_payments",
            "Card payment attempts by purpose and outcome",
            labels=["purpose", "outcome"],
        )
        for purpose, status, count in db.session.execute(
            select(PaymentAttempt.purpose, PaymentAttempt.status, func.count()).group_by(
                PaymentAttempt.purpose, PaymentAttempt.status
            )
        ):
            settlement.add_metric([purpose, status], count)
        yield settlement


def metrics_text(now: datetime | None = None) -> bytes:
    """The metrics in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(now or utcnow()))
    return generate_latest(registry)

"""An invoice run whose fan-out Redis loses: Redis is killed after the run asked for its
chunks and comes back empty. With a real worker and the relay, every user is invoiced once,
every invoice gets its PDF and its mail, and the ledger and the usage still reconcile."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import Invoice, JobRequest, OutboundEmail, User
from portal.services.invoicing import jobs as invoicing_jobs
from portal.services.metering import deployments, rollups
from portal.services.wallet.reconcile import find_discrepancies
from portal.tasks import relay
from tests.support.invoices import SEP
from tests.support.processes import query, wait_until
from tests.support.smtp import smtp_server, smtp_sink  # noqa: F401  (fixtures)

pytestmark = pytest.mark.redis

USERS = 5


def make_usage(app, make_user) -> list[int]:
    ids = []
    for n in range(USERS):
        user = make_user(f"run{n}@example.com")
        with app.app_context():
            dep, _ = deployments.create_deployment(
                external_id=f"vm-{n}",
                user=db.session.get(User, user.id),
                kind="vm",
                name="vm",
                cpu_cores=1 + n,
                memory_gb=0,
                storage_gb=0,
                started_at=SEP[0],
            )
            deployments.delete_deployment(dep, ended_at=SEP[1])
            db.session.commit()
            db.session.remove()
        ids.append(user.id)
    return ids


def progress(app) -> dict:
    def read():
        return {
            "invoices": db.session.scalar(select(func.count()).select_from(Invoice)),
            "users": db.session.scalar(select(func.count(func.distinct(Invoice.user_id)))),
            "pdfs": db.session.scalar(
                select(func.count()).select_from(Invoice).where(Invoice.pdf_status == "ready")
            ),
            "mails sent": db.session.scalar(
                select(func.count())
                .select_from(OutboundEmail)
                .where(OutboundEmail.attachment_invoice_id.is_not(None))
                .where(OutboundEmail.status == "sent")
            ),
            "requests open": db.session.scalar(
                select(func.count())
                .select_from(JobRequest)
                .where(JobRequest.status.in_(("requested", "sent")))
            ),
        }

    return query(app, read)


def test_redis_restarted_empty_during_the_fan_out_loses_no_invoice_pdf_or_mail(
    app,
    make_app,
    make_user,
    processes,
    private_redis,
    smtp_sink,  # noqa: F811
):
    private_redis.start()
    settings = {
        "REDIS_URL": private_redis.url,
        "MAIL_SERVER": smtp_sink.host,
        "MAIL_PORT": str(smtp_sink.port),
    }
    portal = make_app(
        RQ_ASYNC=True,
        MAIL_SUPPRESS_SEND=False,
        RATELIMIT_STORAGE_URI="memory://",
        **{**settings, "MAIL_PORT": smtp_sink.port},
    )
    make_usage(app, make_user)

    def fan_out():
        return invoicing_jobs.generate_invoices(SEP[0].strftime("%Y-%m-%d"))

    assert query(portal, fan_out)["chunks"] >= 1  # the chunks went to Redis...
    assert private_redis.client().llen("rq:queue:invoicing") >= 1
    private_redis.kill()  # ...which loses them
    private_redis.start()
    assert private_redis.client().llen("rq:queue:invoicing") == 0

    processes.worker(BUILTIN_BILLING="false", **settings)

    def settled():
        query(portal, lambda: relay.relay(grace=timedelta(0)))
        state = progress(app)
        return state if state["requests open"] == 0 and state["mails sent"] == USERS else None

    state = wait_until(settled, timeout=180, interval=0.5, message="every invoice's PDF and mail")
    assert state == {
        "invoices": USERS,
        "users": USERS,
        "pdfs": USERS,
        "mails sent": USERS,
        "requests open": 0,
    }
    assert len(smtp_sink.messages) == USERS  # each mail once
    with app.app_context():
        assert find_discrepancies() == []
        assert rollups.audit_usage() == []
        db.session.remove()


def test_post_admin_invoices_with_redis_down_is_201_and_the_pdf_comes_when_redis_is_back(
    app, make_app, make_user, api, processes, private_redis
):
    portal = make_app(RQ_ASYNC=True, REDIS_URL=private_redis.url, RATELIMIT_STORAGE_URI="memory://")
    [user_id] = make_usage(app, make_user)[:1]
    token = api.token(make_user(admin=True), "admin")
    response = portal.test_client().post(
        "/api/plugins/billing/admin/invoices",
        json={"user_id": user_id, "period_start": "2026-09-01", "period_end": "2026-09-30"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.get_json()
    invoice_id = response.get_json()["id"]
    pdf_status = lambda: query(app, lambda: db.session.get(Invoice, invoice_id).pdf_status)  # noqa: E731
    assert pdf_status() == "pending"

    private_redis.start()
    processes.worker(BUILTIN_BILLING="false", REDIS_URL=private_redis.url)
    wait_until(
        lambda: (
            query(portal, lambda: relay.relay(grace=timedelta(0))) is not None
            and pdf_status() == "ready"
        ),
        timeout=120,
        interval=0.5,
        message="the PDF",
    )

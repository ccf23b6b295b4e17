"""Admin › Audit log: every admin action leaves one entry (actor, object, before and after)
in the action's own transaction; the log is searched and exported, and no route changes it."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import AuditEntry, Invoice, User
from portal.money import Money
from portal.services import accounts
from portal.services.invoicing import invoices
from portal.services.metering import catalog
from portal.services.wallet import credits, vouchers
from tests.support.app import AuthActions
from tests.support.invoices import issue_invoices


def entries(app, **where) -> list[AuditEntry]:
    with app.app_context():
        try:
            stmt = select(AuditEntry).filter_by(**where).order_by(AuditEntry.id)
            rows = list(db.session.scalars(stmt))
            db.session.expunge_all()
            return rows
        finally:
            db.session.remove()


@pytest.fixture
def admin(make_user):
    return make_user("boss@example.com", admin=True)


def test_each_admin_action_is_recorded_with_actor_object_before_and_after(app, make_user, admin):
    ann = make_user("ann@example.com")
    sep, oct_ = issue_invoices(app, ann.id)
    with app.app_context():
        boss, user = db.session.get(User, admin.id), db.session.get(User, ann.id)
        lot, _ = credits.grant_credit(
            user=user,
            amount=Money(1250, "USD"),
            reason="outage",
            idempotency_key="a",
            granted_by=boss,
        )
        invoices.void_invoice(db.session.get(Invoice, sep), reason="wrong", voided_by=boss)
        invoices.record_offline_payment(
            db.session.get(Invoice, oct_),
            amount=Money(1000, "USD"),
            reference="wire 7",
            recorded_by=boss,
        )
        change = catalog.PriceChange(
            effective_from=datetime.now(UTC) + timedelta(days=3),
            cpu_per_core_hour="0.06",
            memory_per_gb_hour="0.01",
            storage_per_gb_month="0.1",
            public_ip_per_hour="0.005",
            sku_hourly={},
        )
        version = catalog.create_version(change, created_by=boss)
        vouchers.create_vouchers(value=Money(500, "USD"), count=3, created_by=boss)
        req = vouchers.request_voucher(user, amount=Money(700, "USD"), reason="please")
        vouchers.decide_request(req.id, approve=True, admin=boss, note="ok")
        token, _ = accounts.create_api_token(boss, name="ci", scope="admin")
        accounts.revoke_token(boss, token.id)
        accounts.revoke_token(boss, token.id)  # again: nothing new happens, nothing recorded
        db.session.commit()
        lot_id, version_no, token_id, req_id = lot.id, version.version, token.id, req.id
        db.session.remove()

    got = {(e.action, e.object_type, e.object_id): e for e in entries(app)}
    assert sorted(a for a, _, _ in got) == sorted(
        [
            "credit.granted",
            "invoice.voided",
            "invoice.offline_payment",
            "price_version.created",
            "vouchers.created",
            "voucher_request.approved",
            "token.created",
            "token.revoked",
        ]
    )
    assert all(e.actor_id == admin.id and e.actor_email == admin.email for e in got.values())
    grant = got["credit.granted", "credit_lot", str(lot_id)]
    assert grant.user_id == ann.id and grant.after["amount"] == "12.50"
    void = got["invoice.voided", "invoice", str(sep)]
    assert void.before == {"status": "open"} and void.after["status"] == "void"
    paid = got["invoice.offline_payment", "invoice", str(oct_)]
    assert paid.before["amount_paid_minor"] == 0 and paid.after["amount_paid_minor"] == 1000
    price = got["price_version.created", "price_version", str(version_no)]
    assert price.after["cpu_per_core_hour_micros"] == 60_000
    [batch] = [e for (a, _, _), e in got.items() if a == "vouchers.created"]
    assert batch.object_type == "voucher_batch" and batch.after["count"] == 3
    decision = got["voucher_request.approved", "voucher_request", str(req_id)]
    assert decision.before == {"status": "pending"} and decision.after["voucher_id"]
    assert got["token.revoked", "api_token", str(token_id)].before == {"revoked_at": None}


def test_an_action_rolled_back_leaves_no_entry(app, make_user, admin):
    ann = make_user()
    with app.app_context():
        credits.grant_credit(
            user=db.session.get(User, ann.id),
            amount=Money(100, "USD"),
            reason="x",
            idempotency_key="rolled-back",
            granted_by=db.session.get(User, admin.id),
        )
        db.session.rollback()
        db.session.remove()
    assert entries(app) == []


def test_forms_and_api_calls_record_role_changes_grants_and_jobs_run_by_hand(
    app, async_app, api, counting_job, make_user, admin
):
    other = make_user("second@example.com", admin=True)
    client = app.test_client()
    AuthActions(client).login(admin)
    assert client.submit(f"/admin/users/{other.id}/revoke-admin").status_code == 303
    form = {"amount": "3.00", "reason": "sorry", "request_id": "r1"}
    for _ in range(2):  # twice: one grant, one entry
        assert client.submit(f"/admin/users/{other.id}/credits", form).status_code == 303

    api = type(api)(async_app, async_app.test_client())
    token = api.token(admin, "admin")
    for _ in range(2):
        assert (
            api.post("/jobs/count", token=token, headers={"Idempotency-Key": "k"}).status_code
            == 202
        )

    actions = [(e.action, e.actor_email, e.user_id) for e in entries(app)]
    assert actions == [
        ("user.admin_revoked", admin.email, other.id),
        ("credit.granted", admin.email, other.id),
        ("token.created", admin.email, admin.id),
        ("job.run_requested", admin.email, None),
    ]
    [revoked] = entries(app, action="user.admin_revoked")
    assert revoked.before == {"is_admin": True} and revoked.after["is_admin"] is False


@pytest.fixture
def logged(app, make_user):
    """Three entries by two admins on different days; an admin logged in."""
    boss = make_user("boss@example.com", admin=True)
    with app.app_context():
        for n, (who, action, day) in enumerate(
            [
                ("boss@example.com", "credit.granted", datetime(2026, 11, 3, 9, tzinfo=UTC)),
                ("ops@example.com", "invoice.voided", datetime(2026, 11, 10, 9, tzinfo=UTC)),
                ("ops@example.com", "credit.granted", datetime(2026, 11, 20, 9, tzinfo=UTC)),
            ],
            1,
        ):
            db.session.add(
                AuditEntry(
                    created_at=day,
                    actor_email=who,
                    action=action,
                    object_type="invoice" if "invoice" in action else "credit_lot",
                    object_id=str(n),
                    after={"reason": '=HYPERLINK("x")'},
                )
            )
        db.session.commit()
        db.session.remove()
    client = app.test_client()
    AuthActions(client).login(boss)
    return client


def shown(page: str) -> list[str]:
    return re.findall(r'<tr id="audit-(\d+)">', page)


def test_the_log_is_searched_by_actor_object_action_and_dates(app, logged):
    assert shown(logged.get("/admin/audit").get_data(as_text=True)) == ["3", "2", "1"]
    cases = {
        "?actor=ops@": ["3", "2"],
        "?action=credit.granted": ["3", "1"],
        "?object_type=invoice&object_id=2": ["2"],
        "?from=2026-11-10&to=2026-11-10": ["2"],
        "?from=2026-11-04": ["3", "2"],
        "?actor=ops&action=credit.granted&to=2026-11-19": [],
    }
    for query, ids in cases.items():
        response = logged.get("/admin/audit" + query)
        assert response.status_code == 200 and shown(response.get_data(as_text=True)) == ids
    fragment = logged.htmx_get("/admin/audit?actor=ops", target="audit-table")
    body = fragment.get_data(as_text=True)
    assert body.startswith('<div id="audit-table">') and "<h1>" not in body
    for bad in ("?from=2026-13-01", "?action=drop.table", "?to=1999-01-01"):
        assert logged.get("/admin/audit" + bad).status_code == 400


def test_the_export_is_csv_a_spreadsheet_opens_without_running_formulas(app, logged):
    response = logged.get("/admin/audit.csv?actor=ops")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    text = response.get_data(as_text=True)
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[0][:4] == ["id", "time", "actor", "action"]
    assert [r[0] for r in rows[1:]] == ["2", "3"]
    assert all(r[8].startswith("{") for r in rows[1:])  # JSON never starts with = + - @


def test_no_route_can_change_the_log(app, logged):
    """No URL rule that writes names the audit log, and the log's own URLs take GET only."""
    for rule in app.url_map.iter_rules():
        if rule.methods - {"GET", "HEAD", "OPTIONS"}:
            assert "audit" not in rule.rule and "audit" not in rule.endpoint, rule.rule
    before = entries(app)
    for method in ("post", "put", "patch", "delete"):
        for url in ("/admin/audit", "/admin/audit.csv", "/admin/audit/1"):
            send = getattr(logged, method)
            assert send(url, data={"csrf_token": logged.fetch_csrf()}).status_code in (404, 405)
    after = entries(app)
    assert [(e.id, e.action, e.after) for e in after] == [(e.id, e.action, e.after) for e in before]


@pytest.mark.postgres
def test_postgresql_refuses_update_and_delete(app, logged):
    with app.app_context():
        for statement in (
            sa.update(AuditEntry).values(action="x"),
            sa.delete(AuditEntry),
        ):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                db.session.execute(statement)
            db.session.rollback()
        assert db.session.scalar(select(func.count()).select_from(AuditEntry)) == 3
        db.session.remove()


@pytest.mark.parametrize("path", ["/admin/audit", "/admin/audit.csv"])
def test_only_admins_see_the_log(app, client, make_user, path):
    response = client.get(path)
    assert response.status_code == 302 and "/auth/login" in response.location
    AuthActions(client).login(make_user())
    assert client.get(path).status_code == 403

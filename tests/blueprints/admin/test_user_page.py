"""Admin › Users › a user: wallets and history, credit lots, vouchers redeemed, invoices,
deployments, cards (brand and last 4 only), events, mail sent and the admin actions taken
on the account."""

from __future__ import annotations

from sqlalchemy import update

from portal.extensions import db
from portal.models import JobRequest, OutboundEmail, PaymentMethod, User, utcnow
from portal.money import Money
from portal.services.wallet import credits, vouchers
from portal.services.webhooks import delivery, endpoints
from portal.tasks import requests
from tests.support.app import AuthActions
from tests.support.invoices import SEP, issue_invoices


def section(page: str, element_id: str) -> str:
    start = page.index(f'id="{element_id}"')
    return page[start : page.index("</section>", start)]


def test_the_page_shows_everything_about_the_account(app, make_user):
    ann = make_user("ann@example.com")
    [invoice_id] = issue_invoices(app, ann.id, periods=(SEP,), name="web")
    with app.app_context():
        user = db.session.get(User, ann.id)
        db.session.add(
            PaymentMethod(
                user_id=ann.id,
                gateway_id="pm_secret_gateway_id",
                fingerprint="fp_secret",
                brand="visa",
                last4="4242",
                exp_month=4,
                exp_year=2031,
                is_default=True,
            )
        )
        [voucher] = vouchers.create_vouchers(value=Money(700, "USD"))
        vouchers.redeem(user, voucher.code)
        req = vouchers.request_voucher(user, amount=Money(300, "USD"), reason="please")
        db.session.commit()
        code, req_id = voucher.display_code, req.id
        db.session.remove()
    admin = make_user("boss@example.com", admin=True)
    client = app.test_client()
    AuthActions(client).login(admin)
    form = {"amount": "2.50", "reason": "sorry", "request_id": "x1"}
    assert client.submit(f"/admin/users/{ann.id}/credits", form).status_code == 303
    with app.app_context():
        vouchers.decide_request(req_id, approve=False, admin=db.session.get(User, admin.id))
        db.session.commit()
        db.session.remove()

    response = client.get(f"/admin/users/{ann.id}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "$2.50" in page and "sorry" in page  # credit balance and lot
    invoices = section(page, "user-invoices")
    assert f"/admin/invoices/{invoice_id}" in invoices and "$36.00" in invoices
    assert "web-" in section(page, "user-deployments")
    cards = section(page, "user-cards")
    assert "Visa •••• 4242" in cards and "(default)" in cards
    assert "pm_secret" not in page and "fp_secret" not in page
    assert code in section(page, "user-vouchers") and "$7.00" in section(page, "user-vouchers")
    assert "billing.invoice" in section(page, "user-events")
    assert "Your voucher request was rejected" in section(page, "user-mail")
    actions = section(page, "user-admin-actions")
    assert "credit.granted" in actions and "voucher_request.rejected" in actions
    assert "boss@example.com" in actions
    assert f"/admin/audit?user_id={ann.id}" in actions
    log = client.get(f"/admin/audit?user_id={ann.id}").get_data(as_text=True)
    assert log.count('<tr id="audit-') == 2


def test_the_user_and_invoice_pages_show_the_pdfs_and_mail_still_waiting(
    app, make_user, make_invoice
):
    ann = make_user("waiting@example.com")
    pending = make_invoice(ann.id, pdf_status="pending")
    failed = make_invoice(ann.id, pdf_status="failed")
    done = make_invoice(ann.id, pdf_status="ready")
    with app.app_context():
        mail = OutboundEmail(
            user_id=ann.id,
            to_addr=ann.email,
            subject="Your invoice is ready",
            body_text="hello",
            status="pending",
            attachment_invoice_id=failed,
        )
        db.session.add(mail)
        db.session.flush()
        requests.add(
            "invoicing",
            "invoicing.render_invoice_pdf",
            [failed],
            dedupe_key=f"pdf:{failed}",
            now=utcnow(),
        )
        db.session.execute(
            update(JobRequest)
            .where(JobRequest.dedupe_key == f"pdf:{failed}")
            .values(status="failed", attempts=5, last_error="OSError: No space left on device")
        )
        db.session.commit()
        mail_id = mail.id
        db.session.remove()
    client = app.test_client()
    AuthActions(client).login(make_user("boss2@example.com", admin=True))

    waiting = section(client.get(f"/admin/users/{ann.id}").get_data(as_text=True), "waiting-work")
    assert f"/admin/invoices/{pending}" in waiting and f"/admin/invoices/{failed}" in waiting
    assert f"/admin/invoices/{done}" not in waiting
    assert "No space left on device" in waiting and "failed on every attempt (5)" in waiting
    assert f"/admin/outbox/{mail_id}" in waiting and "Your invoice is ready" in waiting
    assert "no job yet" in waiting  # the pending PDF's request is gone: the sweep asks again

    invoice_page = client.get(f"/admin/invoices/{failed}").get_data(as_text=True)
    waiting = section(invoice_page, "waiting-work")
    assert "No space left on device" in waiting and f"/admin/outbox/{mail_id}" in waiting
    assert f"/admin/invoices/{pending}" not in waiting
    done_page = client.get(f"/admin/invoices/{done}").get_data(as_text=True)
    assert "Nothing waiting" in section(done_page, "waiting-work")


def test_the_newest_credit_lots_are_listed_with_how_many_there_are(app, make_user, monkeypatch):
    monkeypatch.setattr("portal.blueprints.admin.users.LOTS_SHOWN", 2)
    ann = make_user("ann@example.com")
    admin = make_user("boss@example.com", admin=True)
    client = app.test_client()
    AuthActions(client).login(admin)
    for n in range(3):
        form = {"amount": "1.00", "reason": f"lot {n}", "request_id": f"r{n}"}
        assert client.submit(f"/admin/users/{ann.id}/credits", form).status_code == 303
    other = {"amount": "1.00", "reason": "not ann's", "request_id": "r-other"}
    assert client.submit(f"/admin/users/{admin.id}/credits", other).status_code == 303
    page = client.get(f"/admin/users/{ann.id}").get_data(as_text=True)
    assert "The newest 2 of 3 credit lots." in page
    # Lots 2 and 1 in the lots and the wallet history, lot 0 in the history only.
    assert [page.count(f"<td>lot {n}</td>") for n in (2, 1, 0)] == [2, 2, 1]


def test_each_event_shows_its_webhook_deliveries(app, make_user):
    """Events and their deliveries are read together: each event lists its own deliveries
    by endpoint, and one not handed out yet says so."""
    ann = make_user("hooks@example.com")
    with app.app_context():
        user = db.session.get_one(User, ann.id)
        now = utcnow()
        every, _ = endpoints.create_endpoint(
            endpoints.EndpointInput("https://a.example.com/in", None), actor=None, now=now
        )
        grants, _ = endpoints.create_endpoint(
            endpoints.EndpointInput("https://b.example.com/in", ["billing.credit.granted"]),
            actor=None,
            now=now,
        )
        every_id, grants_id = every.id, grants.id
        credits.grant_credit(
            user=user, amount=Money(100, "USD"), reason="r", idempotency_key="hooks-1"
        )
        [voucher] = vouchers.create_vouchers(value=Money(700, "USD"))
        vouchers.redeem(user, voucher.code)
        db.session.commit()
        delivery.fan_out(now=now)
        credits.grant_credit(
            user=user, amount=Money(100, "USD"), reason="r", idempotency_key="hooks-2"
        )
        db.session.commit()
        db.session.remove()
    admin = make_user("boss@example.com", admin=True)
    client = app.test_client()
    AuthActions(client).login(admin)
    rows = section(client.get(f"/admin/users/{ann.id}").get_data(as_text=True), "user-events")
    later, redeemed, granted = rows.split("<tr>")[2:]  # newest first, after the header
    assert "billing.credit.granted" in later and "not handed out yet" in later
    assert "billing.voucher.redeemed" in redeemed
    assert f"endpoint {every_id}: pending" in redeemed and f"endpoint {grants_id}" not in redeemed
    assert "billing.credit.granted" in granted
    assert granted.index(f"endpoint {every_id}: pending") < granted.index(
        f"endpoint {grants_id}: pending"
    )


def test_the_wallet_history_pages_back_without_counting_every_entry(app, make_user):
    ann = make_user("ann@example.com")
    admin = make_user("boss@example.com", admin=True)
    with app.app_context():
        user = db.session.get(User, ann.id)
        for n in range(26):
            credits.grant_credit(
                user=user,
                amount=Money(100 + n, "USD"),
                reason=f"grant {n}",
                idempotency_key=f"g{n}",
            )
        db.session.commit()
    client = app.test_client()
    AuthActions(client).login(admin)
    first = client.get(f"/admin/users/{ann.id}").get_data(as_text=True)
    pager = first[first.index('<nav class="pager"') :]
    pager = pager[: pager.index("</nav>")]
    assert "<span>Page 1</span>" in pager and "Newer" not in pager
    assert f'href="/admin/users/{ann.id}?page=2"' in pager
    second = client.get(f"/admin/users/{ann.id}?page=2").get_data(as_text=True)
    history = second[second.index("<h2>Wallet history</h2>") :]
    assert "<span>Page 2</span>" in history and "Older" not in history
    assert "<td>grant 0</td>" in history and "<td>grant 1</td>" not in history

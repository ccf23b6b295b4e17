"""Vouchers through the pages and the API: redeem, request, admin create/export/decide."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select

from portal.extensions import db
from portal.models import Voucher, VoucherRequest
from tests.support.app import AuthActions


def admin_creates(client, value="25.00", count=1, **extra):
    return client.submit(
        "/admin/vouchers", {"value": value, "count": count, "max_redemptions": 1, **extra}
    )


def test_user_redeems_a_voucher_on_the_wallet_page(app, client, auth, make_user):
    auth.login(make_user(admin=True))
    page = admin_creates(client, "25.00").get_data(as_text=True)
    with app.app_context():
        code = db.session.scalar(select(Voucher)).display_code
    assert code in page
    auth.logout()
    client.csrf_token = None
    auth.login(make_user())
    response = client.submit("/wallet/vouchers", {"code": code.lower()}, follow_redirects=True)
    text = response.get_data(as_text=True)
    assert "$25.00 added to your voucher balance." in text
    assert 'id="balance-voucher"><h2>Voucher balance</h2><p class="amount">$25.00' in text
    again = client.submit("/wallet/vouchers", {"code": code})
    assert again.status_code == 422 and "This voucher has already been used." in again.get_data(
        as_text=True
    )
    unknown = client.submit("/wallet/vouchers", {"code": "Z" * 20})
    assert "No voucher has this code." in unknown.get_data(as_text=True)


def test_redemption_is_rate_limited(app, make_app, make_user, auth):
    limited = make_app(VOUCHER_RATE_LIMIT="2 per minute")
    client = limited.test_client()

    AuthActions(client).login(make_user())
    codes = [client.submit("/wallet/vouchers", {"code": "Z" * 20}).status_code for _ in range(3)]
    assert codes == [422, 422, 429]


def test_one_redemption_limit_per_user_across_the_page_and_the_api(
    app, client, auth, api, make_user
):
    """VOUCHER_RATE_LIMIT (5 a minute by default) counts a user's attempts on the Wallet
    form and POST /vouchers/redeem together."""
    assert app.config["VOUCHER_RATE_LIMIT"] == "5 per minute;30 per day"
    user, other = make_user(), make_user()
    auth.login(user)
    token = api.token(user)

    def web() -> int:
        return client.submit("/wallet/vouchers", {"code": "Z" * 20}).status_code

    def via_api(bearer: str = token) -> int:
        return api.post("/vouchers/redeem", json={"code": "Z" * 20}, token=bearer).status_code

    assert [web(), via_api(), web(), via_api(), web()] == [422, 404, 422, 404, 422]
    assert via_api() == 429
    assert web() == 429
    # Counted per user: another user's attempts are their own.
    assert via_api(api.token(other)) == 404


def test_voucher_requests_flow_through_the_admin(app, client, auth, make_user):
    user, admin = make_user(), make_user(admin=True)
    auth.login(user)
    sent = client.submit("/wallet/voucher-requests", {"amount": "40.00", "reason": "Course lab"})
    assert sent.status_code == 303
    bad = client.submit("/wallet/voucher-requests", {"amount": "4.001", "reason": "x"})
    assert bad.status_code == 422
    auth.logout()
    client.csrf_token = None
    auth.login(admin)
    assert "Course lab" in client.get("/admin/vouchers").get_data(as_text=True)
    with app.app_context():
        req_id = db.session.scalar(select(VoucherRequest.id))
    assert (
        client.submit(f"/admin/voucher-requests/{req_id}/approve", {"note": "ok"}).status_code
        == 303
    )
    page = client.get(f"/admin/users/{user.id}").get_data(as_text=True)
    assert "$40.00" in page


def test_batch_export_opens_in_a_spreadsheet(app, client, auth, make_user):
    auth.login(make_user(admin=True))
    admin_creates(client, "5.00", count=12, note="=campaign")
    with app.app_context():
        batch = db.session.scalar(select(Voucher.batch))
    text = client.get(f"/admin/vouchers.csv?batch={batch}").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    assert len(rows) == 12 and rows[0]["value"] == "5.00" and rows[0]["note"] == "'=campaign"
    assert len({r["code"] for r in rows}) == 12


def test_voucher_api(app, api, make_user):
    admin = api.token(make_user(admin=True), "admin")
    created = api.post(
        "/admin/vouchers",
        json={"value": "10.00", "count": 2, "expires_at": "2099-12-31"},
        token=admin,
    )
    assert created.status_code == 201 and len(created.json["vouchers"]) == 2
    code = created.json["vouchers"][0]["code"]
    assert created.json["vouchers"][0]["expires_at"] == "2100-01-01T00:00:00Z"
    user_token = api.token(make_user())
    redeemed = api.post("/vouchers/redeem", json={"code": code}, token=user_token)
    assert redeemed.status_code == 200 and redeemed.json["voucher_minor"] == 1000
    assert api.post("/vouchers/redeem", json={"code": code}, token=user_token).status_code == 409
    assert (
        api.post("/vouchers/redeem", json={"code": "Z" * 20}, token=user_token).status_code == 404
    )
    assert api.post("/admin/vouchers", json={"value": "1.001"}, token=admin).status_code == 422
    assert api.post("/admin/vouchers", json={"value": "1"}, token=user_token).status_code == 403
    listing = api.get("/admin/vouchers", token=admin).json
    assert listing["total"] == 2

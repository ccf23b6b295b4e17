"""The Wallet page and the admin's credit grant, through the browser-facing views."""

from __future__ import annotations

from sqlalchemy import select

from portal.extensions import db
from portal.models import CreditLot, LedgerTransaction


def grant(
    client,
    user_id: int,
    amount: str,
    reason: str = "Goodwill",
    request_id: str = "r1",
    expires_on: str = "",
):
    return client.submit(
        f"/admin/users/{user_id}/credits",
        {"amount": amount, "reason": reason, "request_id": request_id, "expires_on": expires_on},
    )


def test_wallet_shows_balances_and_history(app, client, auth, make_user):
    admin, user = make_user(admin=True), make_user()
    auth.login(admin)
    assert grant(client, user.id, "50.00", "Service credit for downtime").status_code == 303
    auth.logout()
    client.csrf_token = None
    auth.login(user)
    page = client.get("/wallet/").get_data(as_text=True)
    assert 'id="balance-credit"' in page
    assert "$50.00" in page
    assert "Service credit for downtime" in page
    assert "<html" in page


def test_wallet_panel_fragment_for_htmx_and_whole_page_for_boosted(app, client, auth, make_user):
    auth.login(make_user())
    fragment = client.htmx_get("/wallet/", target="wallet-panel")
    body = fragment.get_data(as_text=True)
    assert body.lstrip().startswith('<div id="wallet-panel"')
    assert "<html" not in body
    assert "HX-Request" in fragment.headers["Vary"]
    boosted = client.get(
        "/wallet/",
        headers={"HX-Request": "true", "HX-Boosted": "true", "HX-Target": "wallet-panel"},
    )
    assert "<html" in boosted.get_data(as_text=True)


def test_history_is_paginated(app, client, auth, make_user):
    admin, user = make_user(admin=True), make_user()
    auth.login(admin)
    for i in range(30):
        grant(client, user.id, "1.00", f"grant {i}", request_id=f"r{i}")
    auth.logout()
    client.csrf_token = None
    auth.login(user)
    first = client.get("/wallet/").get_data(as_text=True)
    assert "grant 29" in first and "grant 0<" not in first
    assert "Page 1 of 2" in first
    second = client.htmx_get("/wallet/?page=2", target="wallet-panel").get_data(as_text=True)
    assert "grant 0" in second and "grant 29" not in second
    assert 'hx-trigger="every' not in second  # only page 1 refreshes itself


def test_admin_grant_is_idempotent_per_form_and_validated(app, client, auth, make_user):
    admin, user = make_user(admin=True), make_user()
    auth.login(admin)
    assert grant(client, user.id, "12.34", request_id="same").status_code == 303
    assert grant(client, user.id, "12.34", request_id="same").status_code == 303  # double submit
    bad = grant(client, user.id, "12.345", request_id="other")
    assert bad.status_code == 422
    assert "more than 2 decimal places" in bad.get_data(as_text=True)
    assert grant(client, user.id, "-1", request_id="neg").status_code == 422
    assert grant(client, user.id, "5", reason="", request_id="noreason").status_code == 422
    past = grant(client, user.id, "5", request_id="past", expires_on="2020-01-01")
    assert past.status_code == 422 and "must be in the future" in past.get_data(as_text=True)
    with app.app_context():
        lots = db.session.scalars(select(CreditLot)).all()
        assert [lot.amount_minor for lot in lots] == [1234]
        assert db.session.scalar(select(db.func.count()).select_from(LedgerTransaction)) == 1


def test_admin_grant_with_expiry_is_valid_through_the_day(app, client, auth, make_user):
    admin, user = make_user(admin=True), make_user()
    auth.login(admin)
    grant(client, user.id, "5.00", expires_on="2099-03-31")
    with app.app_context():
        lot = db.session.scalars(select(CreditLot)).one()
        assert lot.expires_at.isoformat() == "2099-04-01T00:00:00+00:00"
    page = client.get(f"/admin/users/{user.id}").get_data(as_text=True)
    assert "2099-03-31" in page and "2099-04-01" not in page  # valid through, as entered


def test_admin_pages_404_for_unknown_user(app, client, auth, make_user):
    auth.login(make_user(admin=True))
    assert client.get("/admin/users/999999").status_code == 404
    assert grant(client, 999999, "1.00").status_code == 404

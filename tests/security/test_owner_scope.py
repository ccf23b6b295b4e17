"""One owner-scoped lookup per object type: another user's invoice, card, API token,
deployment, checkout page, card payment or voucher request is 404 on the page and in the
API (user tokens), exactly as an id that does not exist, and nothing about it changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from portal.errors import NotFound
from portal.extensions import db
from portal.models import (
    ApiToken,
    CheckoutSession,
    PaymentAttempt,
    PaymentMethod,
    User,
    VoucherRequest,
)
from portal.money import Money
from portal.services import accounts
from portal.services.invoicing import invoices
from portal.services.metering import deployments
from portal.services.payments import card_charges, cards
from portal.services.wallet import vouchers
from tests.support.invoices import issue_invoices

PREFIX = "/api/plugins/billing"


@pytest.fixture
def owner_things(app, make_user):
    """``owner`` holds one of each object; ``intruder`` holds nothing."""
    owner, intruder = make_user(), make_user()
    [invoice_id] = issue_invoices(app, owner.id, periods=[(_month(-2), _month(-1))])
    with app.app_context():
        user = db.session.get(User, owner.id)
        card = PaymentMethod(
            user_id=owner.id,
            gateway_id="pm_owner",
            fingerprint="fp-owner",
            brand="visa",
            last4="4242",
            exp_month=12,
            exp_year=datetime.now(UTC).year + 2,
            is_default=True,
        )
        db.session.add(card)
        db.session.flush()
        db.session.add(
            CheckoutSession(
                user_id=owner.id,
                gateway_session_id="cs_owner",
                purpose="topup",
                amount_minor=1000,
                currency="USD",
                url="https://checkout.example/cs_owner",
            )
        )
        db.session.add(
            PaymentAttempt(
                user_id=owner.id,
                payment_method_id=card.id,
                purpose="topup",
                number=1,
                amount_minor=1000,
                currency="USD",
                idempotency_key="owner-attempt",
                status="requires_action",
                gateway_payment_id="pi_owner",
            )
        )
        token, _ = accounts.create_api_token(user, name="owner's", scope="user")
        deployments.create_deployment(
            external_id="owner-vm", user=user, kind="vm", cpu_cores=1, memory_gb=1, storage_gb=0
        )
        request = vouchers.request_voucher(user, amount=Money(500, "USD"), reason="please")
        db.session.commit()
        ids = {
            "invoice": invoice_id,
            "card": card.id,
            "token": token.id,
            "request": request.id,
        }
        db.session.remove()
    return owner, intruder, ids


def _month(offset: int) -> datetime:
    """The first of a month ``offset`` months from this one (UTC, midnight)."""
    today = datetime.now(UTC).date().replace(day=1)
    year, month = divmod(today.year * 12 + today.month - 1 + offset, 12)
    return datetime(year, month + 1, 1, tzinfo=UTC)


def _unchanged(app, ids: dict) -> None:
    with app.app_context():
        card = db.session.get(PaymentMethod, ids["card"])
        assert card.is_default and card.removed_at is None
        assert db.session.get(ApiToken, ids["token"]).revoked_at is None
        assert db.session.scalar(
            select(PaymentAttempt.status).where(PaymentAttempt.gateway_payment_id == "pi_owner")
        ) == ("requires_action")
        assert db.session.get(VoucherRequest, ids["request"]).status == "pending"


def test_another_users_objects_are_404_on_the_pages(app, client, auth, owner_things):
    owner, intruder, ids = owner_things
    auth.login(intruder)
    invoice, card, token = ids["invoice"], ids["card"], ids["token"]
    gets = [
        f"/invoices/{invoice}",
        f"/invoices/{invoice}/pdf",
        f"/invoices/{invoice}/pdf-status",
        f"/invoices/{invoice}/confirmed?payment_intent=pi_owner",
        "/wallet/top-up/done?session_id=cs_owner",
        "/wallet/top-up/confirmed?payment_intent=pi_owner",
    ]
    posts = [
        f"/invoices/{invoice}/pay",
        f"/invoices/{invoice}/complete-payment",
        f"/payment-methods/{card}/default",
        f"/payment-methods/{card}/delete",
        f"/account/tokens/{token}/revoke",
    ]
    for url in gets:
        assert client.get(url).status_code == 404, url
    for url in posts:
        assert client.submit(url).status_code == 404, url
    _unchanged(app, ids)
    # The owner reaches the same objects.
    auth.logout()
    auth.login(owner)
    assert client.get(f"/invoices/{invoice}").status_code == 200
    assert client.submit(f"/payment-methods/{card}/default").status_code == 303


def test_another_users_objects_are_404_in_the_api(app, api, owner_things):
    owner, intruder, ids = owner_things
    theirs, mine = api.token(intruder), api.token(owner)
    invoice, card = ids["invoice"], ids["card"]
    for path in (
        f"/invoices/{invoice}",
        f"/invoices/{invoice}/pdf",
        f"/invoices/{invoice}/payment-preview",
        "/deployments/owner-vm",
    ):
        response = api.get(path, token=theirs)
        assert response.status_code == 404, path
        assert response.json["error"]["code"] == "not_found", path
        assert api.get(path, token=mine).status_code in (200, 409), path  # 409: PDF not made
    for method, path in (
        ("post", f"/invoices/{invoice}/pay"),
        ("post", f"/payment-methods/{card}/default"),
        ("delete", f"/payment-methods/{card}"),
    ):
        response = getattr(api.client, method)(
            PREFIX + path, headers={"Authorization": f"Bearer {theirs}"}
        )
        assert response.status_code == 404, path
        assert response.json["error"]["code"] == "not_found", path
    _unchanged(app, ids)


def test_each_type_has_one_owner_scoped_lookup(app, owner_things):
    """The services' get_for_owner functions: the owner's object, NotFound for anyone else;
    None (admins, the platform) where a type allows it."""
    owner, intruder, ids = owner_things
    with app.app_context():
        me, other = db.session.get(User, owner.id), db.session.get(User, intruder.id)
        lookups = [
            (lambda u: invoices.get_for_owner(u, ids["invoice"]), True),
            (lambda u: cards.get_for_owner(u, ids["card"]), False),
            (lambda u: accounts.get_token_for_owner(u, ids["token"]), False),
            (lambda u: deployments.get_for_owner(u, "owner-vm"), True),
            (lambda u: cards.checkout_for_owner(u, "cs_owner"), False),
            (lambda u: card_charges.get_for_owner(u, "pi_owner"), False),
            (lambda u: vouchers.get_request_for_owner(u, ids["request"]), True),
        ]
        for lookup, any_owner in lookups:
            assert lookup(me).user_id == owner.id
            with pytest.raises(NotFound):
                lookup(other)
            if any_owner:
                assert lookup(None).user_id == owner.id
        db.session.remove()


def test_an_admin_still_decides_any_users_voucher_request(app, client, auth, make_user):
    """Admin views see every user: the voucher request lookup takes no owner there."""
    requester, admin = make_user(), make_user(admin=True)
    with app.app_context():
        user = db.session.get(User, requester.id)
        request_id = vouchers.request_voucher(user, amount=Money(500, "USD"), reason="x").id
        db.session.commit()
    auth.login(admin)
    response = client.submit(f"/admin/voucher-requests/{request_id}/reject", {"note": "no"})
    assert response.status_code == 303
    with app.app_context():
        assert db.session.get(VoucherRequest, request_id).status == "rejected"
    assert client.submit("/admin/voucher-requests/999999/reject").status_code == 404

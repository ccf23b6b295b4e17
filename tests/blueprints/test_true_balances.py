"""Balances that are true: credit past its expiry stops counting at once (page and API),
expire-credits runs daily on the schedule, and an admin's grant pays open invoices."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from portal.extensions import db
from portal.models import CreditLot, Invoice, User
from portal.models.types import utcnow
from portal.money import Money
from portal.services.wallet import credits
from portal.tasks import scheduler
from portal.tasks.registry import run_task
from tests.blueprints.test_wallet import grant
from tests.support.invoices import SEP, issue_invoices


def _expired_lot(app, user_id: int, minor: int = 1000) -> None:
    """A lot granted two days ago that expired an hour ago; expire-credits has not run."""
    with app.app_context():
        user = db.session.get(User, user_id)
        granted = utcnow() - timedelta(days=2)
        credits.grant_credit(
            user=user,
            amount=Money(minor, user.currency),
            reason="Trial credit",
            idempotency_key=f"trial-{user_id}",
            expires_at=utcnow() - timedelta(hours=1),
            now=granted,
        )
        db.session.commit()
        db.session.remove()


def test_expired_credit_does_not_count_on_the_wallet_or_the_api(app, client, auth, api, make_user):
    user = make_user()
    _expired_lot(app, user.id)
    auth.login(user)
    page = client.get("/wallet/").get_data(as_text=True)
    assert (
        '<div class="balance" id="balance-credit"><h2>Credits</h2><p class="amount">$0.00</p>'
        in (page)
    )
    wallet = api.get("/wallet", token=api.token(user, "user")).get_json()
    assert (wallet["credit"], wallet["credit_minor"]) == ("0.00", 0)

    # The daily job books the expiry; the balances stay as they were shown.
    with app.app_context():
        assert scheduler.find_job("expire-credits").cron == "10 0 * * *"
        assert run_task("wallet.expire_credits") == {"expired": 1}
        lot = db.session.scalars(select(CreditLot)).one()
        assert lot.remaining_minor == 0 and lot.expired_at is not None
        db.session.remove()
    wallet = api.get("/wallet", token=api.token(user, "user")).get_json()
    assert wallet["credit_minor"] == 0
    page = client.get("/wallet/").get_data(as_text=True)
    assert "Credit expired: Trial credit" in page


def test_an_admin_grant_pays_open_invoices_at_once(app, client, auth, make_user):
    user = make_user()
    [invoice_id] = issue_invoices(app, user.id, periods=(SEP,))
    with app.app_context():
        assert db.session.get(Invoice, invoice_id).status == "open"
        db.session.remove()
    auth.login(make_user(admin=True))
    assert grant(client, user.id, "100.00", "Goodwill").status_code == 303
    with app.app_context():
        invoice = db.session.get(Invoice, invoice_id)
        assert invoice.status == "paid"
        assert invoice.amount_paid.amount_minor == invoice.total_minor
        db.session.remove()

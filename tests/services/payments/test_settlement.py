"""Settlement and vouchers (seed 002): wallets pay invoices, smallest first, mixing tenders."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from portal.errors import Conflict, NotFound, ValidationFailed
from portal.extensions import db
from portal.models import Invoice, InvoicePayment, OutboundEmail, User, Voucher
from portal.money import Money
from portal.services.invoicing import run as invoice_run
from portal.services.metering import deployments
from portal.services.payments import settlement, topups
from portal.services.wallet import credits, ledger, vouchers
from tests.support.payments import settlement_held

OCT = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
USD = lambda minor: Money(minor, "USD")  # noqa: E731


@pytest.fixture
def user(ctx, make_user):
    return db.session.get(User, make_user().id)


def invoice_for(user, hours_by_deployment: dict[str, int]) -> list[Invoice]:
    """One invoice with a CPU line per deployment: 1 core x hours x $0.05."""
    for name, hours in hours_by_deployment.items():
        dep, _ = deployments.create_deployment(
            external_id=name,
            user=user,
            kind="vm",
            cpu_cores=1,
            memory_gb=0,
            storage_gb=0,
            started_at=OCT[0],
        )
        deployments.delete_deployment(dep, ended_at=OCT[0] + timedelta(hours=hours))
    db.session.commit()
    invoice_run.generate_period(*OCT)
    db.session.commit()
    return list(db.session.scalars(select(Invoice).where(Invoice.user_id == user.id)))


def voucher(value: int, **kw) -> str:
    (v,) = vouchers.create_vouchers(value=USD(value), **kw)
    db.session.commit()
    return v.code


def test_codes_are_random_readable_and_forgiving():
    codes = {vouchers.new_code() for _ in range(2000)}
    assert len(codes) == 2000 and all(len(c) == 20 for c in codes)
    assert len(vouchers.ALPHABET) == 32  # 20 characters x 5 bits = 100 bits of randomness
    code = "0ABCDEFGHJKMNPQRSTVW"
    assert vouchers.normalize_code("oabcd-efghj kmnpq-rstvw") == code
    assert vouchers.normalize_code("short") is None


def test_redemption_funds_the_voucher_wallet_once(user):
    code = voucher(2500)
    assert vouchers.redeem(user, code.lower()) == USD(2500)
    db.session.commit()
    assert ledger.balances(user).voucher == USD(2500)
    with pytest.raises(Conflict, match="already been used"):
        vouchers.redeem(user, code)
    db.session.rollback()
    with pytest.raises(NotFound):
        vouchers.redeem(user, "Z" * 20)
    with pytest.raises(ValidationFailed):
        vouchers.redeem(user, "nope")
    expired = voucher(100, expires_at=datetime.now(UTC) + timedelta(seconds=1))
    with pytest.raises(Conflict, match="expired"):
        vouchers.redeem(user, expired, now=datetime.now(UTC) + timedelta(seconds=5))
    db.session.rollback()
    assert ledger.balances(user).voucher == USD(2500)


def test_a_multi_use_code_serves_each_user_once(ctx, make_user):
    ids = [make_user().id for _ in range(2)]
    a, b = (db.session.get(User, uid) for uid in ids)
    code = voucher(500, max_redemptions=2)
    vouchers.redeem(a, code)
    db.session.commit()
    with pytest.raises(Conflict, match="already redeemed"):
        vouchers.redeem(a, code)
    db.session.rollback()
    vouchers.redeem(b, code)
    db.session.commit()
    assert db.session.scalar(select(Voucher.redemptions)) == 2


def test_voucher_balance_and_cash_mix_on_one_invoice(user):
    (invoice,) = invoice_for(user, {"a": 100})  # 100 h x 0.05 = 5.00
    vouchers.redeem(user, voucher(300))  # settles at once (the job runs after commit)
    db.session.commit()
    db.session.refresh(invoice)
    assert invoice.status == "open" and invoice.amount_due == USD(200)
    topups.credit_top_up(user, USD(1000), reference="pi_1")
    db.session.commit()
    db.session.refresh(invoice)
    assert invoice.status == "paid"
    assert [(p.tender, p.amount_minor) for p in invoice.payments] == [
        ("voucher", 300),
        ("cash", 200),
    ]
    assert ledger.balances(user).cash == USD(800)


def test_credits_then_voucher_then_cash_and_the_preview(user):
    (invoice,) = invoice_for(user, {"a": 200})  # 10.00
    with settlement_held():  # a grant starts a settlement: hold it to see the preview
        credits.grant_credit(user=user, amount=USD(100), reason="r", idempotency_key="k")
        db.session.commit()
    # No settlement ran: the preview shows what would happen.
    balances_before = ledger.balances(user)
    vouchers.create_vouchers(value=USD(300))
    preview = settlement.preview(invoice, user)
    assert [(p.tender, p.amount.amount_minor) for p in preview.parts] == [("credit", 100)]
    assert preview.remaining == USD(900)
    assert ledger.balances(user) == balances_before
    db.session.rollback()


def test_smallest_invoice_is_settled_first(ctx, make_user):
    user = db.session.get(User, make_user().id)
    (big,) = invoice_for(user, {"big": 200})  # Oct: 10.00
    nov = (OCT[1], datetime(2026, 12, 1, tzinfo=UTC))
    dep, _ = deployments.create_deployment(
        external_id="small",
        user=user,
        kind="vm",
        cpu_cores=1,
        memory_gb=0,
        storage_gb=0,
        started_at=nov[0],
    )
    deployments.delete_deployment(dep, ended_at=nov[0] + timedelta(hours=20))  # 1.00
    db.session.commit()
    invoice_run.generate_period(*nov, now=datetime(2026, 12, 2, tzinfo=UTC))
    db.session.commit()
    topups.credit_top_up(user, USD(500), reference="pi_small")  # covers only the small one
    db.session.commit()
    statuses = dict(db.session.execute(select(Invoice.total_minor, Invoice.status)).all())
    assert statuses == {1000: "open", 100: "paid"}
    db.session.refresh(big)
    assert big.amount_due == USD(600)  # the rest of the top-up went to the big one


def test_a_top_up_is_credited_once_per_confirmation(user):
    topups.credit_top_up(user, USD(1000), reference="cs_1")
    topups.credit_top_up(user, USD(1000), reference="cs_1")
    db.session.commit()
    assert ledger.balances(user).cash == USD(1000)


def test_voucher_requests_are_approved_into_the_wallet_or_rejected(ctx, make_user):
    user_id, admin_id = make_user().id, make_user(admin=True).id
    user, admin = db.session.get(User, user_id), db.session.get(User, admin_id)
    req = vouchers.request_voucher(user, amount=USD(2000), reason="Student project")
    other = vouchers.request_voucher(user, amount=USD(100), reason="More")
    db.session.commit()
    vouchers.decide_request(req.id, approve=True, admin=admin, note="Enjoy")
    vouchers.decide_request(other.id, approve=False, admin=admin)
    db.session.commit()
    assert ledger.balances(user).voucher == USD(2000)
    with pytest.raises(Conflict):
        vouchers.decide_request(req.id, approve=True, admin=admin)
    db.session.rollback()

    subjects = sorted(db.session.scalars(select(OutboundEmail.subject)))
    assert subjects == ["Your voucher request was approved", "Your voucher request was rejected"]


@pytest.mark.postgres
def test_50_concurrent_redemptions_of_one_code_one_succeeds(app, make_app, make_user):
    ids = [make_user().id for _ in range(50)]
    with app.app_context():
        code = voucher(1000)
    wide = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 52, "max_overflow": 0})
    barrier = threading.Barrier(50)

    def attempt(user_id):
        with wide.app_context():
            try:
                barrier.wait()
                vouchers.redeem(db.session.get(User, user_id), code)
                db.session.commit()
                return "ok"
            except Conflict:
                db.session.rollback()
                return "used"
            finally:
                db.session.remove()

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(attempt, ids))
    with wide.app_context():
        db.engine.dispose()
    assert outcomes.count("ok") == 1 and outcomes.count("used") == 49
    with app.app_context():
        assert db.session.scalar(select(Voucher.redemptions)) == 1


@pytest.mark.postgres
def test_two_settlement_runs_at_once_pay_each_invoice_once(app, make_app, make_user):
    with app.app_context():
        user = db.session.get(User, make_user().id)
        invoice_for(user, {"a": 100, "b": 60})
        # money arrives without settling (as if the settlement job had not run yet)
        ledger.post_transaction(
            idempotency_key="seed",
            kind="topup",
            user_id=user.id,
            legs=[
                (ledger.system_account(ledger.AccountKind.STRIPE_CLEARING, "USD"), -10_000),
                (ledger.user_account(user, ledger.AccountKind.CASH), 10_000),
            ],
        )
        db.session.commit()
        user_id = user.id
    wide = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 10, "max_overflow": 0})
    barrier = threading.Barrier(6)

    def run(_):
        with wide.app_context():
            barrier.wait()
            result = settlement.settle_user(db.session.get(User, user_id))
            db.session.commit()
            db.session.remove()
            return result.payments

    with ThreadPoolExecutor(6) as pool:
        payments = list(pool.map(run, range(6)))
    with wide.app_context():
        db.engine.dispose()
    assert sum(payments) == 1  # one invoice (8.00 for 160 h), one payment, once
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(InvoicePayment)) == 1
        assert ledger.balances(db.session.get(User, user_id)).cash == USD(10_000 - 800)

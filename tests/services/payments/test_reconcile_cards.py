"""Reconcile knows card charges: a charge recorded as succeeded must be in the ledger."""

from __future__ import annotations

import pytest

from portal.extensions import db
from portal.models import PaymentAttempt, PaymentMethod, User, utcnow
from portal.services.wallet.reconcile import find_discrepancies


@pytest.mark.corrupts_ledger
def test_reconcile_finds_a_succeeded_charge_missing_from_the_ledger(ctx, make_user, runner):
    user = db.session.get(User, make_user().id)
    card = PaymentMethod(
        user_id=user.id,
        gateway_id="pm_test_1",
        fingerprint="fp1",
        brand="visa",
        last4="4242",
        exp_month=12,
        exp_year=2034,
        is_default=True,
    )
    db.session.add(card)
    db.session.flush()
    db.session.add(
        PaymentAttempt(
            user_id=user.id,
            payment_method_id=card.id,
            purpose="topup",
            number=1,
            amount_minor=500,
            currency="USD",
            idempotency_key="topup:1:abc",
            status="succeeded",
            gateway_payment_id="pi_test_1",
            created_at=utcnow(),
            updated_at=utcnow(),
        )
    )
    db.session.commit()
    assert any("succeeded but is not in the ledger" in p for p in find_discrepancies())
    assert runner.invoke(args=["billing", "reconcile"]).exit_code == 1

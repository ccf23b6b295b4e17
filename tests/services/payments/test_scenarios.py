"""Seed 002's settlement scenarios against the Stripe stand-in over HTTP.

Each scenario checks what the user would see (the invoice's status, its payments by tender),
what the ledger holds (the wallets' balances) and what the card processor actually charged
(the stand-in's payment intents for the user's customer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import func, select

from portal.errors import Conflict, NotFound
from portal.extensions import db
from portal.gateways import get_gateway
from portal.models import (
    AttemptStatus,
    Event,
    Invoice,
    OutboundEmail,
    PaymentAttempt,
    PaymentMethod,
    User,
)
from portal.money import Money
from portal.services.metering import deployments
from portal.services.payments import card_charges, cards, settlement, topups
from portal.services.wallet import credits, ledger, vouchers
from tests.support.payments import TEST_CARDS, add_card, charges, invoice_of, settlement_held

AUG = (datetime(2026, 8, 1, tzinfo=UTC), datetime(2026, 9, 1, tzinfo=UTC))
SEP = (datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC))
USD = lambda minor: Money(minor, "USD")  # noqa: E731


# -- helpers ---------------------------------------------------------------------------------
@pytest.fixture
def user(pctx, make_user) -> User:
    return db.session.get(User, make_user().id)


def collected(standin, user: User) -> list[int]:
    """The amounts actually collected: succeeded payment intents."""
    return [i["amount"] for i in charges(standin, user) if i["status"] == "succeeded"]


def fresh(invoice: Invoice) -> Invoice:
    db.session.expire_all()
    return db.session.get(Invoice, invoice.id)


def tenders(invoice: Invoice) -> list[tuple[str, int]]:
    return [(p.tender, p.amount_minor) for p in sorted(fresh(invoice).payments, key=lambda p: p.id)]


def attempts(invoice: Invoice) -> list[PaymentAttempt]:
    return list(
        db.session.scalars(
            select(PaymentAttempt)
            .where(PaymentAttempt.invoice_id == invoice.id)
            .order_by(PaymentAttempt.number)
        )
    )


def events(name: str, user: User) -> list[Event]:
    return list(
        db.session.scalars(select(Event).where(Event.name == name, Event.user_id == user.id))
    )


def mails(user: User, subject_part: str) -> list[OutboundEmail]:
    return list(
        db.session.scalars(
            select(OutboundEmail).where(
                OutboundEmail.user_id == user.id, OutboundEmail.subject.contains(subject_part)
            )
        )
    )


def voucher_of(user: User, minor: int) -> None:
    code = vouchers.create_vouchers(value=USD(minor))[0].code
    vouchers.redeem(user, code)
    db.session.commit()


def top_up(user: User, minor: int, reference: str) -> None:
    topups.credit_top_up(user, USD(minor), reference=reference)
    db.session.commit()


def wallets(user: User) -> tuple[int, int, int]:
    """(credit, voucher, cash) in cents."""
    db.session.expire_all()
    b = ledger.balances(user)
    return b.credit.amount_minor, b.voucher.amount_minor, b.cash.amount_minor


def the_card(saved: cards.Saved) -> PaymentMethod:
    assert saved.created, saved.message
    return saved.card


# -- tenders ---------------------------------------------------------------------------------
def test_credit_voucher_cash_and_card_pay_one_invoice_in_that_order(user, standin):
    with settlement_held():
        card = the_card(add_card(user))
        voucher_of(user, 150)
        top_up(user, 50, reference="pi_mixed_topup")
        invoice = invoice_of(user, {"web": 100})
        credits.grant_credit(
            user=user, amount=USD(100), reason="goodwill", idempotency_key=f"mixed:{user.id}"
        )
        db.session.commit()
    assert invoice.total_minor == 500 and invoice.status == "open"
    preview = settlement.preview(invoice, user)
    assert [(p.label, p.amount.amount_minor) for p in preview.parts] == [
        ("Credits", 100),
        ("Voucher balance", 150),
        ("Prepaid balance", 50),
        (f"Card {card.label}", 200),
    ]
    assert preview.remaining == USD(0)

    result = settlement.settle(user.id)

    assert fresh(invoice).status == "paid" and invoice.id in result.paid
    assert tenders(invoice) == [("credit", 100), ("voucher", 150), ("cash", 50), ("card", 200)]
    assert wallets(user) == (0, 0, 0)
    (attempt,) = attempts(invoice)
    assert attempt.status == AttemptStatus.SUCCEEDED and attempt.payment_method_id == card.id
    found = pctx_gateway().find_payment_intent_by_idempotency_key(
        cards.customer_id(user), attempt.idempotency_key
    )
    assert found is not None and found.amount == USD(200) and found.id == attempt.gateway_payment_id
    assert [(i["amount"], i["status"], i["payment_method"]) for i in charges(standin, user)] == [
        (200, "succeeded", card.gateway_id)
    ]
    assert len(events("billing.invoice.paid", user)) == 1


def pctx_gateway():
    return get_gateway()


def test_with_no_balance_the_default_card_pays(user, standin):
    with settlement_held():
        default = the_card(add_card(user))
        other = the_card(add_card(user, "5555555555554444"))
        invoice = invoice_of(user, {"web": 100})
    assert default.is_default and not other.is_default

    settlement.settle(user.id)

    assert fresh(invoice).status == "paid"
    assert tenders(invoice) == [("card", 500)]
    assert [(i["amount"], i["status"], i["payment_method"]) for i in charges(standin, user)] == [
        (500, "succeeded", default.gateway_id)
    ]
    assert wallets(user) == (0, 0, 0)


def test_a_declined_default_card_moves_on_to_the_next_card(user, standin):
    with settlement_held():
        declined = the_card(add_card(user, TEST_CARDS["charge_declined"]))
        good = the_card(add_card(user))
        invoice = invoice_of(user, {"web": 100})
    assert declined.is_default

    result = settlement.settle(user.id)

    assert fresh(invoice).status == "paid" and result.failed == []
    assert tenders(invoice) == [("card", 500)]
    first, second = attempts(invoice)
    assert (first.payment_method_id, first.status) == (declined.id, AttemptStatus.FAILED)
    assert first.decline_code
    assert (second.payment_method_id, second.status) == (good.id, AttemptStatus.SUCCEEDED)
    assert [(i["amount"], i["status"], i["payment_method"]) for i in charges(standin, user)] == [
        (500, "requires_payment_method", declined.gateway_id),
        (500, "succeeded", good.gateway_id),
    ]
    assert events("billing.payment.failed", user) == []
    assert mails(user, "could not collect") == []


def test_when_every_card_is_declined_the_invoice_stays_open_and_the_user_is_told(user, standin):
    with settlement_held():  # the stand-in has one card number that saves but never pays
        the_card(add_card(user, TEST_CARDS["charge_declined"]))
        invoice = invoice_of(user, {"web": 100})

    result = settlement.settle(user.id)

    assert fresh(invoice).status == "open" and fresh(invoice).amount_paid_minor == 0
    assert result.failed == [invoice.id] and result.paid == []
    assert tenders(invoice) == []
    assert [a.status for a in attempts(invoice)] == [AttemptStatus.FAILED]
    assert [i["status"] for i in charges(standin, user)] == ["requires_payment_method"]
    assert collected(standin, user) == []
    (failed,) = events("billing.payment.failed", user)
    assert failed.payload["invoice_id"] == invoice.id
    assert failed.payload["amount_due_minor"] == 500
    assert [a["decline_code"] for a in failed.payload["attempts"]] == ["generic_decline"]
    (mail,) = mails(user, "could not collect")
    assert mail.to_addr == user.email and invoice.number in mail.subject
    assert events("billing.invoice.paid", user) == []


def test_a_card_that_needs_3d_secure_waits_for_the_customer_then_pays(user, standin):
    with settlement_held():
        card = the_card(add_card(user, TEST_CARDS["three_d_secure"]))
        invoice = invoice_of(user, {"web": 100})

    result = settlement.settle(user.id)

    assert result.needs_action == [invoice.id] and result.failed == []
    assert fresh(invoice).status == "open"
    (attempt,) = attempts(invoice)
    assert attempt.status == AttemptStatus.REQUIRES_ACTION and attempt.payment_method_id == card.id
    (mail,) = mails(user, "Confirm your payment")
    assert f"/invoices/{invoice.id}" in mail.body_text
    assert events("billing.payment.failed", user) == []
    # Settling again (the daily run, Pay now) neither charges again nor mails again, and
    # Pay now says the payment waits for the customer.
    settlement.settle(user.id)
    assert settlement.settle(user.id, invoice_id=invoice.id).needs_action == [invoice.id]
    assert len(attempts(invoice)) == 1 and len(mails(user, "Confirm your payment")) == 1
    assert len(charges(standin, user)) == 1

    # "Complete payment": off to the bank's page, which the customer passes, and back.
    return_url = f"http://portal.test/invoices/{invoice.id}/confirmed"
    url = card_charges.start_authentication(user, attempt, return_url)
    db.session.commit()
    assert url
    answer = requests.post(url, data={"result": "complete"}, allow_redirects=False, timeout=10)
    assert answer.status_code == 303 and answer.headers["Location"].startswith(return_url)
    attempt = card_charges.refresh(user, attempt.gateway_payment_id)
    db.session.commit()

    assert attempt.status == AttemptStatus.SUCCEEDED
    assert fresh(invoice).status == "paid"
    assert tenders(invoice) == [("card", 500)]
    assert [(i["amount"], i["status"]) for i in charges(standin, user)] == [(500, "succeeded")]
    # The customer's return seen twice books nothing twice.
    card_charges.refresh(user, attempt.gateway_payment_id)
    db.session.commit()
    assert tenders(invoice) == [("card", 500)]
    assert len(events("billing.invoice.paid", user)) == 1


def test_a_charge_waiting_for_3d_secure_is_not_needed_once_a_top_up_paid(user, standin):
    with settlement_held():
        the_card(add_card(user, TEST_CARDS["three_d_secure"]))
        invoice = invoice_of(user, {"web": 100})
    settlement.settle(user.id)
    (attempt,) = attempts(invoice)
    assert attempt.status == AttemptStatus.REQUIRES_ACTION

    top_up(user, 500, reference="pi_while_waiting")  # settles after commit: cash pays

    assert fresh(invoice).status == "paid" and tenders(invoice) == [("cash", 500)]
    # The customer follows the old "Complete payment" link: nothing is confirmed or charged.
    url = card_charges.start_authentication(
        user,
        db.session.get(PaymentAttempt, attempt.id),
        f"http://portal.test/invoices/{invoice.id}/confirmed",
    )
    db.session.commit()
    assert url is None
    (attempt,) = attempts(invoice)
    assert (attempt.status, attempt.decline_code) == (AttemptStatus.FAILED, "not_needed")
    assert collected(standin, user) == []
    assert tenders(invoice) == [("cash", 500)] and wallets(user) == (0, 0, 0)


# -- new money settles what is pending -------------------------------------------------------
def test_adding_a_card_settles_pending_invoices(user, standin):
    second = invoice_of(user, {"db": 40}, period=SEP)
    first = invoice_of(user, {"web": 100})
    assert (first.status, second.status) == ("open", "open")

    card = the_card(add_card(user))  # the settlement runs after the card's commit

    assert (fresh(first).status, fresh(second).status) == ("paid", "paid")
    assert tenders(first) == [("card", 500)] and tenders(second) == [("card", 200)]
    # Smallest first: the September invoice was charged before October's.
    assert [(i["amount"], i["payment_method"]) for i in charges(standin, user)] == [
        (200, card.gateway_id),
        (500, card.gateway_id),
    ]


def test_an_invoice_is_settled_when_it_is_issued(user, standin, make_user):
    """Issuing settles at once for whoever has something to pay with: the card holder and
    the user with a prepaid balance are paid; the user with nothing waits (no charge)."""
    card = the_card(add_card(user))
    topped = db.session.get(User, make_user().id)
    top_up(topped, 700, reference="pi_before_the_invoice")
    broke = db.session.get(User, make_user().id)

    paid_by_card = invoice_of(user, {"web": 100}, settle=True)
    paid_by_balance = invoice_of(topped, {"web": 100}, settle=True)
    waiting = invoice_of(broke, {"web": 100}, settle=True)

    assert tenders(paid_by_card) == [("card", 500)] and fresh(paid_by_card).status == "paid"
    assert [(i["amount"], i["payment_method"]) for i in charges(standin, user)] == [
        (500, card.gateway_id)
    ]
    assert tenders(paid_by_balance) == [("cash", 500)] and fresh(paid_by_balance).status == "paid"
    assert fresh(waiting).status == "open" and tenders(waiting) == []


def test_a_top_up_settles_pending_invoices(user, standin):
    invoice = invoice_of(user, {"web": 100})

    top_up(user, 700, reference="pi_topup_settles")  # the settlement runs after commit

    assert fresh(invoice).status == "paid"
    assert tenders(invoice) == [("cash", 500)]
    assert wallets(user) == (0, 0, 200)
    # The same payment confirmed again credits nothing more.
    top_up(user, 700, reference="pi_topup_settles")
    assert wallets(user) == (0, 0, 200)
    assert charges(standin, user) == []


def test_a_top_up_that_covers_only_some_pays_the_smallest_first(user, standin):
    big = invoice_of(user, {"big": 60}, period=AUG)  # $3.00
    small = invoice_of(user, {"small": 20}, period=SEP)  # $1.00
    middle = invoice_of(user, {"middle": 40})  # $2.00
    assert [i.total_minor for i in (big, small, middle)] == [300, 100, 200]

    top_up(user, 350, reference="pi_topup_some")

    assert [fresh(i).status for i in (small, middle, big)] == ["paid", "paid", "open"]
    assert tenders(small) == [("cash", 100)] and tenders(middle) == [("cash", 200)]
    assert tenders(big) == [("cash", 50)] and fresh(big).amount_paid_minor == 50
    assert wallets(user) == (0, 0, 0)


def test_settlement_charges_cards_for_the_smallest_invoice_first(user, standin):
    with settlement_held():
        big = invoice_of(user, {"big": 60}, period=AUG)
        small = invoice_of(user, {"small": 20}, period=SEP)
        middle = invoice_of(user, {"middle": 40})
        top_up(user, 150, reference="pi_topup_then_cards")
        the_card(add_card(user))

    settlement.settle(user.id)

    assert tenders(small) == [("cash", 100)]
    assert tenders(middle) == [("cash", 50), ("card", 150)]
    assert tenders(big) == [("card", 300)]
    assert [i["amount"] for i in charges(standin, user)] == [150, 300]
    assert all(fresh(i).status == "paid" for i in (big, small, middle))


# -- Pay now ---------------------------------------------------------------------------------
def test_pay_now_pays_that_invoice_only(user, standin):
    with settlement_held():
        small = invoice_of(user, {"small": 20}, period=SEP)
        big = invoice_of(user, {"big": 100})
        top_up(user, 50, reference="pi_pay_now")
        the_card(add_card(user))

    result = settlement.settle(user.id, invoice_id=big.id)

    assert result.paid == [big.id]
    assert tenders(big) == [("cash", 50), ("card", 450)]
    assert fresh(small).status == "open" and tenders(small) == []
    assert [i["amount"] for i in charges(standin, user)] == [450]


def test_pay_now_on_another_users_invoice_is_not_found(user, make_user, standin):
    db.session.commit()  # SQLite: the other user is made on another connection
    other = db.session.get(User, make_user().id)
    theirs = invoice_of(other, {"web": 100})
    with pytest.raises(NotFound):
        settlement.settle(user.id, invoice_id=theirs.id)
    db.session.rollback()
    assert fresh(theirs).status == "open"


def test_a_paid_invoice_is_never_paid_again(user, standin, client, auth):
    with settlement_held():
        the_card(add_card(user))
        invoice = invoice_of(user, {"web": 100})
    settlement.settle(user.id)
    assert fresh(invoice).status == "paid"

    again = settlement.settle(user.id)
    now = settlement.settle(user.id, invoice_id=invoice.id)
    top_up(user, 500, reference="pi_after_paid")  # new money settles again: nothing due

    assert (again.payments, again.card_attempts, now.payments, now.card_attempts) == (0, 0, 0, 0)
    assert tenders(invoice) == [("card", 500)]
    assert len(attempts(invoice)) == 1
    assert collected(standin, user) == [500]
    assert wallets(user) == (0, 0, 500)
    (paid,) = events("billing.invoice.paid", user)
    assert paid.subject == f"invoice:{invoice.id}"

    # "Pay now" on the paid invoice's page says there is nothing to pay and charges nothing.
    auth.login(user.email)
    answer = client.submit(f"/invoices/{invoice.id}/pay", follow_redirects=True)
    assert answer.status_code == 200
    assert "there is nothing to pay" in answer.get_data(as_text=True)
    assert tenders(invoice) == [("card", 500)]
    assert collected(standin, user) == [500]


# -- cards: the last-card guard, the default, ownership --------------------------------------
def live_deployment(user: User, name: str = "live") -> None:
    deployments.create_deployment(
        external_id=f"{name}-{user.id}",
        user=user,
        kind="vm",
        cpu_cores=1,
        memory_gb=0,
        storage_gb=0,
        started_at=datetime.now(UTC) - timedelta(hours=1),
    )
    db.session.commit()


def test_the_last_card_stays_while_deployments_run_and_vouchers_do_not_cover_them(user, standin):
    card = the_card(add_card(user))
    live_deployment(user)
    with pytest.raises(Conflict) as refused:
        cards.remove_card(user, card.id)
    db.session.rollback()
    assert cards.LAST_CARD_RULE in str(refused.value)
    assert not cards.can_remove(user, card).allowed
    assert [c.id for c in cards.list_cards(user)] == [card.id]


def test_the_last_card_may_go_when_the_voucher_balance_covers_the_deployments(user, standin):
    card = the_card(add_card(user))
    live_deployment(user)
    voucher_of(user, 100_00)
    assert cards.voucher_need(user).amount_minor <= 100_00
    cards.remove_card(user, card.id)
    db.session.commit()
    assert cards.list_cards(user) == []


def test_the_last_card_may_go_when_nothing_runs(user, standin):
    card = the_card(add_card(user))
    invoice_of(user, {"gone": 10})  # deployments that ended do not count

    cards.remove_card(user, card.id)
    db.session.rollback()  # a removal that does not commit leaves the card where it was
    assert get_gateway().get_payment_method(card.gateway_id).customer is not None
    cards.remove_card(user, card.id)
    db.session.commit()
    assert cards.list_cards(user) == []
    assert db.session.get(PaymentMethod, card.id).removed_at is not None
    # taken off the gateway's customer after the commit
    assert get_gateway().get_payment_method(card.gateway_id).customer is None


def test_with_two_cards_either_may_go_and_the_default_moves(user, standin):
    first = the_card(add_card(user))
    second = the_card(add_card(user, "5555555555554444"))
    live_deployment(user)
    assert first.is_default

    cards.remove_card(user, first.id)
    db.session.commit()

    (remaining,) = cards.list_cards(user)
    assert remaining.id == second.id and remaining.is_default
    with pytest.raises(Conflict):  # now the last one
        cards.remove_card(user, second.id)
    db.session.rollback()


def test_set_default_and_the_next_charge_uses_it(user, standin):
    with settlement_held():
        first = the_card(add_card(user))
        second = the_card(add_card(user, "5555555555554444"))
        cards.set_default(user, second.id)
        db.session.commit()
        invoice = invoice_of(user, {"web": 100})
    assert [c.id for c in cards.list_cards(user) if c.is_default] == [second.id]
    assert not db.session.get(PaymentMethod, first.id).is_default

    settlement.settle(user.id)

    assert tenders(invoice) == [("card", 500)]
    assert [i["payment_method"] for i in charges(standin, user)] == [second.gateway_id]


def test_another_users_card_is_not_found(user, make_user, standin):
    card = the_card(add_card(user))
    db.session.commit()
    other = db.session.get(User, make_user().id)
    with pytest.raises(NotFound):
        cards.set_default(other, card.id)
    db.session.rollback()
    with pytest.raises(NotFound):
        cards.remove_card(other, card.id)
    db.session.rollback()
    assert db.session.get(PaymentMethod, card.id).removed_at is None
    assert db.session.get(PaymentMethod, card.id).is_default


def test_the_same_card_twice_is_refused_with_a_clear_message(user, standin):
    card = the_card(add_card(user))
    again = add_card(user)
    assert again.duplicate_of is not None and again.duplicate_of.id == card.id
    assert "already saved" in again.message
    assert (
        db.session.scalar(
            select(func.count()).select_from(PaymentMethod).where(PaymentMethod.user_id == user.id)
        )
        == 1
    )


def test_with_no_card_and_no_money_the_user_is_told_once(pctx, make_user):
    """Nothing can pay: billing.payment.failed and one email, not one per daily run."""
    user = db.session.get(User, make_user().id)
    invoice = invoice_of(user, {"web": 100})
    for _ in range(3):
        result = settlement.settle(user.id)
    assert result.failed == []  # the later runs stay quiet
    events = db.session.scalars(select(Event).where(Event.name == "billing.payment.failed")).all()
    assert [(e.subject, e.payload["amount_due_minor"]) for e in events] == [
        (f"invoice:{invoice.id}:no-payment-method", 500)
    ]
    mails = db.session.scalars(
        select(OutboundEmail).where(OutboundEmail.subject.like("We could not collect%"))
    ).all()
    assert len(mails) == 1 and invoice.number in mails[0].body_text
    assert db.session.get(Invoice, invoice.id).status == "open"

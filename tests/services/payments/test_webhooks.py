"""The gateway's webhooks, from real flows on the stand-in to the portal's endpoint.

Each flow runs against the stand-in over HTTP (cards typed on its sandbox pages, 3-D Secure
completed there, refunds made through the gateway); the stand-in signs its events and sends
them to the test's receiver; the tests POST them to the portal's webhook endpoint as Stripe
would, in order once, or each three times in a shuffled order, and compare what the portal
holds afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import func, select

from portal.extensions import db
from portal.gateways import get_gateway
from portal.models import (
    CheckoutSession,
    Event,
    Invoice,
    LedgerTransaction,
    PaymentAttempt,
    PaymentMethod,
    PaymentReversal,
    User,
    WebhookEvent,
)
from portal.money import Money
from portal.services.payments import card_charges, cards, inbox, settlement, topups
from portal.services.wallet import ledger
from tests.support.payments import OCT, SECRET_KEY, SEP, TEST_CARDS, add_card, invoice_of, type_card

AUG = (datetime(2026, 8, 1, tzinfo=UTC), datetime(2026, 9, 1, tzinfo=UTC))
WEBHOOK = "/api/plugins/billing/webhook"
PORTAL = "http://portal.test"


# -- events: which belong to whom, waiting for them, delivering them -------------------------
def _owner(obj: dict, payment_customers: dict[str, str]) -> str | None:
    """The gateway customer an event's object belongs to (a dispute through its payment)."""
    if obj.get("object") == "customer":
        return obj.get("id")
    if obj.get("customer"):
        return obj["customer"]
    return payment_customers.get(obj.get("payment_intent") or "")


def events_of(receiver, customer: str, since: int = 0) -> list[tuple[dict, bytes]]:
    """The deliveries (headers, body) after index ``since`` about ``customer``'s objects."""
    deliveries = list(receiver.deliveries)
    payment_customers = {}
    for _, body in deliveries:
        obj = json.loads(body)["data"]["object"]
        if obj.get("object") == "payment_intent" and obj.get("customer"):
            payment_customers[obj["id"]] = obj["customer"]
        if obj.get("object") == "charge" and obj.get("payment_intent") and obj.get("customer"):
            payment_customers[obj["payment_intent"]] = obj["customer"]
    return [
        (headers, body)
        for headers, body in deliveries[since:]
        if _owner(json.loads(body)["data"]["object"], payment_customers) == customer
    ]


def wait_for_all(receiver, expected: list[tuple[str, str]], timeout: float = 20) -> None:
    """Until the stand-in delivered an event of each (type, object id)."""
    deadline = time.monotonic() + timeout
    missing = list(expected)
    while time.monotonic() < deadline:
        seen = {(e["type"], e["data"]["object"].get("id")) for e in receiver.events()}
        missing = [item for item in expected if item not in seen]
        if not missing:
            return
        time.sleep(0.05)
    raise AssertionError(
        f"these events did not arrive: {missing}; got "
        f"{[(e['type'], e['data']['object'].get('id')) for e in receiver.events()]}"
    )


def post_event(client, headers: dict, body: bytes):
    """One delivery to the portal's endpoint, as the stand-in made it (signature included)."""
    return client.post(
        WEBHOOK,
        data=body,
        content_type="application/json",
        headers={"Stripe-Signature": headers["Stripe-Signature"]},
    )


def deliver(
    client, deliveries: list[tuple[dict, bytes]], *, times: int = 1, seed: int | str | None = None
) -> None:
    """POST each delivery ``times`` times: in order, newest first (``seed="reversed"``), or
    shuffled with ``random.Random(seed)``. Then what the requeue job does: events left
    unprocessed (a refund that came before its payment) are processed again until nothing
    changes."""
    sent = [d for d in deliveries for _ in range(times)]
    if seed == "reversed":
        sent.reverse()
    elif seed is not None:
        random.Random(seed).shuffle(sent)
    for headers, body in sent:
        answer = post_event(client, headers, body)
        assert answer.status_code == 200, answer.get_data(as_text=True)
    process_unprocessed()


def process_unprocessed() -> None:
    """The requeue job until it has nothing left to do (processing runs synchronously)."""
    for _ in range(10):
        db.session.commit()
        if not inbox.requeue_unprocessed(
            older_than=timedelta(0), now=datetime.now(UTC) + timedelta(seconds=1)
        ):
            db.session.commit()
            return
        db.session.commit()  # the jobs run after this commit
    pending = db.session.scalars(select(WebhookEvent).where(WebhookEvent.processed_at.is_(None)))
    raise AssertionError(f"events never processed: {[(e.type, e.error) for e in pending]}")


def sign(body: bytes, secret: str) -> str:
    stamp = int(time.time())
    digest = hmac.new(secret.encode(), b"%d." % stamp + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def inbox_count() -> int:
    db.session.commit()
    count = db.session.scalar(select(func.count()).select_from(WebhookEvent))
    db.session.commit()
    return count


# -- what the portal holds about a user, without ids -----------------------------------------
def state_of(user_id: int) -> dict:
    db.session.commit()  # a fresh look; the session holds nothing open afterwards
    user = db.session.get(User, user_id)
    balances = ledger.balances(user)
    invoices = db.session.scalars(
        select(Invoice).where(Invoice.user_id == user_id).order_by(Invoice.period_start)
    ).all()
    txns = db.session.scalars(
        select(LedgerTransaction).where(LedgerTransaction.user_id == user_id)
    ).all()
    state = {
        "balances": {
            k: getattr(balances, k).amount_minor
            for k in ("cash", "voucher", "credit", "receivable")
        },
        "cards": sorted(
            (c.last4, c.is_default, c.removed_at is None)
            for c in db.session.scalars(
                select(PaymentMethod).where(PaymentMethod.user_id == user_id)
            )
        ),
        "invoices": [
            (
                i.total_minor,
                i.status,
                i.amount_paid_minor,
                sorted((p.tender, p.amount_minor) for p in i.payments),
            )
            for i in invoices
        ],
        "attempts": sorted(
            (a.purpose, a.status, a.amount_minor)
            for a in db.session.scalars(
                select(PaymentAttempt).where(PaymentAttempt.user_id == user_id)
            )
        ),
        "reversals": sorted(
            (r.kind, r.amount_minor, r.reason)
            for r in db.session.scalars(
                select(PaymentReversal).where(PaymentReversal.user_id == user_id)
            )
        ),
        "ledger_transactions": len(txns),
        "ledger": sorted(
            (t.kind, tuple(sorted((e.account.kind, e.amount_minor) for e in t.entries)))
            for t in txns
        ),
        "checkouts": sorted(
            (c.purpose, c.status)
            for c in db.session.scalars(
                select(CheckoutSession).where(CheckoutSession.user_id == user_id)
            )
        ),
        "events": sorted(
            e.name for e in db.session.scalars(select(Event).where(Event.user_id == user_id))
        ),
    }
    db.session.commit()
    return state


def inbox_of(deliveries: list[tuple[dict, bytes]]) -> Counter:
    """How the inbox holds these events: (type, outcome) of each stored row."""
    ids = [json.loads(body)["id"] for _, body in deliveries]
    db.session.commit()
    rows = db.session.scalars(select(WebhookEvent).where(WebhookEvent.event_id.in_(ids))).all()
    found = Counter((row.type, row.outcome) for row in rows)
    db.session.commit()
    return found


# -- the flows ---------------------------------------------------------------------------------
def customer_of(user_id: int) -> str:
    customer = cards.customer_id(db.session.get(User, user_id))
    db.session.commit()
    return customer


def pay_checkout_on_sandbox(user_id: int, amount_minor: int) -> tuple[str, str]:
    """A checkout top-up paid on the stand-in's page; nobody comes back to the portal's
    return page. Returns (checkout session id, payment intent id)."""
    user = db.session.get(User, user_id)
    row = topups.start_checkout(
        user,
        Money(amount_minor, user.currency),
        success_url=f"{PORTAL}/wallet/top-up/done?session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=f"{PORTAL}/wallet/",
    )
    session_id, url = row.gateway_session_id, row.url
    db.session.commit()
    answer = type_card(url, TEST_CARDS["ok"])
    assert answer.status_code == 303 and answer.headers["Location"].startswith(PORTAL), answer.text
    info = get_gateway().retrieve_checkout_session(session_id)
    assert info.payment_status == "paid"
    return session_id, info.payment_intent


def add_card_on_sandbox(user_id: int, number: str) -> tuple[str, str]:
    """A card typed on the hosted "add a card" page; nobody comes back to the portal.
    Returns (checkout session id, setup intent id)."""
    row = cards.start_adding(
        db.session.get(User, user_id),
        success_url=f"{PORTAL}/payment-methods/added?session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=f"{PORTAL}/payment-methods/",
    )
    session_id, url = row.gateway_session_id, row.url
    db.session.commit()
    answer = type_card(url, number)
    assert answer.status_code == 303, answer.text
    return session_id, get_gateway().retrieve_checkout_session(session_id).setup_intent


def card_of(user_id: int, number: str) -> PaymentMethod:
    return db.session.scalar(
        select(PaymentMethod).where(
            PaymentMethod.user_id == user_id,
            PaymentMethod.last4 == number[-4:],
            PaymentMethod.removed_at.is_(None),
        )
    )


def settle_with(user_id: int, number: str, invoice: Invoice) -> PaymentAttempt:
    """Make ``number`` the default card and settle ``invoice``; returns its card attempt."""
    cards.set_default(db.session.get(User, user_id), card_of(user_id, number).id)
    db.session.commit()
    settlement.settle(user_id, invoice_id=invoice.id)
    attempt = db.session.scalars(
        select(PaymentAttempt)
        .where(PaymentAttempt.invoice_id == invoice.id)
        .order_by(PaymentAttempt.id.desc())
    ).first()
    db.session.commit()
    return attempt


def authenticate_on_sandbox(user_id: int, attempt_id: int) -> None:
    """The customer presses "Complete payment" and passes 3-D Secure on the bank's page; the
    way back to the portal is not followed (the webhook tells)."""
    attempt = db.session.get(PaymentAttempt, attempt_id)
    url = card_charges.start_authentication(
        db.session.get(User, user_id), attempt, return_url=f"{PORTAL}/invoices/confirmed"
    )
    db.session.commit()
    assert url and "/sandbox/authenticate/" in url
    answer = requests.post(url, data={"result": "complete"}, allow_redirects=False, timeout=10)
    assert answer.status_code == 303 and answer.headers["Location"].startswith(PORTAL)


def phase_one(user_id: int) -> list[tuple[str, str]]:
    """A checkout top-up of $1.00 and a card added, both known to the portal only through
    the webhooks. Returns the events to wait for."""
    topup_session, topup_payment = pay_checkout_on_sandbox(user_id, 100)
    setup_session, setup_intent = add_card_on_sandbox(user_id, TEST_CARDS["ok"])
    return [
        ("checkout.session.completed", topup_session),
        ("payment_intent.succeeded", topup_payment),
        ("checkout.session.completed", setup_session),
        ("setup_intent.succeeded", setup_intent),
    ]


def phase_two(user_id: int) -> list[tuple[str, str]]:
    """With the card known: two more cards (3-D Secure, disputed), three invoices paid by
    card (one partly from the $1.00 balance, one by the card that is disputed, one after
    3-D Secure that only the webhook reports), and that payment refunded in two parts."""
    user = db.session.get(User, user_id)
    for number in (TEST_CARDS["three_d_secure"], TEST_CARDS["disputed"]):
        assert add_card(user, number).created
    expected = []
    first = invoice_of(user, {f"web{user_id}": 100}, period=AUG)  # $5.00
    attempt = settle_with(user_id, TEST_CARDS["ok"], first)
    assert attempt.status == "succeeded" and attempt.amount_minor == 400
    expected.append(("payment_intent.succeeded", attempt.gateway_payment_id))

    second = invoice_of(db.session.get(User, user_id), {f"db{user_id}": 60}, period=SEP)
    attempt = settle_with(user_id, TEST_CARDS["disputed"], second)  # $3.00
    assert attempt.status == "succeeded"
    expected += [("payment_intent.succeeded", attempt.gateway_payment_id)]

    third = invoice_of(db.session.get(User, user_id), {f"cache{user_id}": 160}, period=OCT)
    attempt = settle_with(user_id, TEST_CARDS["three_d_secure"], third)  # $8.00
    assert attempt.status == "requires_action"
    authenticate_on_sandbox(user_id, attempt.id)
    payment = attempt.gateway_payment_id
    expected.append(("payment_intent.succeeded", payment))
    gateway = get_gateway()
    for n, part in enumerate((300, 500)):
        gateway.refund(payment, Money(part, "USD"), idempotency_key=f"test-refund:{payment}:{n}")
    return expected


def refunds_and_disputes(receiver, customer: str) -> list[tuple[str, str]]:
    """The charge events of phase two, once the stand-in sent them."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        types = Counter(json.loads(body)["type"] for _, body in events_of(receiver, customer))
        if types["charge.refunded"] >= 2 and types["charge.dispute.created"] >= 1:
            return []
        time.sleep(0.05)
    raise AssertionError("the refunds and the dispute did not arrive")


# -- the tests -----------------------------------------------------------------------------------
def run_flows(client, receiver, user_id: int, *, times: int, seed: int | str | None) -> list:
    """Both phases for one user, their events delivered ``times`` times each (shuffled with
    ``seed``). Returns the state after each phase."""
    customer = customer_of(user_id)
    states = []
    since = len(receiver.deliveries)
    wait_for_all(receiver, phase_one(user_id))
    first = events_of(receiver, customer, since)
    deliver(client, first, times=times, seed=seed)
    states.append(state_of(user_id))

    since = len(receiver.deliveries)
    wait_for_all(receiver, phase_two(user_id))
    refunds_and_disputes(receiver, customer)
    second = events_of(receiver, customer, since)
    deliver(client, second, times=times, seed=seed if seed in (None, "reversed") else seed + 1)
    states.append(state_of(user_id))
    states.append(inbox_of(first + second))
    return states


@pytest.mark.parametrize("seed", [7, 2026, "reversed"])
def test_each_event_three_times_shuffled_leaves_the_state_of_one_delivery_in_order(
    pctx, make_user, receiver, seed
):
    """``reversed``: every event three times, newest first, so each refund arrives before
    the payment it refunds, and the full refund before the partial one."""
    client = pctx.test_client()
    once = run_flows(client, receiver, make_user().id, times=1, seed=None)
    thrice = run_flows(client, receiver, make_user().id, times=3, seed=seed)

    # What the webhooks alone made the portal hold: the top-up and the card.
    after_one = once[0]
    assert after_one["balances"]["cash"] == 100
    assert after_one["cards"] == [("4242", True, True)]
    assert after_one["checkouts"] == [("setup", "complete"), ("topup", "complete")]
    assert after_one["ledger"] == [("topup", (("cash", 100), ("stripe_clearing", -100)))]

    # The 3-D Secure payment (reported by the webhook only), its refunds and the dispute.
    after_two = once[1]
    assert [status for _, status, _, _ in after_two["invoices"]] == ["paid", "paid", "paid"]
    assert after_two["invoices"] == [
        (500, "paid", 500, [("card", 400), ("cash", 100)]),  # August: the balance, then a card
        (300, "paid", 300, [("card", 300)]),  # September: the disputed card
        (800, "paid", 800, [("card", 800)]),
    ]  # October: after 3-D Secure
    assert after_two["reversals"] == [
        ("dispute", 300, "fraudulent"),
        ("refund", 300, "refunded"),
        ("refund", 500, "refunded"),
    ]
    assert after_two["balances"] == {"cash": 0, "voucher": 0, "credit": 0, "receivable": 0}
    assert after_two["events"].count("billing.payment.disputed") == 1
    assert after_two["events"].count("billing.invoice.paid") == 3

    assert thrice[0] == once[0]
    assert thrice[1] == once[1]
    assert thrice[2] == once[2]  # every event stored once, with the same outcome
    assert all(outcome == "handled" or outcome == "unhandled" for _, outcome in once[2])


def test_a_bad_signature_is_400_and_stores_nothing(pctx, make_user, receiver):
    user_id = make_user().id
    customer = customer_of(user_id)
    session, payment = pay_checkout_on_sandbox(user_id, 500)
    wait_for_all(
        receiver, [("checkout.session.completed", session), ("payment_intent.succeeded", payment)]
    )
    client = pctx.test_client()
    before = inbox_count()
    for headers, body in events_of(receiver, customer):
        event = json.loads(body)
        forged = json.dumps(
            {**event, "data": {"object": {**event["data"]["object"], "amount": 999_999}}}
        ).encode()
        for signature in (
            headers["Stripe-Signature"],  # over the real body
            sign(body, "whsec_someone_else"),  # another secret
            "t=1,v1=" + "0" * 64,
            "",
        ):
            answer = client.post(
                WEBHOOK,
                data=forged if signature == headers["Stripe-Signature"] else body,
                content_type="application/json",
                headers={"Stripe-Signature": signature} if signature else {},
            )
            assert answer.status_code == 400
            assert answer.json["error"]["code"] == "bad_signature"
    assert inbox_count() == before
    assert state_of(user_id)["balances"]["cash"] == 0


def test_an_event_of_the_other_mode_is_ignored(pctx, make_user, receiver):
    user_id = make_user().id
    customer = customer_of(user_id)
    session, payment = pay_checkout_on_sandbox(user_id, 500)
    wait_for_all(
        receiver, [("checkout.session.completed", session), ("payment_intent.succeeded", payment)]
    )
    client = pctx.test_client()
    before = inbox_count()
    for _, body in events_of(receiver, customer):
        live = json.dumps({**json.loads(body), "livemode": True}).encode()
        answer = client.post(
            WEBHOOK,
            data=live,
            content_type="application/json",
            headers={"Stripe-Signature": sign(live, receiver.secret)},
        )
        assert answer.status_code == 200
        assert answer.json == {"received": False, "ignored": "livemode"}
    assert inbox_count() == before
    assert state_of(user_id)["balances"]["cash"] == 0


@pytest.mark.parametrize(
    "first", ["checkout.session.completed", "payment_intent.succeeded", "return page"]
)
def test_a_checkout_top_up_is_credited_once_whichever_comes_first(
    pctx, make_user, receiver, auth, client, first
):
    user = make_user()
    customer = customer_of(user.id)
    session, payment = pay_checkout_on_sandbox(user.id, 2500)
    wait_for_all(
        receiver, [("checkout.session.completed", session), ("payment_intent.succeeded", payment)]
    )
    by_type = {
        json.loads(body)["type"]: (headers, body) for headers, body in events_of(receiver, customer)
    }
    auth.login(user)

    def return_page():
        answer = client.get(f"/wallet/top-up/done?session_id={session}")
        assert answer.status_code == 303
        return answer

    steps = {
        "checkout.session.completed": lambda: post_event(
            client, *by_type["checkout.session.completed"]
        ),
        "payment_intent.succeeded": lambda: post_event(
            client, *by_type["payment_intent.succeeded"]
        ),
        "return page": return_page,
    }
    order = [first] + [name for name in steps if name != first]
    for name in order + order[::-1]:
        assert steps[name]().status_code in (200, 303)
        state = state_of(user.id)
        assert state["balances"]["cash"] == 2500, name
        assert state["ledger"] == [("topup", (("cash", 2500), ("stripe_clearing", -2500)))]
    assert state["checkouts"] == [("topup", "complete")]
    page = client.get("/wallet/").get_data(as_text=True)
    assert page.count("Top-up by card (checkout)") == 1  # one line in the wallet's history
    assert (
        '<div class="balance" id="balance-cash"><h2>Prepaid balance</h2><p class="amount">$25.00</p>'
        in page
    )


@pytest.mark.postgres
def test_deliveries_at_the_same_moment_credit_a_top_up_once(
    pctx, make_app, make_user, receiver, standin
):
    """Both events of a checkout top-up, four copies each, sent at once by eight threads
    (eight requests, each processing its event as a worker would): stored once each,
    credited once."""
    user_id = make_user().id
    customer = customer_of(user_id)
    session, payment = pay_checkout_on_sandbox(user_id, 4000)
    wait_for_all(
        receiver, [("checkout.session.completed", session), ("payment_intent.succeeded", payment)]
    )
    deliveries = [
        d
        for d in events_of(receiver, customer)
        if json.loads(d[1])["type"] in ("checkout.session.completed", "payment_intent.succeeded")
    ]
    assert len(deliveries) == 2
    sent = [d for d in deliveries for _ in range(4)]
    # Two connections a request: its own, and the job's (run synchronously after commit).
    wide = make_app(
        STRIPE_SECRET_KEY=SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=receiver.secret,
        STRIPE_API_BASE=standin.base_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 2 * len(sent) + 2, "max_overflow": 0},
    )
    barrier = threading.Barrier(len(sent))

    def post(delivery):
        client = wide.test_client()
        barrier.wait()
        return post_event(client, *delivery).status_code

    with ThreadPoolExecutor(len(sent)) as pool:
        answers = list(pool.map(post, sent))
    with wide.app_context():
        db.engine.dispose()
    assert answers == [200] * len(sent)
    process_unprocessed()
    state = state_of(user_id)
    assert state["balances"]["cash"] == 4000
    assert state["ledger"] == [("topup", (("cash", 4000), ("stripe_clearing", -4000)))]
    assert state["checkouts"] == [("topup", "complete")]
    assert inbox_of(deliveries) == Counter(
        {("checkout.session.completed", "handled"): 1, ("payment_intent.succeeded", "handled"): 1}
    )

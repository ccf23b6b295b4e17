"""Payments against the Stripe stand-in over HTTP: the test app talks to a real stand-in
process, cards are typed on its sandbox pages, and the webhooks it signs are delivered to the
portal's endpoint (``deliver_events``) as Stripe would deliver them."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import select

from portal.extensions import db
from portal.models import Invoice, User
from portal.money import Money
from portal.services.invoicing import run as invoice_run
from portal.services.metering import deployments
from portal.services.payments import card_charges, cards
from portal.services.wallet import settlement_requests
from tests.support.gateway import (
    SECRET_KEY,
    TEST_CARDS,
    gateway,  # noqa: F401
)

SEP = (datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC))
OCT = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))


@pytest.fixture
def pay_app(app, standin, receiver):
    """The shared test app with card payments on, talking to the stand-in; the stand-in's
    webhooks are signed with the receiver's secret, which the app verifies."""
    keys = (
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "STRIPE_API_BASE",
        "PAYMENT_ATTEMPT_STALE_SECONDS",
    )
    saved = {k: app.config[k] for k in keys if k in app.config}
    app.config.update(
        STRIPE_SECRET_KEY=SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=receiver.secret,
        STRIPE_API_BASE=standin.base_url,
    )
    app.extensions.pop("portal.gateway", None)
    yield app
    for key in keys:
        app.config.pop(key, None)
    app.config.update(saved)
    app.extensions.pop("portal.gateway", None)


@pytest.fixture
def pctx(pay_app):
    with pay_app.app_context():
        yield pay_app
        db.session.remove()


def type_card(url: str, number: str, *, authenticate: bool = True) -> requests.Response:
    """A person on the stand-in's page: types ``number``, completes 3-D Secure if asked.
    Returns the final redirect (303 to the success URL)."""
    answer = requests.post(
        url,
        data={"number": number, "exp": "12 / 34", "cvc": "123"},
        allow_redirects=False,
        timeout=10,
    )
    if answer.status_code == 303 and "/sandbox/authenticate/" in answer.headers["Location"]:
        answer = requests.post(
            answer.headers["Location"],
            data={"result": "complete" if authenticate else "fail"},
            allow_redirects=False,
            timeout=10,
        )
    return answer


def add_card(user: User, number: str = TEST_CARDS["ok"]) -> cards.Saved:
    """Add a card the way the Payment methods page does, back on the success page."""
    row = cards.start_adding(
        user,
        success_url="http://portal.test/payment-methods/added?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://portal.test/payment-methods/",
    )
    db.session.commit()
    answer = type_card(row.url, number)
    assert answer.status_code == 303, answer.text
    saved = cards.finish_setup_session(user, row.gateway_session_id)
    db.session.commit()
    return saved


@contextmanager
def settlement_held():
    """Set a scenario up without the settlement that new money, a new card or a new invoice
    starts after commit, so the test's own ``settle`` is the run under test."""
    original = settlement_requests.request_settlement
    settlement_requests.request_settlement = lambda user_id: None
    try:
        yield
    finally:
        settlement_requests.request_settlement = original


def invoice_of(
    user: User, cents_per_hour_hours: dict[str, int], period=OCT, *, settle: bool = False
) -> Invoice:
    """An issued invoice with one CPU line per deployment (1 core x hours x $0.05). Issuing
    settles at once for users who can pay; with ``settle=False`` (the default) that waits, as
    if the settlement job had not run yet."""
    if not settle:
        with settlement_held():
            return invoice_of(user, cents_per_hour_hours, period, settle=True)
    for name, hours in cents_per_hour_hours.items():
        dep, _ = deployments.create_deployment(
            external_id=f"{name}-{user.id}",
            user=user,
            kind="vm",
            cpu_cores=1,
            memory_gb=0,
            storage_gb=0,
            started_at=period[0],
        )
        deployments.delete_deployment(dep, ended_at=period[0] + timedelta(hours=hours))
    db.session.commit()
    invoice, _ = invoice_run.generate_for_user(user, *period)
    db.session.commit()
    return invoice


def charges(standin, user: User) -> list[dict]:
    """The payment intents the stand-in holds for the user's customer, oldest first."""
    customer = cards.customer_id(user)
    db.session.commit()
    answer = requests.get(
        f"{standin.base_url}/v1/payment_intents",
        params={"customer": customer, "limit": 100},
        auth=(SECRET_KEY, ""),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    # In the order they were made: our attempts' ids (in their metadata) grow.
    return sorted(answer.json()["data"], key=lambda i: int(i["metadata"]["attempt_id"]))


def deliver_events(client, receiver, *, since: int = 0, types=None) -> list[dict]:
    """POST every event the stand-in delivered (after index ``since``) to the portal's
    webhook endpoint, as received (signature included)."""
    sent = []
    for headers, body in list(receiver.deliveries)[since:]:
        event = json.loads(body)
        if types and event["type"] not in types:
            continue
        answer = client.post(
            "/api/plugins/billing/webhook",
            data=body,
            headers={"Stripe-Signature": headers["Stripe-Signature"]},
            content_type="application/json",
        )
        assert answer.status_code == 200, answer.get_data(as_text=True)
        sent.append(event)
    return sent


def wait_for_events(receiver, predicate, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in receiver.events() if predicate(e)]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(
        "no such event arrived; got "
        f"{[(e['type'], e['data']['object'].get('id')) for e in receiver.events()]}"
    )


def unpaid(user: User) -> list[Invoice]:
    return list(
        db.session.scalars(
            select(Invoice).where(
                Invoice.user_id == user.id, Invoice.status.in_(["open", "overdue"])
            )
        )
    )


# -- for tests that drive the portal through its client: each step in its own app context --
@pytest.fixture
def in_app(pay_app):
    """Run ``fn`` in its own app context and commit (nothing stays open while the client
    calls the portal)."""

    def run(fn, *args, **kwargs):
        with pay_app.app_context():
            try:
                result = fn(*args, **kwargs)
                db.session.commit()
                return result
            finally:
                db.session.remove()

    return run


def saved_card(user_id: int, number: str = TEST_CARDS["ok"]) -> int:
    saved = add_card(db.session.get(User, user_id), number)
    assert saved.created
    return saved.card.id


def running_deployment(user_id: int) -> None:
    deployments.create_deployment(
        external_id=f"vm-live-{user_id}",
        user=db.session.get(User, user_id),
        kind="vm",
        cpu_cores=1,
        memory_gb=0,
        storage_gb=0,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def issued_invoice(user_id: int, hours: int = 100) -> int:
    """Issued with settlement held (as if its job had not run yet), so the test's own Pay
    now is what pays."""
    return invoice_of(db.session.get(User, user_id), {f"web{user_id}": hours}).id


def topped_up(user_id: int, card_id: int, amount_minor: int) -> None:
    attempt, _ = card_charges.top_up_with_card(
        db.session.get(User, user_id),
        card_id,
        Money(amount_minor, "USD"),
        nonce="setup",
        return_url="http://portal.test/wallet/",
    )
    assert attempt.status == "succeeded"

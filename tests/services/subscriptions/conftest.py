"""Subscriptions under the seed's plans (free, pro, enterprise) plus two annual ones."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from portal.extensions import db
from portal.models import User
from portal.money import Money
from portal.services.metering import deployments
from portal.services.wallet import credits
from tests.support.plans import SEED_PLANS


@pytest.fixture
def billing(ctx):
    """Set billing settings for one test: ``billing(billing_mode="hybrid", invoice_day=15)``."""
    original = ctx.config["BILLING"]

    def configure(**changes):
        changes.setdefault("subscription_plans", SEED_PLANS)
        ctx.config["BILLING"] = dataclasses.replace(original, **changes)

    configure(billing_mode="hybrid")
    yield configure
    ctx.config["BILLING"] = original


@pytest.fixture
def user(ctx, make_user, billing):
    return db.session.get(User, make_user(name="Ada Customer").id)


def fund(user: User, amount: str, key: str = "fund") -> None:
    """An admin's credit that pays plan invoices as they are issued."""
    credits.grant_credit(
        user=user,
        amount=Money.from_decimal(amount, user.currency),
        reason="test funds",
        idempotency_key=f"{key}:{user.id}",
        now=datetime(2020, 1, 1, tzinfo=UTC),
    )
    db.session.commit()


def run_deployment(user, external_id, start, end=None, **spec):
    spec = spec or {"cpu_cores": 2, "memory_gb": 4, "storage_gb": 10}
    dep, _ = deployments.create_deployment(
        external_id=external_id, user=user, kind="vm", started_at=start, **spec
    )
    if end is not None:
        deployments.delete_deployment(dep, ended_at=end)
    db.session.commit()
    return dep

"""The seed's plans (free, pro, enterprise) plus two annual ones, and a fixture that puts
them in an app's billing settings for one test."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from portal.config import PlanSetting

D = Decimal
SEED_PLANS = (
    PlanSetting("free", "Free Tier", D("0"), "month", D(2), D(4), D(10)),
    PlanSetting("pro", "Professional", D("29.99"), "month", D(8), D(16), D(100)),
    PlanSetting("enterprise", "Enterprise", D("99.99"), "month", D(32), D(64), D(500)),
    PlanSetting("pro-annual", "Professional (annual)", D("299.99"), "year", D(8), D(16), D(100)),
    PlanSetting(
        "enterprise-annual", "Enterprise (annual)", D("999.99"), "year", D(32), D(64), D(500)
    ),
)


@pytest.fixture
def with_plans(app):
    """``with_plans(billing_mode="subscription", alert_threshold=50)``; hybrid by default."""
    original = app.config["BILLING"]

    def configure(**changes):
        changes.setdefault("subscription_plans", SEED_PLANS)
        changes.setdefault("billing_mode", "hybrid")
        app.config["BILLING"] = dataclasses.replace(original, **changes)

    configure()
    yield configure
    app.config["BILLING"] = original

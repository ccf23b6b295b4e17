"""Configuration: the seed plugin's JSON shape, environment overrides, validation."""

import json
import logging
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from portal import create_app
from portal.config import ConfigError, build_config, load_billing_settings, parse_billing_settings

# What the portal honours of the plugin's settings: usage billing.
SUPPORTED_EXAMPLE = {
    "enabled": True,
    "billingMode": "usage",
    "computeRates": {
        "cpu_per_core_hour": 0.05,
        "memory_per_gb_hour": 0.01,
        "storage_per_gb_month": 0.10,
    },
    "usageCalculationInterval": "0 * * * *",
    "invoiceDay": 1,
}
# The plugin's whole example: plans, alerts, overage and grace are honoured too.
SEED_EXAMPLE = {
    **SUPPORTED_EXAMPLE,
    "subscriptionPlans": [
        {
            "id": "free",
            "name": "Free Tier",
            "price": 0,
            "interval": "month",
            "cpu_limit": 2,
            "memory_limit": 4,
            "storage_limit": 10,
        },
        {
            "id": "pro",
            "name": "Professional",
            "price": 29.99,
            "interval": "month",
            "cpu_limit": 8,
            "memory_limit": 16,
            "storage_limit": 100,
        },
    ],
    "alertThreshold": 80,
    "autoSuspendOnOverage": False,
    "gracePeriodDays": 7,
    "stripeEnabled": False,
}


def test_supported_example_file_loads_exactly(tmp_path):
    path = tmp_path / "billing.json"
    path.write_text(json.dumps(SUPPORTED_EXAMPLE))
    settings = load_billing_settings({}, str(path))
    assert settings.compute_rates["cpu_per_core_hour"] == Decimal("0.05")
    assert settings.compute_rates["storage_per_gb_month"] == Decimal("0.1")
    assert settings.invoice_day == 1 and settings.enabled is True
    assert settings.usage_calculation_interval == "0 * * * *"


def test_environment_overrides_the_file(tmp_path):
    path = tmp_path / "billing.json"
    path.write_text(json.dumps(SUPPORTED_EXAMPLE))
    settings = load_billing_settings(
        {
            "INVOICE_DAY": "15",
            "USAGE_CALCULATION_INTERVAL": "*/30 * * * *",
            "BILLING_MODE": "usage",
        },
        str(path),
    )
    assert settings.invoice_day == 15
    assert settings.usage_calculation_interval == "*/30 * * * *"


def test_the_plugins_whole_example_loads_but_for_stripe_enabled(tmp_path):
    """Plans, alerts, overage and grace are honoured; stripeEnabled alone is refused (the
    key decides)."""
    path = tmp_path / "billing.json"
    path.write_text(json.dumps(SEED_EXAMPLE))
    with pytest.raises(ConfigError, match=r"^stripeEnabled: not supported"):
        load_billing_settings({}, str(path))
    path.write_text(json.dumps({k: v for k, v in SEED_EXAMPLE.items() if k != "stripeEnabled"}))
    settings = load_billing_settings({"BILLING_MODE": "hybrid"}, str(path))
    assert settings.billing_mode == "hybrid"
    assert [p.id for p in settings.subscription_plans] == ["free", "pro"]
    pro = settings.subscription_plans[1]
    assert (pro.name, pro.price, pro.interval) == ("Professional", Decimal("29.99"), "month")
    assert (pro.cpu_limit, pro.memory_limit, pro.storage_limit) == (8, 16, 100)
    assert settings.alert_threshold == 80 and settings.grace_period_days == 7
    assert settings.auto_suspend_on_overage is False


def test_plans_from_the_environment():
    plans = json.dumps(SEED_EXAMPLE["subscriptionPlans"])
    settings = load_billing_settings(
        {
            "SUBSCRIPTION_PLANS": plans,
            "BILLING_MODE": "subscription",
            "ALERT_THRESHOLD": "90",
            "AUTO_SUSPEND_ON_OVERAGE": "true",
            "GRACE_PERIOD_DAYS": "3",
        },
        None,
    )
    assert settings.billing_mode == "subscription" and len(settings.subscription_plans) == 2
    assert settings.alert_threshold == 90 and settings.auto_suspend_on_overage is True
    assert settings.grace_period_days == 3


PLAN = SEED_EXAMPLE["subscriptionPlans"][1]


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"subscriptionPlans": {}}, "subscriptionPlans"),
        ({"subscriptionPlans": [1]}, "subscriptionPlans[0]"),
        ({"subscriptionPlans": [{**PLAN, "id": "Pro!"}]}, "subscriptionPlans[0].id"),
        ({"subscriptionPlans": [PLAN, PLAN]}, "subscriptionPlans[1].id"),
        ({"subscriptionPlans": [{**PLAN, "interval": "week"}]}, "subscriptionPlans[0].interval"),
        ({"subscriptionPlans": [{**PLAN, "price": -1}]}, "subscriptionPlans[0].price"),
        (
            {"subscriptionPlans": [{**PLAN, "cpu_limit": "1.0005"}]},
            "subscriptionPlans[0].cpu_limit",
        ),
        ({"subscriptionPlans": [{**PLAN, "colour": "red"}]}, "subscriptionPlans[0].colour"),
        (
            {"subscriptionPlans": [{k: v for k, v in PLAN.items() if k != "name"}]},
            "subscriptionPlans[0].name",
        ),
        ({"alertThreshold": 0}, "alertThreshold"),
        ({"alertThreshold": 101}, "alertThreshold"),
        ({"gracePeriodDays": -1}, "gracePeriodDays"),
        ({"autoSuspendOnOverage": "maybe"}, "autoSuspendOnOverage"),
    ],
)
def test_bad_plan_and_quota_settings_name_the_key(raw, key):
    raw = json.loads(json.dumps(raw), parse_float=Decimal)
    with pytest.raises(ConfigError) as info:
        parse_billing_settings(raw)
    assert info.value.key == key


def test_a_plan_price_with_more_decimals_than_the_currency_is_refused(tmp_path):
    plans = json.dumps([{**PLAN, "price": "29.999"}])
    with pytest.raises(ConfigError, match=r"^subscriptionPlans\[0\].price: has more decimals"):
        build_config(str(tmp_path), environ={"TESTING": "1", "SUBSCRIPTION_PLANS": plans})


def test_prepaid_is_accepted():
    assert parse_billing_settings({"billingMode": "prepaid"}).billing_mode == "prepaid"
    assert load_billing_settings({"BILLING_MODE": "prepaid"}, None).billing_mode == "prepaid"


@pytest.mark.parametrize("value", [True, False])
def test_stripe_enabled_is_refused_because_the_key_decides(value):
    with pytest.raises(ConfigError) as info:
        parse_billing_settings({"stripeEnabled": value})
    assert str(info.value).startswith("stripeEnabled: not supported")
    assert "STRIPE_SECRET_KEY decides" in str(info.value)
    with pytest.raises(ConfigError, match="^STRIPE_ENABLED: not supported.*STRIPE_SECRET_KEY"):
        load_billing_settings({"STRIPE_ENABLED": str(value).lower()}, None)


def test_the_readmes_example_loads():
    """The configuration section's JSON example is one an operator can copy."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    example = re.search(r"```json\n(.*?)```", section, re.S).group(1)
    settings = parse_billing_settings(json.loads(example, parse_float=Decimal))
    assert settings.invoice_day == 1 and settings.compute_rates["cpu_per_core_hour"] == Decimal(
        "0.05"
    )


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"invoiceDay": 31}, "invoiceDay"),
        ({"invoiceDay": 0}, "invoiceDay"),
        ({"invoiceDay": "soon"}, "invoiceDay"),
        ({"computeRates": {"cpu_per_core_hour": -0.05}}, "computeRates.cpu_per_core_hour"),
        ({"computeRates": {"gpu_per_hour": 1}}, "computeRates.gpu_per_hour"),
        ({"billingMode": "freemium"}, "billingMode"),
        ({"usageCalculationInterval": "every hour"}, "usageCalculationInterval"),
        ({"usageCalculationInterval": "61 * * * *"}, "usageCalculationInterval"),
        ({"billingMode": ["usage"]}, "billingMode"),
        ({"enabled": "maybe"}, "enabled"),
        ({"stripeSecretKey": "sk_live_x"}, "stripeSecretKey"),
        ({"invoiceday": 3}, "invoiceday"),
    ],
)
def test_bad_values_name_their_key(raw, key):
    with pytest.raises(ConfigError) as info:
        parse_billing_settings(raw)
    assert str(info.value).startswith(f"{key}:")


def test_unreadable_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="^BILLING_CONFIG:"):
        load_billing_settings({}, str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="^BILLING_CONFIG:"):
        load_billing_settings({}, str(bad))


def test_secret_key_comes_from_the_environment(tmp_path):
    with pytest.raises(ConfigError, match="^SECRET_KEY:"):
        build_config(str(tmp_path), environ={})
    cfg = build_config(
        str(tmp_path), environ={"SECRET_KEY": "x" * 32, "DATABASE_URL": "postgres://u@h/db"}
    )
    assert cfg["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@h/db"


def test_payment_settings_come_from_the_environment(tmp_path):
    env = {"SECRET_KEY": "x" * 32}
    cfg = build_config(str(tmp_path), environ=env)
    assert (cfg["TOPUP_MIN"], cfg["TOPUP_MAX"], cfg["PAYMENT_ATTEMPT_STALE_SECONDS"]) == (
        Decimal("1"),
        Decimal("10000"),
        300,
    )
    cfg = build_config(
        str(tmp_path),
        environ={
            **env,
            "TOPUP_MIN": "2.50",
            "TOPUP_MAX": "500",
            "PAYMENT_ATTEMPT_STALE_SECONDS": "600",
        },
    )
    assert (cfg["TOPUP_MIN"], cfg["TOPUP_MAX"], cfg["PAYMENT_ATTEMPT_STALE_SECONDS"]) == (
        Decimal("2.50"),
        Decimal("500"),
        600,
    )
    for bad, key in (
        ({"TOPUP_MIN": "0"}, "TOPUP_MIN"),
        ({"TOPUP_MIN": "50", "TOPUP_MAX": "20"}, "TOPUP_MAX"),
        ({"PAYMENT_ATTEMPT_STALE_SECONDS": "10"}, "PAYMENT_ATTEMPT_STALE_SECONDS"),
    ):
        with pytest.raises(ConfigError, match=f"^{key}:"):
            build_config(str(tmp_path), environ={**env, **bad})


def test_request_body_limits_come_from_the_environment(tmp_path):
    env = {"SECRET_KEY": "x" * 32}
    cfg = build_config(str(tmp_path), environ=env)
    assert (cfg["MAX_CONTENT_LENGTH"], cfg["WEBHOOK_MAX_CONTENT_LENGTH"]) == (1048576, 262144)
    cfg = build_config(
        str(tmp_path),
        environ={**env, "MAX_CONTENT_LENGTH": "65536", "WEBHOOK_MAX_CONTENT_LENGTH": "16384"},
    )
    assert (cfg["MAX_CONTENT_LENGTH"], cfg["WEBHOOK_MAX_CONTENT_LENGTH"]) == (65536, 16384)
    for key, bad, problem in (
        ("MAX_CONTENT_LENGTH", "1MB", "must be a whole number"),
        ("MAX_CONTENT_LENGTH", "100", "must be between 1024 and"),
        ("WEBHOOK_MAX_CONTENT_LENGTH", "-1", "must be between 1024 and"),
        ("MAX_CONTENT_LENGTH", str(2 * 1024**3), "must be between"),
    ):
        with pytest.raises(ConfigError, match=f"^{key}: {problem}"):
            build_config(str(tmp_path), environ={**env, key: bad})


def test_start_up_stops_on_a_bad_value(tmp_path, monkeypatch):
    path = tmp_path / "billing.json"
    path.write_text(json.dumps({"invoiceDay": 31}))
    monkeypatch.setenv("BILLING_CONFIG", str(path))
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="invoiceDay: must be between 1 and 28"):
        create_app({"TESTING": True})


def test_start_up_takes_prepaid(tmp_path, monkeypatch):
    path = tmp_path / "billing.json"
    path.write_text(json.dumps(SUPPORTED_EXAMPLE))
    monkeypatch.setenv("BILLING_CONFIG", str(path))
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("BILLING_MODE", "prepaid")
    assert create_app({"TESTING": True}).config["BILLING"].billing_mode == "prepaid"


def test_cli_start_up_reports_the_key(tmp_path):
    path = tmp_path / "billing.json"
    path.write_text(json.dumps({"billingMode": "freemium"}))
    env = {
        **os.environ,
        "BILLING_CONFIG": str(path),
        "SECRET_KEY": "s" * 32,
        "INSTANCE_PATH": str(tmp_path),
        "FLASK_APP": "wsgi",
    }
    result = subprocess.run(
        [sys.executable, "-m", "flask", "billing", "reconcile"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "billingMode: must be one of" in result.stderr


def test_services_log_at_info_by_default(tmp_path, monkeypatch):
    """The worker, the daemon and `serve` build the app: with no LOG_LEVEL, what the
    services decide (portal.* at INFO) reaches stdout."""
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    monkeypatch.delenv("BILLING_CONFIG", raising=False)
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    root = logging.getLogger()
    level = root.level
    try:
        app = create_app({"TESTING": True})
        assert app.config["LOG_LEVEL"] == "info"
        for name in ("portal.services.invoicing.run", "portal.services.payments.settlement"):
            logger = logging.getLogger(name)
            assert logger.isEnabledFor(logging.INFO) and not logger.isEnabledFor(logging.DEBUG)
        assert any(
            isinstance(h, logging.StreamHandler) and h.level <= logging.INFO for h in root.handlers
        )
    finally:
        root.setLevel(level)


def test_generic_plans_for_the_web_server(tmp_path):
    pg = {"TESTING": "1", "DATABASE_URL": "postgresql://billing@db.internal/billing"}
    generic = {"options": "-c plan_cache_mode=force_generic_plan"}
    cfg = build_config(str(tmp_path), environ={**pg, "DATABASE_GENERIC_PLANS": "true"})
    assert cfg["DATABASE_GENERIC_PLANS"] is True
    assert cfg["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"] == generic
    # Off by default (workers, daemon, commands), and with nothing prepared (PgBouncer).
    assert (
        "connect_args" not in build_config(str(tmp_path), environ=pg)["SQLALCHEMY_ENGINE_OPTIONS"]
    )
    no_prepare = build_config(
        str(tmp_path),
        environ={**pg, "DATABASE_GENERIC_PLANS": "1", "DATABASE_PREPARED_STATEMENTS": "false"},
    )
    assert no_prepare["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"] == {"prepare_threshold": None}
    # SQLite has no plan cache to set; a database named by the app's config gets it too.
    sqlite = build_config(str(tmp_path), environ={"TESTING": "1", "DATABASE_GENERIC_PLANS": "1"})
    assert "connect_args" not in sqlite["SQLALCHEMY_ENGINE_OPTIONS"]
    named = build_config(
        str(tmp_path),
        environ={"TESTING": "1"},
        overrides={"DATABASE_URL": pg["DATABASE_URL"], "DATABASE_GENERIC_PLANS": True},
    )
    assert named["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"] == generic
    with pytest.raises(ConfigError, match="DATABASE_GENERIC_PLANS"):
        build_config(str(tmp_path), environ={**pg, "DATABASE_GENERIC_PLANS": "sometimes"})


def test_pool_sizes_and_prepared_statements_for_pgbouncer(tmp_path):
    pg = {"TESTING": "1", "DATABASE_URL": "postgresql://billing@db.internal/billing"}
    options = build_config(str(tmp_path), environ=pg)["SQLALCHEMY_ENGINE_OPTIONS"]
    assert options == {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
    options = build_config(
        str(tmp_path),
        environ={
            **pg,
            "DATABASE_POOL_SIZE": "2",
            "DATABASE_MAX_OVERFLOW": "0",
            "DATABASE_PREPARED_STATEMENTS": "false",
        },
    )["SQLALCHEMY_ENGINE_OPTIONS"]
    assert options["pool_size"] == 2 and options["max_overflow"] == 0
    assert options["connect_args"] == {"prepare_threshold": None}
    sqlite = build_config(str(tmp_path), environ={"TESTING": "1"})["SQLALCHEMY_ENGINE_OPTIONS"]
    assert sqlite == {"pool_pre_ping": True}  # SQLite's pools take no sizes
    with pytest.raises(ConfigError, match="DATABASE_POOL_SIZE"):
        build_config(str(tmp_path), environ={**pg, "DATABASE_POOL_SIZE": "0"})

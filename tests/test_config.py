"""Configuration: the seed plugin's JSON shape, environment overrides, validation."""

import json
import os
import subprocess
import sys
from decimal import Decimal

import pytest

from portal import create_app
from portal.config import ConfigError, build_config, load_billing_settings, parse_billing_settings

SEED_EXAMPLE = {
    "enabled": True,
    "billingMode": "usage",
    "computeRates": {
        "cpu_per_core_hour": 0.05,
        "memory_per_gb_hour": 0.01,
        "storage_per_gb_month": 0.10,
    },
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
    "usageCalculationInterval": "0 * * * *",
    "invoiceDay": 1,
    "alertThreshold": 80,
    "autoSuspendOnOverage": False,
    "gracePeriodDays": 7,
    "stripeEnabled": False,
}


def test_seed_example_file_loads_exactly(tmp_path):
    path = tmp_path / "billing.json"
    path.write_text(json.dumps(SEED_EXAMPLE))
    settings = load_billing_settings({}, str(path))
    assert settings.compute_rates["cpu_per_core_hour"] == Decimal("0.05")
    assert settings.compute_rates["storage_per_gb_month"] == Decimal("0.1")
    assert settings.subscription_plans[1].price == Decimal("29.99")
    assert settings.invoice_day == 1 and settings.billing_mode == "usage"


def test_environment_overrides_the_file(tmp_path):
    path = tmp_path / "billing.json"
    path.write_text(json.dumps(SEED_EXAMPLE))
    settings = load_billing_settings({"INVOICE_DAY": "15", "BILLING_MODE": "hybrid"}, str(path))
    assert settings.invoice_day == 15 and settings.billing_mode == "hybrid"


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
        ({"alertThreshold": 120}, "alertThreshold"),
        ({"gracePeriodDays": -1}, "gracePeriodDays"),
        ({"autoSuspendOnOverage": "maybe"}, "autoSuspendOnOverage"),
        ({"subscriptionPlans": [{"id": "x", "price": -1}]}, "subscriptionPlans[0].price"),
        ({"subscriptionPlans": [{"id": "x"}, {"id": "x"}]}, "subscriptionPlans[1].id"),
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

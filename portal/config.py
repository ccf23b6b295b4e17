"""Settings: environment variables, plus an optional JSON file in the seed plugin's shape.

The JSON file (``BILLING_CONFIG=/path/to/billing.json``) carries the billing settings the
StreamSpace plugin documents (``billingMode``, ``computeRates``, ``invoiceDay``...). Each of
them can also be set, and overridden, by an environment variable (``INVOICE_DAY=15``).
Secrets (``SECRET_KEY``, Stripe keys, SMTP password) are read from the environment only.
Everything is validated at start; a bad value stops start-up with a message naming the key.
The plugin's settings that nothing in the portal honours yet are refused the same way
("not supported yet"), so no one believes they apply.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from croniter import croniter
from limits import parse_many

from .money import AmountError, currency_digits, to_decimal

BILLING_MODES = ("usage", "subscription", "hybrid", "prepaid")
PLAN_INTERVALS = ("month", "year")
PLAN_KEYS = ("id", "name", "price", "interval", "cpu_limit", "memory_limit", "storage_limit")
PLAN_LIMIT_KEYS = ("cpu_limit", "memory_limit", "storage_limit")
PLAN_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
RATE_KEYS = ("cpu_per_core_hour", "memory_per_gb_hour", "storage_per_gb_month")
SECRET_JSON_KEYS = ("stripeSecretKey", "stripeWebhookSecret", "stripePublishableKey")

# seed key -> (environment variable, kind)
BILLING_KEYS: dict[str, tuple[str, str]] = {
    "enabled": ("BILLING_ENABLED", "bool"),
    "billingMode": ("BILLING_MODE", "str"),
    "computeRates": ("COMPUTE_RATES", "json"),
    "subscriptionPlans": ("SUBSCRIPTION_PLANS", "json"),
    "usageCalculationInterval": ("USAGE_CALCULATION_INTERVAL", "str"),
    "invoiceDay": ("INVOICE_DAY", "int"),
    "alertThreshold": ("ALERT_THRESHOLD", "int"),
    "autoSuspendOnOverage": ("AUTO_SUSPEND_ON_OVERAGE", "bool"),
    "gracePeriodDays": ("GRACE_PERIOD_DAYS", "int"),
    "deletionDelayDays": ("DELETION_DELAY_DAYS", "int"),
    "requireCardToDeploy": ("REQUIRE_CARD_TO_DEPLOY", "bool"),
    "stripeEnabled": ("STRIPE_ENABLED", "bool"),
}

# The plugin's settings that no code honours yet, and what will bring each.
NOT_SUPPORTED_YET: dict[str, str] = {}
# Not a switch the portal needs: the key decides.
STRIPE_ENABLED_PROBLEM = (
    "not supported, and not needed: STRIPE_SECRET_KEY decides (set: card payments go to "
    "Stripe; unset: they are off, and make run starts a local Stripe stand-in)"
)

DEFAULT_RATES = {
    "cpu_per_core_hour": Decimal("0.05"),
    "memory_per_gb_hour": Decimal("0.01"),
    "storage_per_gb_month": Decimal("0.10"),
}


class ConfigError(Exception):
    """A setting that cannot be used; the message starts with the key's name."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class PlanSetting:
    """A plan as ``subscriptionPlans`` gives it: price in major units, limits in whole units
    (cores, GB), all exact decimals."""

    id: str
    name: str
    price: Decimal
    interval: str
    cpu_limit: Decimal
    memory_limit: Decimal
    storage_limit: Decimal


@dataclass(frozen=True)
class BillingSettings:
    """The billing settings the portal honours."""

    enabled: bool = True
    billing_mode: str = "usage"
    compute_rates: dict[str, Decimal] = field(default_factory=lambda: dict(DEFAULT_RATES))
    subscription_plans: tuple[PlanSetting, ...] = ()
    usage_calculation_interval: str = "0 * * * *"
    invoice_day: int = 1
    alert_threshold: int = 80  # percent of a quota at which the user is warned
    auto_suspend_on_overage: bool = False
    grace_period_days: int = 7  # days over a quota (or past due) before suspension
    # Days past an unpaid invoice's due date after which its deployments are removed.
    deletion_delay_days: int = 90
    # Postpaid users need a valid card to deploy, unless their vouchers cover it.
    require_card_to_deploy: bool = True


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(key, f"must be true or false, not {value!r}")


def _parse_int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a whole number, not {value!r}")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    if not isinstance(value, int):
        raise ConfigError(key, f"must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(key, f"must be between {low} and {high}, not {value}")
    return value


def _parse_decimal(key: str, value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a number, not {value!r}")
    try:
        amount = to_decimal(value)
    except (TypeError, AmountError):
        raise ConfigError(key, f"must be a number, not {value!r}") from None
    if amount < 0:
        raise ConfigError(key, f"must not be negative, not {amount}")
    return amount


def _parse_cron(key: str, value: Any) -> str:
    if not isinstance(value, str) or not croniter.is_valid(value) or len(value.split()) != 5:
        raise ConfigError(key, f"must be a five-field cron expression, not {value!r}")
    return value


def _parse_rates(key: str, value: Any) -> dict[str, Decimal]:
    if not isinstance(value, dict):
        raise ConfigError(key, "must be an object of rates")
    unknown = sorted(set(value) - set(RATE_KEYS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown rate (known: {', '.join(RATE_KEYS)})")
    rates = dict(DEFAULT_RATES)
    for name, raw in value.items():
        rates[name] = _parse_decimal(f"{key}.{name}", raw)
    return rates


def _parse_limit(key: str, value: Any) -> Decimal:
    amount = _parse_decimal(key, value)
    if amount.as_tuple().exponent < -3:  # type: ignore[operator]
        raise ConfigError(key, f"must have at most 3 decimals, not {amount}")
    if amount > 1_000_000:
        raise ConfigError(key, f"must be at most 1000000, not {amount}")
    return amount


def _parse_plans(key: str, value: Any) -> tuple[PlanSetting, ...]:
    """The seed's plan list: ``[{id, name, price, interval, cpu_limit, memory_limit,
    storage_limit}]``; ids unique."""
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of plans")
    plans: list[PlanSetting] = []
    for n, raw in enumerate(value):
        where = f"{key}[{n}]"
        if not isinstance(raw, dict):
            raise ConfigError(where, "must be an object")
        unknown = sorted(set(raw) - set(PLAN_KEYS))
        if unknown:
            raise ConfigError(
                f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(PLAN_KEYS)})"
            )
        missing = [k for k in PLAN_KEYS if k not in raw and k != "interval"]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}", "is required")
        plan_id = raw["id"]
        if (
            not isinstance(plan_id, str)
            or not 1 <= len(plan_id) <= 40
            or not set(plan_id) <= PLAN_ID_CHARS
        ):
            raise ConfigError(
                f"{where}.id", f"must be 1 to 40 of a-z, 0-9, - and _, not {plan_id!r}"
            )
        if any(p.id == plan_id for p in plans):
            raise ConfigError(f"{where}.id", f"{plan_id!r} is given twice")
        name = raw["name"]
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
            raise ConfigError(f"{where}.name", "must be text of 1 to 100 characters")
        interval = raw.get("interval", "month")
        if interval not in PLAN_INTERVALS:
            raise ConfigError(f"{where}.interval", f"must be month or year, not {interval!r}")
        plans.append(
            PlanSetting(
                plan_id,
                name.strip(),
                _parse_decimal(f"{where}.price", raw["price"]),
                interval,
                *(_parse_limit(f"{where}.{k}", raw[k]) for k in PLAN_LIMIT_KEYS),
            )
        )
    return tuple(plans)


def _refuse_unsupported(raw: dict[str, Any], names: dict[str, str]) -> None:
    """Stop on the first setting nothing honours yet, named as it was set (the seed key, or
    the environment variable that set it)."""
    for key in BILLING_KEYS:
        if key not in raw:
            continue
        name = names.get(key, key)
        if key == "billingMode":
            mode = raw[key]
            if mode not in BILLING_MODES:
                raise ConfigError(name, f"must be one of {', '.join(BILLING_MODES)}, not {mode!r}")
        elif key == "stripeEnabled":
            raise ConfigError(name, f"{STRIPE_ENABLED_PROBLEM}; remove the setting")
        elif key in NOT_SUPPORTED_YET:
            raise ConfigError(
                name, f"not supported yet ({NOT_SUPPORTED_YET[key]}); remove the setting"
            )


def parse_billing_settings(
    raw: dict[str, Any], names: dict[str, str] | None = None
) -> BillingSettings:
    """Validate the seed-shaped mapping; raise ConfigError naming the first bad key (or, in
    ``names``, the environment variable a key came from)."""
    for secret in SECRET_JSON_KEYS:
        if secret in raw:
            raise ConfigError(
                secret,
                "secrets are read from the environment only "
                "(STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET), never from the file",
            )
    unknown = sorted(set(raw) - set(BILLING_KEYS))
    if unknown:
        raise ConfigError(unknown[0], "unknown setting")
    _refuse_unsupported(raw, names or {})
    s = BillingSettings()
    values: dict[str, Any] = {}
    if "enabled" in raw:
        values["enabled"] = _parse_bool("enabled", raw["enabled"])
    if "computeRates" in raw:
        values["compute_rates"] = _parse_rates("computeRates", raw["computeRates"])
    if "usageCalculationInterval" in raw:
        values["usage_calculation_interval"] = _parse_cron(
            "usageCalculationInterval", raw["usageCalculationInterval"]
        )
    if "invoiceDay" in raw:
        values["invoice_day"] = _parse_int("invoiceDay", raw["invoiceDay"], 1, 28)
    if "billingMode" in raw:
        values["billing_mode"] = raw["billingMode"]
    if "subscriptionPlans" in raw:
        values["subscription_plans"] = _parse_plans("subscriptionPlans", raw["subscriptionPlans"])
    if "alertThreshold" in raw:
        values["alert_threshold"] = _parse_int("alertThreshold", raw["alertThreshold"], 1, 100)
    if "autoSuspendOnOverage" in raw:
        values["auto_suspend_on_overage"] = _parse_bool(
            "autoSuspendOnOverage", raw["autoSuspendOnOverage"]
        )
    if "gracePeriodDays" in raw:
        values["grace_period_days"] = _parse_int("gracePeriodDays", raw["gracePeriodDays"], 0, 365)
    if "deletionDelayDays" in raw:
        values["deletion_delay_days"] = _parse_int(
            "deletionDelayDays", raw["deletionDelayDays"], 1, 3650
        )
    if "requireCardToDeploy" in raw:
        values["require_card_to_deploy"] = _parse_bool(
            "requireCardToDeploy", raw["requireCardToDeploy"]
        )
    return BillingSettings(**{**s.__dict__, **values})


def load_billing_settings(environ: dict[str, str], json_path: str | None) -> BillingSettings:
    raw: dict[str, Any] = {}
    names: dict[str, str] = {}  # key -> the environment variable that set it
    if json_path:
        path = Path(json_path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError("BILLING_CONFIG", f"cannot read {path}: {exc.strerror}") from None
        try:
            raw = json.loads(text, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise ConfigError("BILLING_CONFIG", f"{path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError("BILLING_CONFIG", f"{path} must hold a JSON object")
    for key, (env, kind) in BILLING_KEYS.items():
        if env in environ:
            value: Any = environ[env]
            if kind == "json" and key not in NOT_SUPPORTED_YET:
                try:
                    value = json.loads(value, parse_float=Decimal)
                except json.JSONDecodeError:
                    raise ConfigError(key, f"{env} must hold JSON") from None
            raw[key] = value
            names[key] = env
    return parse_billing_settings(raw, names)


def _env_bool(environ: dict[str, str], name: str, default: bool) -> bool:
    if name not in environ:
        return default
    return _parse_bool(name, environ[name])


def _env_positive(environ: dict[str, str], name: str, default: str) -> Decimal:
    value = _parse_decimal(name, environ.get(name, default))
    if value <= 0:
        raise ConfigError(name, f"must be greater than 0, not {value}")
    return value


SECRET_KEY_FILE = "secret_key"


def _instance_secret(instance_path: str) -> str:
    try:
        with open(os.path.join(instance_path, SECRET_KEY_FILE), encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _parse_rate_limit(key: str, value: str) -> str:
    """A Flask-Limiter limit such as "5 per hour;20 per day"."""
    try:
        if not parse_many(value):
            raise ValueError
    except ValueError:
        raise ConfigError(
            key, f"must be limits such as '5 per hour;20 per day', not {value!r}"
        ) from None
    return value


# Request body limits, in bytes: at least 1 KiB (a login form must fit), at most 1 GiB.
MIN_BODY_LIMIT, MAX_BODY_LIMIT = 1024, 1024**3


def _parse_size(environ: dict[str, str], name: str, default: str) -> int:
    return _parse_int(name, environ.get(name, default), MIN_BODY_LIMIT, MAX_BODY_LIMIT)


def _default_database_url(instance_path: str) -> str:
    return "sqlite:///" + os.path.join(instance_path, "portal.sqlite3")


def build_config(
    instance_path: str,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Flask config mapping for this environment, with ``overrides`` (tests) applied
    last. Raises ConfigError on a bad value."""
    env = dict(os.environ if environ is None else environ)
    overrides = overrides or {}
    cfg: dict[str, Any] = {}
    testing = bool(overrides.get("TESTING")) or _env_bool(env, "TESTING", False)
    debug = _env_bool(env, "FLASK_DEBUG", False)

    # The environment wins; else the key `make run` keeps in the instance folder, so the CLI
    # in a new shell signs and reads what the running portal does.
    secret = (
        overrides.get("SECRET_KEY") or env.get("SECRET_KEY", "") or _instance_secret(instance_path)
    )
    if not secret and not (testing or debug):
        raise ConfigError(
            "SECRET_KEY",
            "must be set in the environment or in "
            f"{os.path.join(instance_path, SECRET_KEY_FILE)} "
            "(python -c 'import secrets; print(secrets.token_hex(32))')",
        )
    if secret and len(secret) < 16:
        raise ConfigError("SECRET_KEY", "must be at least 16 characters")
    cfg["SECRET_KEY"] = secret or "development-only-not-secret"

    cfg["SQLALCHEMY_DATABASE_URI"] = normalize_database_url(
        env.get("DATABASE_URL") or _default_database_url(instance_path)
    )
    # A pooled connection the server dropped (a database restart) is replaced before use,
    # not handed to a request that would fail on it.
    cfg["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
    if cfg["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        # Connections kept per process (web worker, RQ worker, daemon), and how many more
        # it may open at a peak: what PostgreSQL's max_connections must allow for.
        cfg["SQLALCHEMY_ENGINE_OPTIONS"].update(
            pool_size=_parse_int("DATABASE_POOL_SIZE", env.get("DATABASE_POOL_SIZE", "5"), 1, 100),
            max_overflow=_parse_int(
                "DATABASE_MAX_OVERFLOW", env.get("DATABASE_MAX_OVERFLOW", "10"), 0, 100
            ),
        )
    if cfg["SQLALCHEMY_DATABASE_URI"].startswith("postgresql") and not _env_bool(
        env, "DATABASE_PREPARED_STATEMENTS", True
    ):
        # Behind PgBouncer in transaction mode (before 1.21, or without
        # max_prepared_statements) a statement prepared on one server connection is unknown
        # to the next: psycopg must not prepare any.
        cfg["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"] = {"prepare_threshold": None}
    cfg["REDIS_URL"] = env.get("REDIS_URL", "")
    cfg["CURRENCY"] = env.get("CURRENCY", "USD").upper()
    try:
        currency_digits(cfg["CURRENCY"])
    except ValueError:
        raise ConfigError("CURRENCY", f"not an ISO 4217 code: {cfg['CURRENCY']!r}") from None
    cfg["BABEL_DEFAULT_LOCALE"] = env.get("LOCALE", "en_US")
    cfg["PUBLIC_URL"] = env.get("PUBLIC_URL", "http://127.0.0.1:5000").rstrip("/")
    cfg["SELLER_NAME"] = env.get("SELLER_NAME", "Example Cloud Ltd.")
    # The seller as printed on invoices; the address's lines are separated by "|" or newlines.
    cfg["SELLER_ADDRESS"] = env.get("SELLER_ADDRESS", "")
    cfg["SELLER_EMAIL"] = env.get("SELLER_EMAIL", "")
    cfg["SELLER_TAX_ID"] = env.get("SELLER_TAX_ID", "")

    # Mail: with no MAIL_SERVER, messages stay in the outbox table (admin area).
    cfg["MAIL_SERVER"] = env.get("MAIL_SERVER", "")
    cfg["MAIL_PORT"] = int(env.get("MAIL_PORT", "25"))
    cfg["MAIL_USE_TLS"] = _env_bool(env, "MAIL_USE_TLS", False)
    cfg["MAIL_USE_SSL"] = _env_bool(env, "MAIL_USE_SSL", False)
    cfg["MAIL_USERNAME"] = env.get("MAIL_USERNAME") or None
    cfg["MAIL_PASSWORD"] = env.get("MAIL_PASSWORD") or None
    cfg["MAIL_DEFAULT_SENDER"] = env.get("MAIL_DEFAULT_SENDER", "billing@localhost")
    # Seconds each SMTP step may take; a message "sending" this long (its worker died) is
    # taken again.
    cfg["MAIL_TIMEOUT"] = _env_positive(env, "MAIL_TIMEOUT", "30")
    cfg["MAIL_SENDING_STALE_SECONDS"] = _env_positive(env, "MAIL_SENDING_STALE_SECONDS", "600")

    # Stripe (portal/gateways): secrets from the environment only. With no key set,
    # `flask billing serve` starts the local stand-in and passes all four to its children.
    cfg["STRIPE_SECRET_KEY"] = env.get("STRIPE_SECRET_KEY", "")
    if cfg["STRIPE_SECRET_KEY"] and not cfg["STRIPE_SECRET_KEY"].startswith(("sk_", "rk_")):
        raise ConfigError(
            "STRIPE_SECRET_KEY", "must be a secret key (sk_...) or a restricted key (rk_...)"
        )
    cfg["STRIPE_WEBHOOK_SECRET"] = env.get("STRIPE_WEBHOOK_SECRET", "")
    cfg["STRIPE_PUBLISHABLE_KEY"] = env.get("STRIPE_PUBLISHABLE_KEY", "")
    cfg["STRIPE_API_BASE"] = env.get("STRIPE_API_BASE", "https://api.stripe.com").rstrip("/")
    if not cfg["STRIPE_API_BASE"].startswith(
        ("https://", "http://127.0.0.1:", "http://localhost:")
    ):
        raise ConfigError(
            "STRIPE_API_BASE",
            "must be an https:// URL (or http:// on loopback "
            f"for the local stand-in), not {cfg['STRIPE_API_BASE']!r}",
        )
    cfg["STRIPE_TIMEOUT_SECONDS"] = _env_positive(env, "STRIPE_TIMEOUT_SECONDS", "10")
    # A card charge still unanswered after this long is looked up at the gateway by its
    # idempotency key (recovery); well over the timeout, so recovery never races a request.
    cfg["PAYMENT_ATTEMPT_STALE_SECONDS"] = _parse_int(
        "PAYMENT_ATTEMPT_STALE_SECONDS",
        env.get("PAYMENT_ATTEMPT_STALE_SECONDS", "300"),
        1,
        7 * 86400,
    )
    if cfg["PAYMENT_ATTEMPT_STALE_SECONDS"] <= cfg["STRIPE_TIMEOUT_SECONDS"]:
        raise ConfigError(
            "PAYMENT_ATTEMPT_STALE_SECONDS",
            "must be longer than "
            "STRIPE_TIMEOUT_SECONDS (a charge may still be in flight until then)",
        )
    # Top-ups, in the user's currency (exact decimals).
    cfg["TOPUP_MIN"] = _env_positive(env, "TOPUP_MIN", "1")
    cfg["TOPUP_MAX"] = _env_positive(env, "TOPUP_MAX", "10000")
    if cfg["TOPUP_MAX"] < cfg["TOPUP_MIN"]:
        raise ConfigError("TOPUP_MAX", f"must be at least TOPUP_MIN ({cfg['TOPUP_MIN']})")

    # Every request body, chunked ones included, is refused with 413 beyond this many bytes
    # (portal/request_guard.py); the gateway's webhook endpoint has its own, smaller limit.
    cfg["MAX_CONTENT_LENGTH"] = _parse_size(env, "MAX_CONTENT_LENGTH", "1048576")
    cfg["WEBHOOK_MAX_CONTENT_LENGTH"] = _parse_size(env, "WEBHOOK_MAX_CONTENT_LENGTH", "262144")

    cfg["LOGIN_RATE_LIMIT"] = env.get("LOGIN_RATE_LIMIT", "10 per minute;100 per hour")
    # Sign-ups per client address (each one mails the address typed in).
    cfg["REGISTRATION_RATE_LIMIT"] = _parse_rate_limit(
        "REGISTRATION_RATE_LIMIT", env.get("REGISTRATION_RATE_LIMIT", "5 per hour;20 per day")
    )
    cfg["INVOICE_NET_DAYS"] = _parse_int(
        "INVOICE_NET_DAYS", env.get("INVOICE_NET_DAYS", "14"), 0, 365
    )
    cfg["VOUCHER_RATE_LIMIT"] = env.get("VOUCHER_RATE_LIMIT", "5 per minute;30 per day")
    cfg["SESSION_COOKIE_SECURE"] = _env_bool(env, "SESSION_COOKIE_SECURE", False)
    cfg["SESSION_COOKIE_HTTPONLY"] = True
    cfg["SESSION_COOKIE_SAMESITE"] = "Lax"
    cfg["REMEMBER_COOKIE_HTTPONLY"] = True
    cfg["REMEMBER_COOKIE_SAMESITE"] = "Lax"
    cfg["WTF_CSRF_TIME_LIMIT"] = None  # tied to the session instead of a clock
    cfg["RQ_ASYNC"] = _env_bool(env, "RQ_ASYNC", True)
    # Metering splits users into chunks of this many ids (fixed for an installation's life).
    cfg["METER_CHUNK_USERS"] = _parse_int(
        "METER_CHUNK_USERS", env.get("METER_CHUNK_USERS", "1000"), 1, 10_000_000
    )
    # `flask billing meter-usage` on PostgreSQL: the chunks metered on this many connections.
    cfg["METER_RUN_CONNECTIONS"] = _parse_int(
        "METER_RUN_CONNECTIONS", env.get("METER_RUN_CONNECTIONS", "2"), 1, 64
    )
    cfg["SESSION_HEARTBEAT_TIMEOUT_MINUTES"] = _parse_int(
        "SESSION_HEARTBEAT_TIMEOUT_MINUTES",
        env.get("SESSION_HEARTBEAT_TIMEOUT_MINUTES", "15"),
        1,
        100_000,
    )
    # How far back the platform may date a deployment's start, change or end through the
    # API (started_at, effective_at, ended_at); the past part is metered by a job.
    cfg["DEPLOYMENT_BACKDATE_MAX_DAYS"] = _parse_int(
        "DEPLOYMENT_BACKDATE_MAX_DAYS", env.get("DEPLOYMENT_BACKDATE_MAX_DAYS", "31"), 1, 366
    )
    # The billing daemon (jobs/daemon.py); seconds and minutes may be decimals (tests).
    cfg["DAEMON_HEARTBEAT_SECONDS"] = _env_positive(env, "DAEMON_HEARTBEAT_SECONDS", "60")
    cfg["DAEMON_LEASE_SECONDS"] = _env_positive(env, "DAEMON_LEASE_SECONDS", "180")
    if cfg["DAEMON_LEASE_SECONDS"] <= cfg["DAEMON_HEARTBEAT_SECONDS"]:
        raise ConfigError(
            "DAEMON_LEASE_SECONDS",
            "must be longer than DAEMON_HEARTBEAT_SECONDS "
            "(the leader renews the lease on every heartbeat)",
        )
    cfg["BUILTIN_BILLING"] = _env_bool(env, "BUILTIN_BILLING", True)
    cfg["BUILTIN_BILLING_AFTER_MINUTES"] = _env_positive(env, "BUILTIN_BILLING_AFTER_MINUTES", "90")
    # Job requests (portal.tasks.requests): how often the relay moves them to Redis, how
    # often a failed job is tried in all, and the first wait before a retry (it doubles).
    cfg["JOB_RELAY_SECONDS"] = _env_positive(env, "JOB_RELAY_SECONDS", "5")
    cfg["JOB_MAX_ATTEMPTS"] = _parse_int(
        "JOB_MAX_ATTEMPTS", env.get("JOB_MAX_ATTEMPTS", "5"), 1, 100
    )
    cfg["JOB_RETRY_SECONDS"] = _env_positive(env, "JOB_RETRY_SECONDS", "30")
    # Outgoing webhooks (portal.services.webhooks): the HTTP timeout, the first wait before a
    # retry (it doubles, with jitter, up to the longest wait), how long a delivery is retried
    # (and an endpoint may fail before it is disabled), and each sender's batch and connections.
    cfg["WEBHOOK_TIMEOUT_SECONDS"] = _env_positive(env, "WEBHOOK_TIMEOUT_SECONDS", "10")
    cfg["WEBHOOK_FIRST_RETRY_SECONDS"] = _env_positive(env, "WEBHOOK_FIRST_RETRY_SECONDS", "30")
    cfg["WEBHOOK_MAX_RETRY_SECONDS"] = _env_positive(env, "WEBHOOK_MAX_RETRY_SECONDS", "21600")
    cfg["WEBHOOK_RETRY_HOURS"] = _env_positive(env, "WEBHOOK_RETRY_HOURS", "72")
    cfg["WEBHOOK_BATCH"] = _parse_int("WEBHOOK_BATCH", env.get("WEBHOOK_BATCH", "500"), 1, 10_000)
    cfg["WEBHOOK_CONCURRENCY"] = _parse_int(
        "WEBHOOK_CONCURRENCY", env.get("WEBHOOK_CONCURRENCY", "8"), 1, 64
    )
    # How often a worker running a job says it is alive; a job whose worker missed three of
    # these is retried (the worker was killed).
    cfg["JOB_MONITORING_SECONDS"] = _parse_int(
        "JOB_MONITORING_SECONDS", env.get("JOB_MONITORING_SECONDS", "10"), 1, 3600
    )
    cfg["LOG_LEVEL"] = env.get("LOG_LEVEL", "info").lower()
    if cfg["LOG_LEVEL"] not in ("error", "warn", "warning", "info", "debug"):
        raise ConfigError(
            "LOG_LEVEL", f"must be error, warn, info or debug, not {cfg['LOG_LEVEL']!r}"
        )
    cfg["LOG_FORMAT"] = env.get("LOG_FORMAT", "text").lower()
    if cfg["LOG_FORMAT"] not in ("text", "json"):
        raise ConfigError("LOG_FORMAT", f"must be text or json, not {cfg['LOG_FORMAT']!r}")
    # /metrics: a bearer token of its own (for the scraper), besides admin API tokens; and
    # with METRICS_LOCAL, requests from this host's loopback address need none.
    cfg["METRICS_TOKEN"] = env.get("METRICS_TOKEN", "")
    cfg["METRICS_LOCAL"] = _env_bool(env, "METRICS_LOCAL", False)
    cfg["TESTING"] = testing
    cfg["BILLING"] = load_billing_settings(env, env.get("BILLING_CONFIG"))
    for n, plan in enumerate(cfg["BILLING"].subscription_plans):
        if plan.price.as_tuple().exponent < -currency_digits(cfg["CURRENCY"]):
            raise ConfigError(
                f"subscriptionPlans[{n}].price",
                f"has more decimals than {cfg['CURRENCY']} has, not {plan.price}",
            )
    cfg.update(overrides)
    cfg["SELLER_ADDRESS_LINES"] = address_lines(cfg["SELLER_ADDRESS"])
    if "DATABASE_URL" in overrides:
        cfg["SQLALCHEMY_DATABASE_URI"] = normalize_database_url(overrides["DATABASE_URL"])
    cfg["DATABASE_GENERIC_PLANS"] = bool(
        overrides.get("DATABASE_GENERIC_PLANS", _env_bool(env, "DATABASE_GENERIC_PLANS", False))
    )
    if "SQLALCHEMY_ENGINE_OPTIONS" in overrides:
        cfg["DATABASE_GENERIC_PLANS"] = False  # the engine's options are the caller's
    else:
        _plan_generically(cfg)
    return cfg


def _plan_generically(cfg: dict[str, Any]) -> None:
    """DATABASE_GENERIC_PLANS (set for the web server): a statement psycopg has prepared
    (after five runs on a connection) keeps one generic plan instead of being planned
    again on every run. PostgreSQL's default re-plans a statement on a partitioned table
    (the ledger entries, the daily usage) each time, because a plan for its bound values
    looks cheaper than one for any value; planning one of the pages' statements took longer
    than running it. A page's statements pick rows by the user's indexed keys, where
    one plan fits every user. Batch work (metering, invoicing) and the admin's lists and
    reports (``db.plan_per_value``) keep PostgreSQL's choice: their statements take arrays,
    ranges and filters whose share of the rows the plan should know. Left True only where it
    applies."""
    options = cfg["SQLALCHEMY_ENGINE_OPTIONS"]
    cfg["DATABASE_GENERIC_PLANS"] = (
        cfg["DATABASE_GENERIC_PLANS"]
        and cfg["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
        # nothing is prepared (PgBouncer): nothing to keep
        and "prepare_threshold" not in options.get("connect_args", {})
    )
    if cfg["DATABASE_GENERIC_PLANS"]:
        options.setdefault("connect_args", {})["options"] = "-c plan_cache_mode=force_generic_plan"


def address_lines(value: str | list | tuple) -> list[str]:
    """An address as its non-empty lines: "1 Main St|Springfield" or one line per row."""
    lines = (
        value if isinstance(value, (list, tuple)) else str(value).replace("|", "\n").splitlines()
    )
    return [line.strip() for line in lines if line.strip()]


def normalize_database_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever scheme the operator wrote."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url

"""The billing portal: create_app() builds the Flask application."""

from __future__ import annotations

import json as std_json
import logging
import os
import sys
import time
from decimal import Decimal
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from sqlalchemy import event

from . import (
    models,  # noqa: F401  (registers the tables)
    request_guard,
)
from .blueprints import register_blueprints
from .cli import register_cli
from .config import ConfigError, build_config
from .extensions import csrf, db, limiter, login_manager, mail, migrate
from .tasks import relay
from .web import init_web

# The tasks and periodic jobs each package registers; the schedule lists them in this order.
# isort: off
from .tasks import runs as _runs  # noqa: F401
from .services import jobs as _service_jobs  # noqa: F401
from .services.metering import jobs as _metering_jobs  # noqa: F401
from .services.invoicing import jobs as _invoicing_jobs  # noqa: F401
from .services.payments import jobs as _payments_jobs  # noqa: F401
from .services.webhooks import jobs as _webhooks_jobs  # noqa: F401
from .services.wallet import jobs as _wallet_jobs  # noqa: F401
from .services.subscriptions import jobs as _subscriptions_jobs  # noqa: F401
from .services.standing import jobs as _standing_jobs  # noqa: F401
from .services.budgets import jobs as _budgets_jobs  # noqa: F401
from .services.retention import jobs as _retention_jobs  # noqa: F401
# isort: on


class DecimalJSONProvider(DefaultJSONProvider):
    """JSON numbers in requests become exact Decimals (``50.00`` is Decimal('50.00'))."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("parse_float", Decimal)
        return std_json.loads(s, **kwargs)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(
        __name__,
        instance_path=os.environ.get(
            "INSTANCE_PATH", os.path.join(os.path.dirname(os.path.dirname(__file__)), "instance")
        ),
    )
    app.json_provider_class = DecimalJSONProvider
    app.json = DecimalJSONProvider(app)
    try:
        app.config.update(build_config(app.instance_path, overrides=config or {}))
    except ConfigError as exc:
        # Start-up stops here, naming the key; the CLI and gunicorn print it.
        raise SystemExit(f"configuration error: {exc}") from None
    os.makedirs(app.instance_path, exist_ok=True)
    _configure_logging(app)

    app.config.setdefault("RATELIMIT_STORAGE_URI", _limiter_storage(app.config["REDIS_URL"]))
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    # Redis down: limits are counted in memory meanwhile, not a 500 for every request.
    app.config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    app.config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    # First of the request hooks: the body's size and the forms' text are checked before
    # CSRF, the rate limiter or a view reads anything.
    request_guard.init_app(app)
    db.init_app(app)
    migrate.init_app(
        app,
        db,
        directory=os.path.join(os.path.dirname(os.path.dirname(__file__)), "migrations"),
        render_as_batch=True,
        compare_type=True,
    )
    login_manager.init_app(app)
    csrf.init_app(app)
    limiter.init_app(app)
    mail.init_app(app)
    with app.app_context():
        _configure_engine(db.engine)

    relay.init_app(app)

    init_web(app)
    register_blueprints(app)
    register_cli(app)
    return app


def _limiter_storage(redis_url: str) -> str:
    if not redis_url:
        return "memory://"
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://") :]
    return redis_url


def _configure_engine(engine) -> None:
    if engine.dialect.name != "sqlite":
        return

    # SQLite: foreign keys on, WAL so readers do not block the writer, and every
    # transaction begins IMMEDIATE: a writer takes the write lock before it reads, so a
    # balance read and the write that depends on it cannot interleave with another writer
    # (SQLAlchemy drops FOR UPDATE on SQLite). busy_timeout makes the others wait.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class _PortalHandler(logging.StreamHandler):
    """The one stdout handler, however many apps a process creates (the tests make many)."""


class JsonLogFormatter(logging.Formatter):
    """LOG_FORMAT=json: one JSON object a line (time, level, logger, message, exception)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return std_json.dumps(line, ensure_ascii=False, default=str)

    converter = time.gmtime  # type: ignore[assignment]  # UTC timestamps


def _configure_logging(app: Flask) -> None:
    level = {
        "error": logging.ERROR,
        "warn": logging.WARNING,
        "warning": logging.WARNING,
        "info": logging.INFO,
        "debug": logging.DEBUG,
    }[app.config["LOG_LEVEL"]]
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _PortalHandler)), None)
    if handler is None:
        handler = _PortalHandler(sys.stdout)
        root.addHandler(handler)
    if app.config.get("LOG_FORMAT") == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] [%(levelname)s] %(name)s: %(message)s")
        )
    root.setLevel(level)
    app.logger.setLevel(level)
    # WeasyPrint narrates every render at INFO; its warnings still show.
    logging.getLogger("weasyprint").setLevel(max(level, logging.WARNING))
    logging.getLogger("fontTools").setLevel(max(level, logging.WARNING))

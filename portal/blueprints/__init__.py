"""Blueprints: thin views (parse, authorize, call one service, render or redirect)."""

from flask import Flask, redirect, url_for
from flask_login import current_user

from . import (
    account,
    auth,
    invoices,
    ops,
    overview,
    payment_methods,
    standing,
    subscription,
    usage,
    wallet,
    webhooks,
)
from .admin import bp as admin_bp
from .api import bp as api_bp


def register_blueprints(app: Flask) -> None:
    for module in (
        auth,
        account,
        overview,
        standing,
        wallet,
        usage,
        invoices,
        payment_methods,
        subscription,
    ):
        app.register_blueprint(module.bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(ops.bp)
    app.add_url_rule("/", endpoint="index", view_func=_index)


def _index():
    if current_user.is_authenticated:
        return redirect(url_for("overview.index"))
    return redirect(url_for("auth.login"))

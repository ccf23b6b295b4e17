"""`flask --app wsgi billing ...` commands. Each exits non-zero with a one-line reason."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError

from .errors import ServiceError
from .extensions import db
from .models import User
from .services import accounts, calendar, demo
from .services.invoicing import invoices, run
from .services.metering import rollups, runs
from .services.retention import archive as retention_archive
from .services.retention import partitions
from .services.wallet import credits
from .services.wallet.reconcile import CHECKS, find_discrepancies, refuse_changed_currency_digits
from .supervisor import run_all
from .tasks import daemon as billing_daemon


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


class BillingGroup(AppGroup):
    """A command cut off from the database or Redis ends with the one-line error too."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (OperationalError, InterfaceError) as exc:
            fail(f"lost the connection to the database: {_first_line(exc.orig or exc)}")
        except RedisError as exc:
            fail(f"lost the connection to Redis: {_first_line(exc)}")


billing = BillingGroup("billing", help="Billing portal operations.")


@billing.command("create-admin")
@click.argument("email")
@click.option("--password", envvar="ADMIN_PASSWORD", help="Else you are asked for it.")
def create_admin(email: str, password: str | None) -> None:
    """Create an admin account, or give an existing account the admin role."""
    try:
        normalized = accounts.normalize_email(email)
        user = db.session.scalar(select(User).where(User.email == normalized))
        if user is None:
            if not password:
                password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
            user = accounts.create_user(email=normalized, password=password, is_admin=True)
            action = "created"
        else:
            user.is_admin = True
            action = "is now an admin"
        db.session.commit()
    except ServiceError as exc:
        fail(exc.message)
    click.echo(f"{user.email} {action}")


@billing.command("revoke-admin")
@click.argument("email")
def revoke_admin(email: str) -> None:
    """Take the admin role away from EMAIL and revoke their admin and platform tokens
    (refused for the last admin)."""
    try:
        user = accounts.find_user(accounts.normalize_email(email))
        revoked = accounts.revoke_admin(user)
        db.session.commit()
    except ServiceError as exc:
        fail(exc.message)
    click.echo(
        f"{user.email} is no longer an admin; {revoked} admin or platform "
        f"token{'' if revoked == 1 else 's'} revoked"
    )


@billing.command("create-token")
@click.argument("email")
@click.option("--scope", type=click.Choice(["user", "admin", "platform"]), default="user")
@click.option("--name", default="cli", help="A label to recognise the token by.")
def create_token(email: str, scope: str, name: str) -> None:
    """Print a new API token for EMAIL (the token alone on the last line)."""
    try:
        user = accounts.find_user(email)
        _, plain = accounts.create_api_token(user, name=name, scope=scope)
        db.session.commit()
    except ServiceError as exc:
        fail(exc.message)
    click.echo(f"token for {user.email}, scope {scope} (shown once):")
    click.echo(plain)


@billing.command("reconcile")
def reconcile() -> None:
    """Prove the ledger's invariants; exit 1 on any difference."""
    problems = find_discrepancies()
    for problem in problems:
        click.echo(problem)
    if problems:
        fail(f"{len(problems)} difference(s) found")
    click.echo(f"ok: {len(CHECKS)} checks passed")


@billing.command("expire-credits")
def expire_credits() -> None:
    """Return what is left of expired credit lots to the grant source."""
    count = credits.expire_credits()
    db.session.commit()
    click.echo(f"expired {count} credit lot(s)")


@billing.command("meter")
@click.option(
    "--hour",
    help="Meter up to and including this hour (2026-11-21T14); "
    "default: every complete hour not yet metered.",
)
def meter(hour: str | None) -> None:
    """Meter deployments' usage into the rollups (safe to run any number of times)."""
    try:
        upto = (
            (rollups.parse_hour(hour) + timedelta(hours=1))
            if hour
            else rollups.last_complete_hour()
        )
    except ValueError as exc:
        fail(str(exc))
    if upto > rollups.last_complete_hour():
        fail(f"hour {hour} is not complete yet")
    result = runs.meter_all(upto)
    click.echo(
        f"metered up to {upto:%Y-%m-%dT%H:%M}Z: {result.chunks} chunk(s), "
        f"{result.hours} chunk-hour(s), {result.rows} rollup row(s)"
    )


@billing.command("usage-audit")
def usage_audit() -> None:
    """Prove the usage rollups equal a recomputation from the deployment intervals, and
    their daily totals equal the rollups."""
    problems = rollups.audit_usage()
    for problem in problems:
        click.echo(problem)
    if problems:
        fail(f"{len(problems)} difference(s) from the intervals")
    click.echo(
        f"ok: {rollups.rollup_count()} rollup rows match the intervals, and their totals match"
    )


@billing.command("archive")
@click.option("--year", type=int, required=True, help="The closed year to archive (2025).")
@click.option(
    "--to",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write billing-archive-YEAR/ (CSV files, totals, manifest, SHA256SUMS).",
)
def archive(year: int, directory: Path) -> None:
    """Write a closed year's usage rollups and ledger entries to files, keep their totals,
    and remove the rows (reconcile and usage-audit go on proving the books)."""
    try:
        result = retention_archive.archive_year(year, directory)
        db.session.commit()  # the files are complete and on disk
    except ServiceError as exc:
        fail(exc.message)
    click.echo(
        f"archived {year} into {result.directory}: {result.usage_rows} usage rollup row(s) "
        f"of {result.deployments} deployment(s), {result.ledger_entries} ledger entr"
        f"{'y' if result.ledger_entries == 1 else 'ies'} of {result.accounts} account(s)"
    )


@billing.command("create-partitions")
def create_partitions() -> None:
    """Create the monthly partitions of this month and the next three (PostgreSQL; the
    daemon does it daily)."""
    created = partitions.ensure_partitions()
    db.session.commit()
    if not partitions.enabled():
        click.echo("nothing to do: the tables are partitioned on PostgreSQL only")
        return
    click.echo(f"{len(created)} partition(s) created{': ' if created else ''}{', '.join(created)}")


@billing.command("daemon")
@click.option(
    "--now",
    help="Schedule as if the time were this ISO time, e.g. "
    "2026-11-21T18:30Z (tests, replays); leases use the real time.",
)
@click.option("--once", is_flag=True, help="Run one cycle, then stop.")
def daemon(now: str | None, once: bool) -> None:
    """Run the billing daemon: it owns the schedule until SIGTERM or SIGINT."""
    try:
        billing_daemon.parse_now(now)
    except ValueError as exc:
        fail(f"--now {exc}")
    refuse_changed_currency_digits()
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # the app, not its proxy
    sys.exit(billing_daemon.run(app, now=now, once=once))


@billing.command("invoice")
@click.option(
    "--period",
    help="The billing period starting in this month (2026-10); "
    "default: the last one that has ended.",
)
def invoice(period: str | None) -> None:
    """Invoice every user with usage in a billing period (safe to run any number of times)."""
    try:
        start, end = (
            calendar.parse_period(period, current_app.config["BILLING"].invoice_day)
            if period
            else calendar.last_complete_period()
        )
        result = run.generate_period(start, end)
    except ValueError as exc:
        fail(str(exc))
    except ServiceError as exc:
        fail(exc.message)
    click.echo(
        f"period {start:%Y-%m-%d} to {end:%Y-%m-%d}: {result.invoices} invoice(s) "
        f"issued, {result.skipped} already existed"
    )


@billing.command("mark-overdue")
def mark_overdue() -> None:
    """Open invoices past their due date become overdue."""
    count = invoices.mark_overdue()
    db.session.commit()
    click.echo(f"{count} invoice(s) now overdue")


@billing.command("seed-demo")
def seed_demo() -> None:
    """Load demo data: one admin and three users with different histories (idempotent)."""
    for line in demo.seed():
        click.echo(line)
    db.session.commit()


@billing.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True)
@click.option("--web-workers", default=2, show_default=True)
@click.option("--banner", default="", help="Printed once everything has started.")
def serve(host: str, port: int, web_workers: int, banner: str) -> None:
    """Run the web server, an RQ worker and the periodic processes in the foreground."""
    refuse_changed_currency_digits()
    sys.exit(run_all(host=host, port=port, web_workers=web_workers, banner=banner))


def register_cli(app: Flask) -> None:
    app.cli.add_command(billing)

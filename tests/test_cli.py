"""`flask billing ...` commands: create-token, create-admin, seed-demo, reconcile."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import func, select, update

from portal.config import build_config
from portal.extensions import db
from portal.models import (
    CreditLot,
    LedgerAccount,
    LedgerTransaction,
    OutboundEmail,
    PrepaidCharge,
    User,
)
from portal.services.demo import ADMIN_EMAIL, DEMO_PASSWORD
from tests.support.app import AuthActions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def counts(app) -> dict[str, int]:
    with app.app_context():
        return {
            model.__name__: db.session.scalar(select(func.count()).select_from(model))
            for model in (User, LedgerTransaction, CreditLot, OutboundEmail, PrepaidCharge)
        }


def test_create_token_prints_a_working_platform_token(runner, api, make_user):
    admin = make_user(admin=True)
    result = runner.invoke(args=["billing", "create-token", admin.email, "--scope", "platform"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    token = lines[-1]
    assert token.startswith("bp_") and " " not in token
    assert all(token not in line for line in lines[:-1])  # alone on its last line

    response = api.post("/users", token=token, json={"email": "from-cli@example.com"})
    assert response.status_code == 201


def test_create_token_for_a_user_scope_reads_only_their_wallet(runner, api, make_user):
    user = make_user()
    result = runner.invoke(args=["billing", "create-token", user.email])
    assert result.exit_code == 0
    token = result.stdout.strip().splitlines()[-1]
    assert api.get("/wallet", token=token).json["user_id"] == user.id
    assert api.post("/users", token=token, json={"email": "x@example.com"}).status_code == 403


def one_line_error(result) -> str:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_create_token_for_an_unknown_email_fails_in_one_line(app, runner):
    result = runner.invoke(
        args=["billing", "create-token", "nobody@example.com", "--scope", "platform"]
    )
    assert "nobody@example.com" in one_line_error(result)
    assert "bp_" not in result.output


def test_a_platform_token_for_a_non_admin_is_refused(app, runner, make_user):
    user = make_user()
    result = runner.invoke(args=["billing", "create-token", user.email, "--scope", "admin"])
    assert "admin" in one_line_error(result)
    assert "bp_" not in result.output


def test_create_admin_makes_an_admin_who_can_log_in(app, runner):
    result = runner.invoke(
        args=["billing", "create-admin", "Boss@Example.com", "--password", "boss-password-123"]
    )
    assert result.exit_code == 0, result.output
    assert "boss@example.com created" in result.stdout

    client = app.test_client()
    response = AuthActions(client).login("boss@example.com", "boss-password-123")
    assert response.status_code == 303
    admin_page = client.get("/admin/")
    assert admin_page.status_code == 200
    assert "boss@example.com" in admin_page.get_data(as_text=True)


def test_create_admin_promotes_an_existing_user(app, runner, auth, client, make_user):
    user = make_user()
    auth.login(user)
    assert client.get("/admin/").status_code == 403
    result = runner.invoke(args=["billing", "create-admin", user.email])
    assert result.exit_code == 0
    assert f"{user.email} is now an admin" in result.stdout
    assert client.get("/admin/").status_code == 200
    # The password did not change.
    assert AuthActions(app.test_client()).login(user).status_code == 303


def test_create_admin_with_a_short_password_fails_in_one_line(app, runner):
    result = runner.invoke(
        args=["billing", "create-admin", "boss@example.com", "--password", "short"]
    )
    assert "10 characters" in one_line_error(result)
    assert counts(app)["User"] == 0


def test_create_admin_with_a_bad_email_fails_in_one_line(app, runner):
    result = runner.invoke(
        args=["billing", "create-admin", "not-an-email", "--password", "long-enough-password"]
    )
    one_line_error(result)
    assert counts(app)["User"] == 0


def test_seed_demo_is_idempotent_and_reconciles(app, runner):
    first = runner.invoke(args=["billing", "seed-demo"])
    assert first.exit_code == 0, first.output
    after_first = counts(app)
    assert after_first["User"] == 4
    assert after_first["CreditLot"] == 3
    # three grants, one expiry and Bob's prepaid session charged to his credit
    assert after_first["LedgerTransaction"] == 5
    assert after_first["PrepaidCharge"] == 1
    assert after_first["OutboundEmail"] == 1  # Carol's set-password link

    second = runner.invoke(args=["billing", "seed-demo"])
    assert second.exit_code == 0, second.output
    assert counts(app) == after_first

    result = runner.invoke(args=["billing", "reconcile"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: ")

    # The demo accounts work as printed.
    client = app.test_client()
    assert AuthActions(client).login(ADMIN_EMAIL, DEMO_PASSWORD).status_code == 303
    assert client.get("/admin/").status_code == 200


def test_reconcile_fails_on_a_broken_ledger(app, runner, make_user):
    """A hand-written balance that entries do not back is found and exits non-zero."""
    runner.invoke(args=["billing", "seed-demo"])
    with app.app_context():
        db.session.execute(
            update(LedgerAccount)
            .where(LedgerAccount.kind == "credit")
            .values(balance_minor=LedgerAccount.balance_minor + 1)
        )
        db.session.commit()
    result = runner.invoke(args=["billing", "reconcile"])
    assert one_line_error(result).startswith("error: ")
    assert result.stdout.strip()  # the differences are listed
    with app.app_context():  # put it back, so the after-test reconcile passes
        db.session.execute(
            update(LedgerAccount)
            .where(LedgerAccount.kind == "credit")
            .values(balance_minor=LedgerAccount.balance_minor - 1)
        )
        db.session.commit()


def _shell(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    """A `flask` command as a new terminal runs it: only PATH and what is given."""
    flask = os.path.join(os.path.dirname(sys.executable), "flask")
    return subprocess.run(
        [flask, *args],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_billing_help_works_with_no_configuration_at_all(tmp_path):
    result = _shell(["billing", "--help"], {"INSTANCE_PATH": str(tmp_path / "empty")}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "create-token" in result.stdout and "reconcile" in result.stdout
    result = _shell(
        ["--app", ROOT + "/wsgi.py", "billing", "--help"],
        {"INSTANCE_PATH": str(tmp_path / "empty")},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr


def test_a_fresh_shell_uses_the_secret_key_make_run_keeps(app, make_user, tmp_path):
    """`make run` keeps its SECRET_KEY in instance/secret_key; the README's create-token in
    a new terminal (no SECRET_KEY in the environment) must find it, not fail."""
    admin = make_user(admin=True)
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "secret_key").write_text("k" * 64 + "\n")
    env = {
        "INSTANCE_PATH": str(instance),
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": app.config["REDIS_URL"],
    }
    result = _shell(
        ["--app", "wsgi", "billing", "create-token", admin.email, "--scope", "admin"], env, ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("bp_")

    (instance / "secret_key").unlink()  # neither the environment nor the file: one line
    result = _shell(["--app", "wsgi", "billing", "reconcile"], env, ROOT)
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr and "Traceback" not in result.stderr


def test_the_secret_key_in_the_environment_wins_over_the_file(tmp_path):
    (tmp_path / "secret_key").write_text("from-the-file-0123456789")
    assert build_config(str(tmp_path), environ={})["SECRET_KEY"] == "from-the-file-0123456789"
    cfg = build_config(str(tmp_path), environ={"SECRET_KEY": "from-the-environment-0123"})
    assert cfg["SECRET_KEY"] == "from-the-environment-0123"


def test_a_command_that_loses_the_database_fails_in_one_line(app, make_app):
    """No traceback when the database goes away under a command: the one-line error."""
    gone = make_app(DATABASE_URL="postgresql://postgres@127.0.0.1:9/gone")
    result = gone.test_cli_runner().invoke(args=["billing", "reconcile"])
    assert result.exit_code == 1
    assert one_line_error(result).startswith("error: lost the connection to the database: ")

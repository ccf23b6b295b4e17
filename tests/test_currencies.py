"""Currency digits belong to the project: its ISO 4217 table, pinned per currency in use."""

from __future__ import annotations

import subprocess
import sys

import babel.numbers
import iso4217
import pytest
from sqlalchemy import select

from portal import currencies
from portal.extensions import db
from portal.models import CurrencyPin
from portal.money import Money, currency_digits, format_money
from portal.services.wallet import ledger
from portal.services.wallet.reconcile import currency_pins, find_discrepancies


def test_the_table_is_iso_4217_for_every_active_code():
    iso = {c.code: c.exponent for c in iso4217.Currency if c.exponent is not None}
    assert currencies.ISO_4217_DIGITS == iso


@pytest.mark.parametrize(
    ("code", "digits"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("HUF", 2),
        ("TWD", 2),
        ("ISK", 0),
        ("JPY", 0),
        ("KRW", 0),
        ("UGX", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("TND", 3),
        ("CLF", 4),
    ],
)
def test_digits_come_from_the_table_not_from_babel(code, digits, monkeypatch):
    # Whatever CLDR says (Babel 2.19 gives HUF 0 digits), the project's table decides.
    monkeypatch.setattr(babel.numbers, "get_currency_precision", lambda _code: 7)
    assert currency_digits(code) == digits
    assert currency_digits(code.lower()) == digits


def test_codes_without_minor_units_are_refused():
    for code in ("XAU", "XXX", "ABC", "US"):
        with pytest.raises(ValueError, match="ISO 4217"):
            currency_digits(code)


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money(12345, "HUF"), "HUF123.45"),  # CLDR would print 123 and drop the fillér
        (Money(5, "ISK"), "ISK5"),
        (Money(5120, "KWD"), "KWD5.120"),
        (Money(500, "JPY"), "¥500"),
        (Money(-123456, "USD"), "-$1,234.56"),
    ],
)
def test_formatting_shows_exactly_the_stored_digits(money, text):
    assert format_money(money) == text


def test_opening_an_account_pins_its_currency(ctx, make_user):
    make_user()
    assert db.session.scalars(select(CurrencyPin)).all()[0].digits == 2
    ledger.pin_currency("USD")  # again: a no-op
    assert [(p.code, p.digits) for p in db.session.scalars(select(CurrencyPin))] == [("USD", 2)]
    assert currency_pins() == []


@pytest.mark.corrupts_ledger
def test_reconcile_refuses_a_table_that_changed_under_stored_amounts(
    ctx, make_user, runner, monkeypatch
):
    make_user()
    monkeypatch.setitem(currencies.ISO_4217_DIGITS, "USD", 3)
    problems = find_discrepancies()
    assert any(
        "USD amounts are stored with 2 digits but the code now says 3" in p for p in problems
    )
    result = runner.invoke(args=["billing", "reconcile"])
    assert result.exit_code == 1
    result = runner.invoke(args=["billing", "daemon", "--once"])
    assert result.exit_code != 0 and "USD" in str(result.exception or result.output)


@pytest.mark.corrupts_ledger
def test_a_currency_in_use_without_a_pin_is_reported(ctx, make_user):
    make_user()
    db.session.execute(CurrencyPin.__table__.delete())
    db.session.commit()
    assert currency_pins() == ["USD is in use but its digits were never pinned"]


def test_the_worker_refuses_to_start_when_digits_changed(app, make_user, tmp_path):
    """A real worker process: started with a table that disagrees with the pins, it exits
    with the reason instead of working on amounts it would misread."""
    make_user()
    code = (
        "import sys; from portal import currencies; currencies.ISO_4217_DIGITS['USD'] = 0\n"
        "from jobs.worker import main; main(['--burst'])\n"
    )
    env = {
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": app.config["REDIS_URL"],
        "SECRET_KEY": "x" * 32,
        "INSTANCE_PATH": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "USD amounts are stored with 2 digits but the code now says 0" in proc.stderr

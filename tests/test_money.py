"""Money tables over USD (2 digits), JPY (0) and KWD (3)."""

from decimal import Decimal

import pytest

from portal.money import (
    AmountError,
    CurrencyMismatch,
    Money,
    currency_digits,
    decimal_to_micros,
    format_micros,
    format_money,
)


@pytest.mark.parametrize("currency, digits", [("USD", 2), ("JPY", 0), ("KWD", 3), ("EUR", 2)])
def test_currency_digits(currency, digits):
    assert currency_digits(currency) == digits


@pytest.mark.parametrize(
    "value, currency, minor",
    [
        ("1.40", "USD", 140),
        ("0.01", "USD", 1),
        ("50", "USD", 5000),
        (Decimal("12.30"), "USD", 1230),
        ("1500", "JPY", 1500),
        ("1.234", "KWD", 1234),
        ("0.001", "KWD", 1),
        (7, "KWD", 7000),
        ("-2.50", "USD", -250),
    ],
)
def test_from_decimal_exact(value, currency, minor):
    assert Money.from_decimal(value, currency) == Money(minor, currency)


@pytest.mark.parametrize(
    "value, currency",
    [
        ("1.234", "USD"),
        ("1.5", "JPY"),
        ("0.0001", "KWD"),
        ("abc", "USD"),
        ("NaN", "USD"),
        ("Infinity", "USD"),
    ],
)
def test_from_decimal_refuses_extra_digits_and_garbage(value, currency):
    with pytest.raises(AmountError):
        Money.from_decimal(value, currency)


@pytest.mark.parametrize(
    "micros, currency, minor",
    [
        # ties round half up (away from zero), never half-even
        (5_000, "USD", 1),
        (4_999, "USD", 0),
        (15_000, "USD", 2),
        (25_000, "USD", 3),
        (1_400_000, "USD", 140),
        (500_000, "JPY", 1),
        (499_999, "JPY", 0),
        (2_500_000, "JPY", 3),
        (500, "KWD", 1),
        (499, "KWD", 0),
        (1_234_500, "KWD", 1235),
        (-5_000, "USD", -1),
    ],
)
def test_from_micros_rounds_half_up(micros, currency, minor):
    assert Money.from_micros(micros, currency) == Money(minor, currency)


def test_float_is_refused_everywhere():
    with pytest.raises(TypeError):
        Money(1.5, "USD")
    with pytest.raises(TypeError):
        Money.from_decimal(1.40, "USD")
    with pytest.raises(TypeError):
        decimal_to_micros(0.05)
    with pytest.raises(TypeError):
        Money(True, "USD")


def test_arithmetic_and_currency_mixing():
    assert Money(140, "USD") + Money(60, "USD") == Money(200, "USD")
    assert Money(140, "USD") - Money(160, "USD") == Money(-20, "USD")
    assert -Money(5, "JPY") == Money(-5, "JPY")
    assert Money(1, "USD") < Money(2, "USD")
    with pytest.raises(CurrencyMismatch):
        Money(1, "USD") + Money(1, "EUR")
    with pytest.raises(CurrencyMismatch):
        assert Money(1, "USD") < Money(1, "JPY")


@pytest.mark.parametrize(
    "money, amount",
    [
        (Money(140, "USD"), Decimal("1.40")),
        (Money(1500, "JPY"), Decimal("1500")),
        (Money(1234, "KWD"), Decimal("1.234")),
    ],
)
def test_amount_and_json(money, amount):
    assert money.amount == amount
    assert money.to_json("total") == {"total": str(amount), "total_minor": money.amount_minor}


@pytest.mark.parametrize(
    "money, text",
    [
        (Money(140, "USD"), "$1.40"),
        (Money(1500, "JPY"), "¥1,500"),
        (Money(1234, "KWD"), "KWD1.234"),
        (Money(123456789, "USD"), "$1,234,567.89"),
    ],
)
def test_format_money(money, text):
    assert format_money(money).replace("\xa0", "") == text


def test_decimal_to_micros_and_format():
    assert decimal_to_micros("0.05") == 50_000
    assert decimal_to_micros(Decimal("0.000001")) == 1
    with pytest.raises(AmountError):
        decimal_to_micros("0.0000001")
    assert format_micros(50_000, "USD") == "$0.05"
    assert format_micros(1_389, "USD") == "$0.001389"
    assert format_micros(3_000_000, "JPY") == "¥3"


def test_unknown_currency():
    with pytest.raises(ValueError):
        Money(1, "XX")

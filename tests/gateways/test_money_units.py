"""Money <-> Stripe's minor units, with Stripe's own exponent table."""

import pytest

from portal.gateways.base import (
    STRIPE_CURRENCY_OVERRIDES,
    from_stripe_amount,
    stripe_exponent,
    to_stripe_amount,
)
from portal.money import AmountError, Money

ZERO_DECIMAL = {
    "BIF",
    "CLP",
    "DJF",
    "GNF",
    "JPY",
    "KMF",
    "KRW",
    "MGA",
    "PYG",
    "RWF",
    "UGX",
    "VND",
    "VUV",
    "XAF",
    "XOF",
    "XPF",
}
THREE_DECIMAL = {"BHD", "JOD", "KWD", "OMR", "TND"}


def test_the_override_map_is_stripes_currency_table():
    """Pinned: when Stripe changes its lists, this test and the one map change together."""
    assert {c for c, (exp, _) in STRIPE_CURRENCY_OVERRIDES.items() if exp == 0} == ZERO_DECIMAL
    assert {c for c, (exp, _) in STRIPE_CURRENCY_OVERRIDES.items() if exp == 3} == THREE_DECIMAL
    assert {c: g for c, (_, g) in STRIPE_CURRENCY_OVERRIDES.items() if g != 1} == {
        **{c: 10 for c in THREE_DECIMAL},
        "ISK": 100,
    }
    assert set(STRIPE_CURRENCY_OVERRIDES) == ZERO_DECIMAL | THREE_DECIMAL | {"ISK"}
    for code in ("USD", "EUR", "HUF", "TWD", "GBP"):
        assert stripe_exponent(code) == 2


@pytest.mark.parametrize(
    ("money", "units"),
    [
        (Money(1000, "USD"), 1000),  # 10.00 USD
        (Money(500, "JPY"), 500),  # 500 JPY, zero-decimal
        (Money(5120, "KWD"), 5120),  # 5.120 KWD, three-decimal, last digit 0
        (Money(5, "ISK"), 500),  # CLDR: 0 digits; Stripe: two-decimal, whole kronur
        (Money(12345, "HUF"), 12345),  # two-decimal for charges
        (Money(1999, "TWD"), 1999),
        (Money(7000, "UGX"), 7000),  # zero-decimal
        (Money(1, "EUR"), 1),
    ],
)
def test_to_and_from_stripe_units(money, units):
    assert to_stripe_amount(money) == units
    assert from_stripe_amount(units, money.currency.lower()) == money


def test_amounts_stripe_cannot_take_are_refused_not_rounded():
    with pytest.raises(AmountError, match="divisible by 10"):
        to_stripe_amount(Money(5125, "KWD"))
    with pytest.raises(AmountError, match="more digits"):
        from_stripe_amount(150, "isk")  # 1.50 ISK: not whole kronur
    with pytest.raises(TypeError):
        from_stripe_amount(10.0, "usd")  # type: ignore[arg-type]

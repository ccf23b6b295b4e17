"""Money: integer minor units with a currency, exact Decimal, never float.

Three representations, with their units in their names:
- ``Money(amount_minor, currency)``: what ledgers, invoices and payments hold (cents, yen, fils).
- ``*_micros``: integer millionths of the major unit, for sub-cent rated amounts (usage).
- ``Decimal``: rates and user input, parsed exactly.

Rounding happens once, from micros or Decimal to minor units, ROUND_HALF_UP to the
currency's digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from babel import Locale
from babel.numbers import format_currency

from .currencies import ISO_4217_DIGITS

# What the database's BIGINT columns hold: no Money outside this range exists.
MAX_MINOR = 2**63 - 1


class CurrencyMismatch(ValueError):
    pass


class AmountError(ValueError):
    """A user-supplied amount that cannot be taken as money (too many digits, not a number)."""


def currency_digits(currency: str) -> int:
    """The currency's ISO 4217 minor units, from the project's own table (never from Babel:
    a library upgrade must not change what stored amounts mean)."""
    try:
        return ISO_4217_DIGITS[currency.upper()]
    except KeyError:
        raise ValueError(f"not an ISO 4217 currency code with minor units: {currency!r}") from None


def _check_not_float(value: object) -> None:
    if isinstance(value, float):
        raise TypeError("money is never a float; pass an int of minor units, a str or a Decimal")


def to_decimal(value: object) -> Decimal:
    """Exact Decimal from an int, str or Decimal. Floats raise TypeError."""
    _check_not_float(value)
    if isinstance(value, bool):
        raise TypeError("a bool is not an amount")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise AmountError("is not a number") from None
    else:
        raise TypeError(f"cannot take {type(value).__name__} as an amount")
    if not result.is_finite():
        raise AmountError("is not a finite number")
    return result


def round_half_up(value: Decimal, digits: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True, order=False)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        _check_not_float(self.amount_minor)
        if not isinstance(self.amount_minor, int) or isinstance(self.amount_minor, bool):
            raise TypeError("Money.amount_minor must be an int of minor units")
        if not -MAX_MINOR <= self.amount_minor <= MAX_MINOR:
            raise AmountError("is too large")
        code = self.currency.upper()
        currency_digits(code)  # validates the code
        object.__setattr__(self, "currency", code)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @classmethod
    def from_decimal(cls, value: object, currency: str, *, exact: bool = True) -> Money:
        """Major units (``Decimal('12.34')``) to Money.

        ``exact=True`` (input from people and APIs) refuses more digits than the currency
        has; ``exact=False`` rounds ROUND_HALF_UP (computed amounts).
        """
        amount = to_decimal(value)
        digits = currency_digits(currency)
        try:
            rounded = round_half_up(amount, digits)
        except InvalidOperation:  # more digits than the decimal context holds ("1e30")
            raise AmountError("is too large") from None
        if exact and rounded != amount:
            raise AmountError(f"has more than {digits} decimal places for {currency.upper()}")
        return cls(int(rounded.scaleb(digits)), currency)

    @classmethod
    def from_micros(cls, micros: int, currency: str) -> Money:
        """Round integer micro-units to the currency's minor units, ROUND_HALF_UP."""
        return cls.from_decimal(micros_to_decimal(micros), currency, exact=False)

    # -- views --------------------------------------------------------------------------
    @property
    def digits(self) -> int:
        return currency_digits(self.currency)

    @property
    def amount(self) -> Decimal:
        """Exact major-unit Decimal, with exactly the currency's digits."""
        return (
            Decimal(self.amount_minor)
            .scaleb(-self.digits)
            .quantize(Decimal(1).scaleb(-self.digits))
        )

    def to_json(self, prefix: str) -> dict[str, Any]:
        """``{"total": "1.40", "total_minor": 140}`` (add "currency" once per object).

        Any, not object: the pair is spread into response models' keyword arguments."""
        return {prefix: str(self.amount), f"{prefix}_minor": self.amount_minor}

    def format(self, locale: str = "en_US") -> str:
        return format_money(self, locale)

    # -- arithmetic ---------------------------------------------------------------------
    def _same(self, other: object) -> Money:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} and {other.currency} do not mix")
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.amount_minor + self._same(other).amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.amount_minor - self._same(other).amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        return self.amount_minor < self._same(other).amount_minor

    def __le__(self, other: Money) -> bool:
        return self.amount_minor <= self._same(other).amount_minor

    def __gt__(self, other: Money) -> bool:
        return self.amount_minor > self._same(other).amount_minor

    def __ge__(self, other: Money) -> bool:
        return self.amount_minor >= self._same(other).amount_minor

    def __bool__(self) -> bool:
        return self.amount_minor != 0

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


def micros_to_decimal(micros: int) -> Decimal:
    _check_not_float(micros)
    if not isinstance(micros, int):
        raise TypeError("micros must be an int")
    return Decimal(micros).scaleb(-6)


def decimal_to_micros(value: object) -> int:
    """Exact Decimal (a rate such as '0.05') to integer micros; refuses sub-micro precision."""
    amount = to_decimal(value)
    micros = amount.scaleb(6)
    if micros != micros.to_integral_value():
        raise AmountError("has more than 6 decimal places")
    return int(micros)


def format_money(value: Money, locale: str = "en_US") -> str:
    return _format_minor(value.amount_minor, value.currency, locale)


@lru_cache(maxsize=4096)
def _format_minor(amount_minor: int, currency: str, locale: str) -> str:
    # Pages show the same amounts again and again (the wallet polls every 15 s) and Babel
    # takes tens of microseconds an amount, so the text is kept per (amount, currency, locale).
    # The value is already exact at the currency's digits and the pattern shows exactly
    # those digits, so Babel rounds nothing (CLDR's own digits may differ: HUF, ISK).
    return format_currency(
        Money(amount_minor, currency).amount,
        currency,
        format=_currency_pattern(locale, currency_digits(currency)),
        locale=_babel_locale(locale),
        currency_digits=False,
    )


@lru_cache(maxsize=16)
def _babel_locale(locale: str) -> Locale:
    return Locale.parse(locale)


@lru_cache(maxsize=64)
def _currency_pattern(locale: str, digits: int) -> str:
    """The locale's standard currency pattern with exactly ``digits`` fraction digits."""
    pattern = _babel_locale(locale).currency_formats["standard"].pattern
    return re.sub(r"(?<=0)\.0+", "." + "0" * digits if digits else "", pattern)


def format_micros(micros: int, currency: str, locale: str = "en_US") -> str:
    """A sub-cent figure (a unit price, a running cost) with as many digits as it needs."""
    micros_to_decimal(micros)  # refuses a float (or not an int) before the cache answers
    return _format_micros(int(micros), currency, locale)


@lru_cache(maxsize=4096)
def _format_micros(micros: int, currency: str, locale: str) -> str:
    # Kept per (micros, currency, locale) as _format_minor keeps amounts: an invoice's lines
    # repeat the same few unit prices, and Babel takes tens of microseconds each.
    amount = micros_to_decimal(micros).normalize()
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # finite: made from an int
    digits = max(currency_digits(currency), -exponent)
    pattern = "¤#,##0." + "0" * digits if digits else "¤#,##0"
    return format_currency(amount, currency, format=pattern, locale=locale, currency_digits=False)

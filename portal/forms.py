"""Fields and validators the HTML forms share: amounts, whole numbers and dates as a person
types them, refused with a message on the field when they cannot be meant.

An amount is ASCII digits with at most one decimal point ("1234.50"): no exponent ("1e30"),
no digit separators ("1_000", "1,000"), no other scripts' digits ("١٢"), and at most
``MAX_AMOUNT`` major units, the JSON API's limit too, so that no amount an HTML form takes can
exceed 64-bit minor units. The currency's own digits are checked where the currency is known
(``Money.from_decimal``).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal

from wtforms import IntegerField, StringField
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from .money import AmountError

MAX_AMOUNT = Decimal(1_000_000_000)  # major units: 1,000,000,000.00
MAX_AMOUNT_CHARS = 32
_AMOUNT = re.compile(r"[0-9]+(?:\.[0-9]+)?")  # [0-9]: ASCII digits only
_NEGATIVE = re.compile(r"-[0-9]+(?:\.[0-9]+)?")
_WHOLE = re.compile(r"[0-9]{1,12}")

# Dates people mean: from 2000 to a century ahead (a "valid through 9999-12-31" is refused
# rather than overflowing the day after it).
EARLIEST_DATE = date(2000, 1, 1)
YEARS_AHEAD = 100


def parse_amount(
    text: str | None, *, positive: bool = True, maximum: Decimal = MAX_AMOUNT
) -> Decimal:
    """The exact Decimal of an amount typed into a form; AmountError says what is wrong
    (phrased to follow "The amount")."""
    typed = (text or "").strip()
    if _AMOUNT.fullmatch(typed):
        value = Decimal(typed)
    elif _NEGATIVE.fullmatch(typed):
        raise AmountError("must be greater than 0" if positive else "must not be negative")
    elif any(ch.isdigit() for ch in typed):
        raise AmountError(
            "must be written with the digits 0-9 and at most one decimal point, like 1234.50"
        )
    else:
        raise AmountError("is not a number")
    if positive and value == 0:
        raise AmountError("must be greater than 0")
    if value > maximum:
        raise AmountError(f"must be at most {maximum:,}")
    return value


class AmountField(StringField):
    """A required amount; ``.decimal`` holds it once the form validated. ``noun`` names it in
    errors ("The value must be at most 1,000,000,000."); ``positive=False`` allows 0;
    ``required=False`` takes an empty field (``.decimal`` None)."""

    def __init__(
        self,
        label=None,
        validators=None,
        *,
        noun: str = "amount",
        positive: bool = True,
        required: bool = True,
        **kwargs,
    ):
        presence = DataRequired() if required else Optional()
        super().__init__(
            label, [presence, Length(max=MAX_AMOUNT_CHARS), *(validators or [])], **kwargs
        )
        self.noun = noun
        self.positive = positive
        self.decimal: Decimal | None = None

    def post_validate(self, form, validation_stopped: bool) -> None:
        self.decimal = None
        if validation_stopped or self.errors or not (self.data or "").strip():
            return
        try:
            self.decimal = parse_amount(self.data, positive=self.positive)
        except AmountError as exc:
            self.errors.append(f"The {self.noun} {exc}.")


class WholeNumberField(IntegerField):
    """IntegerField taking ASCII digits only (Python's int() also takes "١٢" and "1_000")."""

    def process_formdata(self, valuelist):
        if valuelist and valuelist[0].strip() and not _WHOLE.fullmatch(valuelist[0].strip()):
            self.data = None
            raise ValueError("Must be a whole number written with the digits 0-9.")
        super().process_formdata(valuelist)


def latest_date(today: date | None = None) -> date:
    today = today or datetime.now(UTC).date()
    return today.replace(year=today.year + YEARS_AHEAD, day=min(today.day, 28))


def check_date(value: date) -> str | None:
    """What is wrong with a date a person typed, or None."""
    if value < EARLIEST_DATE:
        return f"must not be before {EARLIEST_DATE:%Y-%m-%d}"
    latest = latest_date()
    if value > latest:
        return f"must not be after {latest:%Y-%m-%d} ({YEARS_AHEAD} years from today)"
    return None


class PlausibleDate:
    """For DateField and DateTimeLocalField: a date from 2000 to a century from today."""

    def __call__(self, form, field) -> None:
        if field.data is None:
            return
        value = field.data.date() if isinstance(field.data, datetime) else field.data
        problem = check_date(value)
        if problem:
            raise ValidationError(problem[0].upper() + problem[1:] + ".")

"""The JSON API's field types, request reading and error translation: one validation layer.

Request models are pydantic v2 models in strict mode built from the types below. Each type
validates the Python object the app's JSON provider parsed (JSON numbers arrive as exact
Decimals, never floats) and never coerces: ``[]`` is not a string, ``false`` and ``""`` are
not numbers. The same types carry the JSON Schema the OpenAPI document shows.

Limits (documented in the README's "The JSON API"):
- money: a JSON number or a string of ASCII digits with one optional decimal point,
  greater than 0 and at most ``MAX_AMOUNT`` (1,000,000,000 major units; that is 10^11
  cents, far inside 64-bit minor units even for three-digit currencies), with no more
  decimal places than the currency has;
- text: a declared maximum length, refused (never truncated) when longer; no NUL
  characters (PostgreSQL refuses them) and no lone surrogates (not encodable);
- times: ISO 8601 with a zone, or a bare date, from ``EARLIEST`` up to ``LATEST``;
- labels: at most ``MAX_LABELS`` keys of ``LABEL_KEY`` shape, values of at most
  ``MAX_LABEL_VALUE`` characters;
- page numbers and ids: bounded, so no query can overflow a database integer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, TypeVar, overload

from annotated_types import GroupedMetadata
from flask import request
from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from ...errors import ValidationFailed
from ...money import Money, currency_digits
from ...services.metering.deployments import (
    EXTERNAL_ID_RULE,
    LABEL_KEY_RULE,
    MAX_LABEL_VALUE,
    MAX_LABELS,
)

MAX_AMOUNT = Decimal("1000000000")  # major units
MAX_AMOUNT_TEXT = "1000000000"
EARLIEST = date(2000, 1, 1)
LATEST = date(2099, 12, 31)  # inclusive
MAX_ID = 2**31 - 1  # the largest id a database integer key holds
MAX_PAGE = 1_000_000
MAX_PER_PAGE = 200
MAX_EMAIL = 254


class StrictModel(BaseModel):
    """Request bodies: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


class QueryModel(BaseModel):
    """Query strings: each value arrives as text; unknown parameters are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


class Rules(GroupedMetadata):
    """A validator and its JSON Schema, for ``Annotated[str, Text(200)]``: pydantic unpacks
    the group into the annotation's metadata, and type checkers see the plain type."""

    def __init__(self, *items: Any) -> None:
        self.items = items

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


def _fail(message: str, kind: str = "invalid") -> PydanticCustomError:
    return PydanticCustomError(kind, message)


# -- text --------------------------------------------------------------------------------


def check_text(value: str) -> str:
    """Text the database can hold: no NUL and no lone surrogate."""
    if "\x00" in value:
        raise _fail("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail("must be valid Unicode text (no lone surrogates)") from None
    return value


def _text(max_length: int, required: bool) -> Callable[[Any], str]:
    def validate(value: Any) -> str:
        if value is None and required:
            raise _fail("is required", "missing")
        if not isinstance(value, str):
            raise _fail("must be a string")
        check_text(value)
        value = value.strip()
        if required and not value:
            raise _fail("is required", "missing")
        if len(value) > max_length:
            raise _fail(f"must be at most {max_length} characters")
        return value

    return validate


def Text(max_length: int, *, required: bool = True, description: str | None = None) -> Rules:
    """A string of at most ``max_length`` characters (after trimming surrounding blanks);
    ``required`` ones must not be blank."""
    schema: dict[str, Any] = {"type": "string", "maxLength": max_length}
    if required:
        schema["minLength"] = 1
    if description:
        schema["description"] = description
    return Rules(PlainValidator(_text(max_length, required)), WithJsonSchema(schema))


def _pattern_text(rule: re.Pattern[str], problem: str) -> Callable[[Any], str]:
    def validate(value: Any) -> str:
        if value is None:
            raise _fail("is required", "missing")
        if not isinstance(value, str):
            raise _fail("must be a string")
        if not rule.fullmatch(value):
            raise _fail(problem)
        return value

    return validate


# The platform's id for a deployment: addressable in a URL path segment as it is.
ExternalId = Annotated[
    str,
    PlainValidator(
        _pattern_text(
            EXTERNAL_ID_RULE,
            "must be 1 to 128 letters, digits and . _ : - starting with a letter or digit",
        )
    ),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": EXTERNAL_ID_RULE.pattern,
            "minLength": 1,
            "maxLength": 128,
            "description": "1 to 128 characters: ASCII letters, digits and . _ : -, "
            "starting with a letter or digit",
            "examples": ["vm-1"],
        }
    ),
]

IdempotencyKey = re.compile(r"[\x21-\x7e]{1,100}")
IDEMPOTENCY_KEY_SCHEMA = {
    "type": "string",
    "pattern": "^[\\x21-\\x7e]{1,100}$",
    "minLength": 1,
    "maxLength": 100,
}


def idempotency_key() -> str | None:
    """The Idempotency-Key header: 1 to 100 visible ASCII characters, or absent."""
    raw = request.headers.get("Idempotency-Key")
    if raw is None or not raw.strip():
        return None
    key = raw.strip()
    if not IdempotencyKey.fullmatch(key):
        raise ValidationFailed.field("Idempotency-Key", "must be 1 to 100 visible ASCII characters")
    return key


# -- money -------------------------------------------------------------------------------

AMOUNT_TEXT = re.compile(r"[0-9]{1,30}(?:\.[0-9]{1,30})?")


def _amount(value: Any) -> Decimal:
    if value is None or value == "":
        raise _fail("is required", "missing")
    if isinstance(value, bool) or isinstance(value, float):
        raise _fail("must be a number")  # a float only comes from NaN or Infinity
    if isinstance(value, str):
        if not AMOUNT_TEXT.fullmatch(value):
            raise _fail(
                "must be a decimal number written with the digits 0-9 and at most "
                "one decimal point, such as 12.50"
            )
        amount = Decimal(value)
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    else:
        raise _fail("must be a number")
    if not amount.is_finite():
        raise _fail("must be a number")
    if amount <= 0:
        raise _fail("must be greater than 0")
    if amount > MAX_AMOUNT:
        raise _fail(f"must be at most {MAX_AMOUNT_TEXT}")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -4:  # no currency has more than 4 digits
        raise _fail("has too many decimal places")
    return amount


# A positive amount of money in major units; its currency's digits are checked by
# ``to_money`` once the currency is known.
Amount = Annotated[
    Decimal,
    PlainValidator(_amount),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": "^[0-9]{1,30}(\\.[0-9]{1,30})?$"},
                {"type": "number", "exclusiveMinimum": 0, "maximum": int(MAX_AMOUNT)},
            ],
            "description": "Major units, as a JSON number or a string of digits 0-9 with at most one "
            "decimal point, greater than 0, at most 1000000000, with no more decimal "
            "places than the currency has (2 for USD).",
            "examples": ["50.00", 25],
        }
    ),
]


def to_money(amount: Decimal, currency: str, field: str) -> Money:
    """The amount in ``currency``; more decimal places than it has is refused."""
    digits = currency_digits(currency)
    exponent = amount.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    if places > digits:
        raise ValidationFailed.field(
            field,
            f"must be a number with at most {digits} decimal places"
            if digits
            else "must be a whole number",
        )
    return Money.from_decimal(amount, currency)


# -- quantities and counts ---------------------------------------------------------------


def _quantity(maximum: int) -> Callable[[Any], Decimal]:
    def validate(value: Any) -> Decimal:
        if isinstance(value, bool) or isinstance(value, float) or value == "":
            raise _fail("must be a number")
        if isinstance(value, str):
            if not AMOUNT_TEXT.fullmatch(value):
                raise _fail(
                    "must be a number written with the digits 0-9 and at most one decimal point"
                )
            value = Decimal(value)
        elif isinstance(value, int):
            value = Decimal(value)
        if not isinstance(value, Decimal) or not value.is_finite():
            raise _fail("must be a number")
        if value < 0:
            raise _fail("must not be negative")
        if value > maximum:
            raise _fail(f"must be at most {maximum}")
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -3:
            raise _fail("must have at most 3 decimal places")
        return value

    return validate


def Quantity(maximum: int, unit: str) -> Rules:
    """A resource size in whole units (cores, GB) with at most 3 decimal places."""
    return Rules(
        PlainValidator(_quantity(maximum)),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "pattern": "^[0-9]{1,30}(\\.[0-9]{1,30})?$"},
                    {"type": "number", "minimum": 0, "maximum": maximum},
                ],
                "description": f"{unit}, 0 to {maximum}, at most 3 decimal places",
            }
        ),
    )


def _whole(low: int, high: int, *, from_text: bool) -> Callable[[Any], int]:
    def validate(value: Any) -> int:
        if from_text and isinstance(value, str):
            if not re.fullmatch(r"[0-9]+", value):
                raise _fail("must be a whole number")
            if len(value.lstrip("0")) > len(str(high)):
                raise _fail(f"must be at most {high}")
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail("must be a whole number")
        if value < low:
            raise _fail(f"must be at least {low}")
        if value > high:
            raise _fail(f"must be at most {high}")
        return value

    return validate


def Whole(low: int, high: int, *, description: str | None = None) -> Rules:
    """A JSON integer from ``low`` to ``high`` (never a string, a bool or a decimal)."""
    schema: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
    if description:
        schema["description"] = description
    return Rules(PlainValidator(_whole(low, high, from_text=False)), WithJsonSchema(schema))


def QueryWhole(low: int, high: int, *, description: str | None = None) -> Rules:
    """A whole number in a query string (ASCII digits), from ``low`` to ``high``."""
    schema: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
    if description:
        schema["description"] = description
    return Rules(PlainValidator(_whole(low, high, from_text=True)), WithJsonSchema(schema))


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail("must be true or false")
    return value


Flag = Annotated[bool, PlainValidator(_flag), WithJsonSchema({"type": "boolean"})]


# -- users ---------------------------------------------------------------------------------


def _user_ref(value: Any) -> int | str:
    if value is None or value == "":
        raise _fail("is required", "missing")
    if isinstance(value, bool):
        raise _fail("must be a user id or an email address")
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        if len(value.strip().lstrip("0")) > len(str(MAX_ID)):
            raise _fail(f"must be a user id from 1 to {MAX_ID} or an email address")
        value = int(value.strip())
    if isinstance(value, int):
        if not 1 <= value <= MAX_ID:
            raise _fail(f"must be a user id from 1 to {MAX_ID} or an email address")
        return value
    if not isinstance(value, str):
        raise _fail("must be a user id or an email address")
    check_text(value)
    value = value.strip()
    if len(value) > MAX_EMAIL:
        raise _fail(f"must be a user id or an email address (at most {MAX_EMAIL} characters)")
    return value  # not a known email: the lookup answers not found


UserRef = Annotated[
    int | str,
    PlainValidator(_user_ref),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                {"type": "string", "maxLength": MAX_EMAIL},
            ],
            "description": "The user's id, or their email address",
            "examples": ["john@example.com"],
        }
    ),
]


# -- times ---------------------------------------------------------------------------------

DATE_TEXT = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
TIME_TEXT = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2})"
    r"(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
BOUNDS = f"must be between {EARLIEST.isoformat()} and {LATEST.isoformat()}"


def _day(value: str) -> date:
    match = DATE_TEXT.fullmatch(value)
    if not match:
        raise _fail("must be a date like 2026-11-01")
    try:
        day = date(*(int(g) for g in match.groups()))
    except ValueError:
        raise _fail("is not a calendar date") from None
    if not EARLIEST <= day <= LATEST:
        raise _fail(BOUNDS)
    return day


def _instant(through: bool) -> Callable[[Any], datetime]:
    def validate(value: Any) -> datetime:
        if not isinstance(value, str):
            raise _fail("must be an ISO 8601 date or time")
        if len(value) == 10:
            day = _day(value)
            return datetime.combine(
                day + timedelta(days=1 if through else 0), datetime.min.time(), UTC
            )
        match = TIME_TEXT.fullmatch(value)
        if not match:
            if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9:.]+", value):
                raise _fail("must carry a time zone (end it with Z for UTC)")
            raise _fail("must be an ISO 8601 date or time, such as 2026-11-01T08:00:00Z")
        year, month, day_, hour, minute, second, fraction, zone = match.groups()
        try:
            if zone in ("Z", "z"):
                tz = UTC
            else:
                hours, minutes = int(zone[1:3]), int(zone[4:6])
                if hours > 23 or minutes > 59:
                    raise ValueError
                offset = timedelta(hours=hours, minutes=minutes)
                tz = timezone(-offset if zone[0] == "-" else offset)
            parsed = datetime(
                int(year),
                int(month),
                int(day_),
                int(hour),
                int(minute),
                int(second or 0),
                int((fraction or "0")[:6].ljust(6, "0")),
                tz,
            )
        except ValueError:
            raise _fail("is not a valid date and time") from None
        if not EARLIEST <= parsed.date() <= LATEST:
            raise _fail(BOUNDS)
        parsed = parsed.astimezone(UTC)
        if not EARLIEST <= parsed.date() <= LATEST:
            raise _fail(BOUNDS)
        return parsed

    return validate


_INSTANT_SCHEMA = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}]
}
# ISO 8601 with a zone (2026-11-01T08:00:00Z), or a bare date meaning that day's start.
Instant = Annotated[
    datetime,
    PlainValidator(_instant(through=False)),
    WithJsonSchema(
        {
            **_INSTANT_SCHEMA,
            "description": "ISO 8601 time with a zone, or a bare date (its start, "
            "UTC); years 2000 to 2099",
            "examples": ["2026-11-01T08:00:00Z"],
        }
    ),
]
# The same, but a bare date names the whole day: valid through it (the next day's start).
Through = Annotated[
    datetime,
    PlainValidator(_instant(through=True)),
    WithJsonSchema(
        {
            **_INSTANT_SCHEMA,
            "description": "ISO 8601 time with a zone, or a bare date: through "
            "the end of that day (UTC); years 2000 to 2099",
            "examples": ["2030-01-31"],
        }
    ),
]


def _query_day(value: Any) -> date:
    if not isinstance(value, str):
        raise _fail("must be a date like 2026-11-01")
    return _day(value)


Day = Annotated[
    date,
    PlainValidator(_query_day),
    WithJsonSchema(
        {"type": "string", "format": "date", "description": "a date, 2000-01-01 to 2099-12-31"}
    ),
]


def _period(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}", value):
        raise _fail("must look like 2026-11")
    year, month = int(value[:4]), int(value[5:])
    if not 1 <= month <= 12:
        raise _fail("must look like 2026-11 (a month from 01 to 12)")
    if not EARLIEST.year <= year <= LATEST.year:
        raise _fail(f"must be a month from {EARLIEST.year} to {LATEST.year}")
    return value


Period = Annotated[
    str,
    PlainValidator(_period),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^[0-9]{4}-[0-9]{2}$",
            "description": "a billing period by its starting month, YYYY-MM",
            "examples": ["2026-11"],
        }
    ),
]


# -- labels --------------------------------------------------------------------------------


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _fail("must be an object of strings")
    if len(value) > MAX_LABELS:
        raise _fail(f"must have at most {MAX_LABELS} labels")
    for key, text in value.items():
        if not isinstance(key, str) or not LABEL_KEY_RULE.fullmatch(key):
            raise _fail(
                "keys must be 1 to 63 letters, digits and . _ / - : starting with a letter or digit"
            )
        if not isinstance(text, str):
            raise _fail(f"{key} must be a string")
        try:
            check_text(text)
        except PydanticCustomError as exc:
            raise _fail(f"{key} {exc.message()}") from None
        if len(text) > MAX_LABEL_VALUE:
            raise _fail(f"{key} must be at most {MAX_LABEL_VALUE} characters")
    return dict(value)


Labels = Annotated[
    dict[str, str],
    PlainValidator(_labels),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_LABELS,
            "propertyNames": {"pattern": LABEL_KEY_RULE.pattern, "minLength": 1, "maxLength": 63},
            "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE},
            "description": f"at most {MAX_LABELS} labels; keys 1 to 63 letters, digits and . _ / - : "
            f"(starting with a letter or digit), values at most {MAX_LABEL_VALUE} "
            "characters",
            "examples": [{"project": "alpha"}],
        }
    ),
]


def _label_filter(value: Any) -> tuple[str, str]:
    if not isinstance(value, str):
        raise _fail("must look like key=value")
    check_text(value)
    key, sep, wanted = value.partition("=")
    if not sep:
        key, sep, wanted = value.partition(":")
    key, wanted = key.strip(), wanted.strip()
    if not sep or not LABEL_KEY_RULE.fullmatch(key) or len(wanted) > MAX_LABEL_VALUE:
        raise _fail(
            f"must look like key=value (a label key and at most {MAX_LABEL_VALUE} characters)"
        )
    return key, wanted


LabelFilter = Annotated[
    tuple[str, str],
    PlainValidator(_label_filter),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 64 + MAX_LABEL_VALUE,
            "description": "a label, key=value",
            "examples": ["project=alpha"],
        }
    ),
]


# -- reading requests ----------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_json() -> Any:
    """The request body as JSON (whatever its Content-Type: curl -d sends JSON labelled as
    a form); None when it is empty. Numbers with a fraction or exponent are exact Decimals."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return None
    try:
        return json.loads(raw.decode("utf-8"), parse_float=Decimal, parse_constant=_no_constant)
    except RecursionError:
        raise ValidationFailed(
            "the request body nests too deeply", fields={"body": "nests too deeply"}
        ) from None
    except ValueError:  # not UTF-8, not JSON
        raise ValidationFailed(
            "the request body is not valid JSON", fields={"body": "is not valid JSON"}
        ) from None


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], *, optional: bool = False) -> M:
    data = read_json()
    if data is None and optional:
        data = {}
    if not isinstance(data, dict):
        raise ValidationFailed(
            "the request body must be a JSON object", fields={"body": "must be a JSON object"}
        )
    return validate(model, data)


def parse_query(model: type[M]) -> M:
    values: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        name = info.alias or field_name
        given = request.args.getlist(name)
        if len(given) > 1:
            raise ValidationFailed.field(name, "must be given once")
        if given and given[0] != "":  # an empty parameter is an absent one
            values[name] = given[0]
    fields: dict[str, str] = {}
    for name, value in values.items():
        try:
            check_text(value)
        except PydanticCustomError as exc:
            fields[name] = exc.message()
    if fields:
        raise _failed(fields)
    return validate(model, values)


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _failed(translate(exc)) from None
    except RecursionError:
        raise ValidationFailed(
            "the request body nests too deeply", fields={"body": "nests too deeply"}
        ) from None


def _failed(fields: dict[str, str]) -> ValidationFailed:
    first = next(iter(fields.items()))
    message = f"{first[0]} {first[1]}" if first[0] != "body" else first[1]
    if len(fields) > 1:
        message += f" (and {len(fields) - 1} more)"
    return ValidationFailed(message, fields=fields)


# -- pydantic's errors as the project's 422 body --------------------------------------------

_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
    "string_type": "must be a string",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "list_type": "must be a list",
}
MAX_ERROR_FIELDS = 20


def _field_name(loc: tuple[Any, ...]) -> str:
    name = ".".join(str(part) for part in loc) or "body"
    # A field name can come from the client (an unknown key): keep it printable and short.
    name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    name = "".join(ch if ch.isprintable() else "?" for ch in name)
    return name if len(name) <= 64 else name[:61] + "..."


def translate(exc: ValidationError) -> dict[str, str]:
    """{field: human message} from pydantic's errors, first error per field."""
    fields: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        name = _field_name(error["loc"])
        if name in fields:
            continue
        kind = error["type"]
        if kind == "literal_error":
            expected = str(error.get("ctx", {}).get("expected", "")).replace("'", "")
            text = f"must be one of {expected}"
        else:
            text = _MESSAGES.get(kind) or error["msg"]
        fields[name] = text
        if len(fields) >= MAX_ERROR_FIELDS:
            break
    return fields


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: None) -> None: ...
@overload
def iso(value: datetime | None) -> str | None: ...
def iso(value: datetime | None) -> str | None:
    """A time as the API writes it: UTC, to the second, with a Z."""
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

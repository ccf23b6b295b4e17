"""Request parsing for the API: exact decimals, ISO 8601 times, whole-day dates."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import request

from ...money import AmountError, Money
from ...services.errors import ValidationFailed


def json_body() -> dict[str, Any]:
    # Whatever the Content-Type says: the seed's documented `curl -d '{...}'` sends JSON as
    # application/x-www-form-urlencoded.
    data = request.get_json(force=True, silent=True)
    if not isinstance(data, dict):
        raise ValidationFailed("the request body must be a JSON object")
    return data


def required(data: dict[str, Any], name: str) -> Any:
    value = data.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValidationFailed.field(name, "is required")
    return value


def money_field(data: dict[str, Any], name: str, currency: str) -> Money:
    value = required(data, name)
    if isinstance(value, bool):
        raise ValidationFailed.field(name, "must be a number")
    try:
        amount = Money.from_decimal(value, currency)
    except (AmountError, TypeError) as exc:
        raise ValidationFailed.field(name, str(exc) if isinstance(exc, AmountError)
                                     else "must be a number") from None
    if amount.amount_minor <= 0:
        raise ValidationFailed.field(name, "must be greater than 0")
    return amount


def datetime_field(data: dict[str, Any], name: str, *, end_of_day: bool = False
                   ) -> datetime | None:
    """ISO 8601 with a zone, or a bare date: its start, or with ``end_of_day`` the start of
    the next day (a bare date names the whole day, inclusive)."""
    value = data.get(name)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValidationFailed.field(name, "must be an ISO 8601 date or time")
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime.combine(day + timedelta(days=1 if end_of_day else 0),
                                    datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed.field(name, "must be an ISO 8601 date or time") from None
    if parsed.tzinfo is None:
        raise ValidationFailed.field(name, "must carry a time zone (end it with Z for UTC)")
    return parsed.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def page_args() -> tuple[int, int]:
    try:
        page = max(1, int(request.args.get("page", 1)))
        per_page = min(200, max(1, int(request.args.get("per_page", 50))))
    except ValueError:
        raise ValidationFailed("page and per_page must be whole numbers") from None
    return page, per_page

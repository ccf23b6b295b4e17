"""Invoice lines, pure: summed usage in, lines out (one per deployment and resource with
something to bill, each rounded once, ROUND_HALF_UP, in integers, by metering.costs, which
the usage page uses too). No database."""

from __future__ import annotations

import functools
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

from ...money import currency_digits
from ..metering.costs import Usage, round_ratio
from ..metering.usage import LABELS, UNITS


def _decimal(numerator: int, denominator: int, places: int = 6) -> Decimal:
    if denominator == 0:
        return Decimal(0)
    value = (Decimal(numerator) / Decimal(denominator)).quantize(
        Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP
    )
    return value.normalize() if value else Decimal(0)


# When _decimal_text may compute in integers: the exact ROUND_HALF_UP of n/d to 6 places in
# integers gives the same text as _decimal (Decimal's division rounded to 28 significant
# digits, then ROUND_HALF_UP to 6 places, normalized), digit for digit, when either
# - |n| < 10^21 (d > 0): Decimal's division is off by at most |n/d| * 10^-27 / 2, while an
#   n/d that is not itself a half-way point (k + 1/2) * 10^-6 is at least 1 / (2 * 10^6 * d)
#   away from one; |n/d| * 10^-27 / 2 < 1 / (2 * 10^6 * d) is |n| < 10^21, so the division
#   never reaches or crosses a half-way point, and one itself (7 decimals) divides exactly; or
# - d divides 3,600,000 (= 2^7 3^2 5^5) or 10^6 and |n/d| < 10^15: then n/d has at most 7
#   decimals before one digit (0-8) repeats, or ends within 6 decimals, so the division,
#   rounded to 28 significant digits, can never carry into the 7th decimal.
_EXACT_NUMERATORS = 10**21
_INTEGER_DENOMINATORS = frozenset(
    {2**a * 3**b * 5**c for a in range(8) for b in range(3) for c in range(6)}  # | 3.6M
    | {2**a * 5**c for a in range(7) for c in range(7)}
)  # | 10^6


def _decimal_text(numerator: int, denominator: int) -> str:
    """``f"{_decimal(numerator, denominator):f}"``: quantities and unit prices as stored."""
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    if not denominator:
        return "0"
    if numerator % denominator == 0:  # whole hours, whole months
        return str(numerator // denominator)
    if not (
        -_EXACT_NUMERATORS < numerator < _EXACT_NUMERATORS
        or (denominator in _INTEGER_DENOMINATORS and -(10**15) < numerator // denominator < 10**15)
    ):
        return f"{_decimal(numerator, denominator):f}"
    q, r = divmod(abs(numerator) * 1_000_000, denominator)  # |n/d| in micro-units
    if 2 * r >= denominator:
        q += 1
    if q == 0:
        return "0"
    whole, micros = divmod(q, 1_000_000)
    sign = "-" if numerator < 0 else ""
    return f"{sign}{whole}" if not micros else f"{sign}{whole}.{micros:06d}".rstrip("0")


def _unit_price_text(qn: int, qd: int, cn: int, cd: int) -> str:
    """Cost per unit, ``_decimal(cn * qd, cd * qn * 10^6)``; usually one rate all period, so
    the ratio reduces to the rate in micro-units (the same rational, so the same Decimal)."""
    if not qn:
        return "0"
    if qd == cd:
        if cn % qn == 0:
            return _rate_text(cn // qn)
        return _decimal_text(cn, qn * 1_000_000)  # the same rational, with smaller terms
    return _decimal_text(cn * qd, cd * qn * 1_000_000)


@functools.lru_cache(maxsize=1024)
def _rate_text(micros: int) -> str:
    return _decimal_text(micros, 1_000_000)


class LineDraft(NamedTuple):
    """An invoice line as stored (its columns after invoice_id and position)."""

    kind: str
    deployment_id: int | None
    resource: str | None
    description: str  # at most 300 characters
    quantity: str  # exact decimal text
    unit: str
    unit_price: str  # major units, exact decimal text
    amount_minor: int


def build_lines(
    usage_by_deployment: dict[int, Usage], names: dict[int, str], currency: str, kind: str = "usage"
) -> list[LineDraft]:
    """One line per deployment and resource with something to bill, rounded once."""
    if not usage_by_deployment:
        return []
    digits = currency_digits(currency)
    prefix = "Adjustment: " if kind == "adjustment" else ""
    labels, units = LABELS, UNITS
    lines = []
    for dep_id in sorted(usage_by_deployment, key=lambda d: (names.get(d, ""), d)):
        head = f"{prefix}{names.get(dep_id, dep_id)} · "
        for resource, qn, qd, cn, cd in usage_by_deployment[dep_id].resources():
            if qn or cn:
                lines.append(
                    LineDraft(
                        kind,
                        dep_id,
                        resource,
                        (head + labels[resource])[:300],
                        _decimal_text(qn, qd),
                        units[resource],
                        _unit_price_text(qn, qd, cn, cd),
                        round_ratio(cn, cd, digits),
                    )
                )
    return lines

"""Invoice lines, pure: summed usage in, lines out (one per deployment and resource with
something to bill, each rounded once, ROUND_HALF_UP, in integers, by metering.costs, which
the usage page uses too). No database."""

from __future__ import annotations

import functools
from collections import defaultdict
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


# -- plans: fee in advance, proration, overage in arrears ----------------------------------


def _major_text(amount_minor: int, digits: int) -> str:
    return f"{Decimal(amount_minor).scaleb(-digits):f}"


def fee_line(
    plan_name: str, price_minor: int, interval: str, label: str, currency: str
) -> LineDraft:
    """A plan's fee for one period, billed in advance: ``label`` names the period."""
    return LineDraft(
        "fee",
        None,
        None,
        f"{plan_name} plan · {label}"[:300],
        "1",
        interval,
        _major_text(price_minor, currency_digits(currency)),
        price_minor,
    )


def share_minor(price_minor: int, seconds: int, total_seconds: int) -> int:
    """``price * seconds / total`` rounded once, ROUND_HALF_UP, in integers."""
    if total_seconds <= 0:
        raise ValueError("a period has a length")
    num, den = price_minor * seconds, total_seconds
    return (2 * num + den) // (2 * den) if num >= 0 else -((-2 * num + den) // (2 * den))


class Proration(NamedTuple):
    """A plan change at ``seconds_left`` of a ``seconds_total`` period: what is credited for
    the old plan's unused time, what the new plan costs for the rest, and the difference."""

    seconds_left: int
    seconds_total: int
    credit_minor: int  # unused time of the old plan (0 when there was none)
    charge_minor: int  # the new plan for the rest of the period
    due_minor: int  # charge - credit


def prorate(
    old_price_minor: int, new_price_minor: int, seconds_left: int, seconds_total: int
) -> Proration:
    """Exact seconds left in the period; each of the two amounts rounded once."""
    if not 0 <= seconds_left <= seconds_total:
        raise ValueError("the change lies inside the period")
    credit = share_minor(old_price_minor, seconds_left, seconds_total)
    charge = share_minor(new_price_minor, seconds_left, seconds_total)
    return Proration(seconds_left, seconds_total, credit, charge, charge - credit)


def proration_lines(
    old_name: str | None,
    new_name: str,
    proration: Proration,
    label: str,
    currency: str,
) -> list[LineDraft]:
    """The change invoice's lines: the credit for the old plan's unused time (a negative
    line) and the charge for the new plan's rest of the period."""
    digits = currency_digits(currency)
    days = _decimal_text(proration.seconds_left, 86400)
    lines = []
    if old_name is not None and proration.credit_minor:
        lines.append(
            LineDraft(
                "proration",
                None,
                None,
                f"Unused time on {old_name} plan · {label}"[:300],
                days,
                "days",
                _major_text(-proration.credit_minor, digits),
                -proration.credit_minor,
            )
        )
    lines.append(
        LineDraft(
            "proration",
            None,
            None,
            f"Remaining time on {new_name} plan · {label}"[:300],
            days,
            "days",
            _major_text(proration.charge_minor, digits),
            proration.charge_minor,
        )
    )
    return lines


# An allocation segment: [start, end) in Unix seconds and the milli-units allocated.
Segment = tuple[int, int, int]
# The plan's limit from a time on: (from, limit in milli-units); sorted by time.
LimitStep = tuple[int, int]


def excess_milli_seconds(
    segments: list[Segment], limits: list[LimitStep], start: int, end: int
) -> int:
    """The integral over [start, end) of max(0, allocated - limit), in milli-unit seconds:
    the deployments' allocations add up (they run at once), the limit follows the plan held
    at each instant."""
    points = {start, end}
    deltas: dict[int, int] = defaultdict(int)
    for s, e, milli in segments:
        s, e = max(s, start), min(e, end)
        if s >= e or not milli:
            continue
        deltas[s] += milli
        deltas[e] -= milli
        points.update((s, e))
    for at, _ in limits:
        if start < at < end:
            points.add(at)
    total, allocated, limit, li = 0, 0, 0, 0
    ordered = sorted(points)
    for i, at in enumerate(ordered[:-1]):
        allocated += deltas.get(at, 0)
        while li < len(limits) and limits[li][0] <= at:
            limit = limits[li][1]
            li += 1
        if allocated > limit:
            total += (allocated - limit) * (ordered[i + 1] - at)
    return total


# Seconds per priced unit of time: CPU and memory per hour; storage per month (its length).
def overage_line(
    resource: str,
    excess_ms: int,
    rate_micros: int,
    unit_seconds: int,
    currency: str,
) -> LineDraft | None:
    """``excess_ms`` milli-unit seconds above the limit at ``rate_micros`` per unit and
    ``unit_seconds``: one line, rounded once; None when there is no excess."""
    if excess_ms <= 0:
        return None
    den = 1000 * unit_seconds
    amount = round_ratio(excess_ms * rate_micros, den, currency_digits(currency))
    return LineDraft(
        "overage",
        None,
        resource,
        f"Overage · {LABELS[resource]} above the plan's limit"[:300],
        _decimal_text(excess_ms, den),
        UNITS[resource],
        _rate_text(rate_micros),
        amount,
    )

"""Usage costs in integers, pure: a deployment's summed rollup columns and the one rounding
from exact micro-units to minor units. The usage page, the usage API and the invoice lines
all compute money here, so a closed period's usage total is its invoice subtotal."""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass, field
from fractions import Fraction

from ...money import currency_digits


def round_ratio(numerator: int, denominator: int, digits: int) -> int:
    """numerator/denominator micro-units in minor units, ROUND_HALF_UP, in integers."""
    num = numerator * 10**digits
    den = denominator * 1_000_000
    if num >= 0:
        return (2 * num + den) // (2 * den)  # floor(x + 1/2): halves go up
    return -((-2 * num + den) // (2 * den))  # and away from zero below it


def micros_to_minor(micros: Fraction, currency: str) -> int:
    """Exact micro-units to the currency's minor units, once, ROUND_HALF_UP."""
    return round_ratio(micros.numerator, micros.denominator, currency_digits(currency))


@functools.lru_cache(maxsize=256)
def month_ms(year: int, month: int) -> int:
    return 1000 * calendar.monthrange(year, month)[1] * 86400


@dataclass(slots=True)
class Usage:
    """Summed rollup columns of one deployment in one period. Storage is kept per calendar
    month, because a GB-month is priced against the length of its month."""

    cpu_ms: int = 0
    cpu_cost: int = 0
    memory_ms: int = 0
    memory_cost: int = 0
    storage: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (y, m) -> [ms, cost]
    instance_s: int = 0
    instance_cost: int = 0
    ip_s: int = 0
    ip_cost: int = 0

    def add_row(self, row) -> None:
        """Add one day's rollup row (a UsageDaily) of this deployment."""
        self.cpu_ms += row.cpu_ms
        self.cpu_cost += row.cpu_cost
        self.memory_ms += row.memory_ms
        self.memory_cost += row.memory_cost
        if row.storage_ms or row.storage_cost:
            month = self.storage.setdefault((row.day.year, row.day.month), [0, 0])
            month[0] += row.storage_ms
            month[1] += row.storage_cost
        self.instance_s += row.instance_s
        self.instance_cost += row.instance_cost
        self.ip_s += row.ip_s
        self.ip_cost += row.ip_cost

    def resources(self) -> list[tuple[str, int, int, int, int]]:
        """(resource, quantity num, quantity den, cost num, cost den) in units and micros."""
        out = [
            ("cpu", self.cpu_ms, 3_600_000, self.cpu_cost, 3_600_000),
            ("memory", self.memory_ms, 3_600_000, self.memory_cost, 3_600_000),
        ]
        if self.storage:
            # Sum a/da + b/db exactly over a common denominator.
            qn, cn, den = 0, 0, 1
            for (y, m), (ms, cost) in sorted(self.storage.items()):
                d = month_ms(y, m)
                qn, cn, den = qn * d + ms * den, cn * d + cost * den, den * d
            out.append(("storage", qn, den, cn, den))
        out += [
            ("instance", self.instance_s, 3600, self.instance_cost, 3600),
            ("ip", self.ip_s, 3600, self.ip_cost, 3600),
        ]
        return out

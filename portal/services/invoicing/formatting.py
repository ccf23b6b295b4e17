"""Money as invoices show it, fast: an invoice run formats every line of every invoice."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from ...money import Money, currency_digits, format_money


@functools.lru_cache(maxsize=64)
def money_formatter(currency: str, locale: str) -> Callable[[int], str]:
    """``format_money`` for amounts in minor units, without Babel's cost per call (an invoice
    run formats every line): the prefix, suffix, separators and grouping are read off Babel's
    own output once, and used only if they give Babel's text for a spread of amounts;
    otherwise (a pattern this does not model) Babel formats every amount."""

    def babel(minor: int) -> str:
        return format_money(Money(minor, currency), locale)

    try:
        fast = _derivemoney_formatter(babel, currency_digits(currency))
    except ValueError:
        return babel
    rng = random.Random(20261101)
    samples = [0, 1, -1, 5, -5, 50, 99, 100, 101, -100, 999, 1000, 1001]
    samples += [
        sign * (10**k + delta) for k in range(1, 17) for delta in (-1, 0, 7) for sign in (1, -1)
    ]
    samples += [
        rng.randrange(-(10 ** rng.randrange(1, 16)), 10 ** rng.randrange(1, 16)) for _ in range(300)
    ]
    return fast if all(fast(m) == babel(m) for m in samples) else babel


def _derivemoney_formatter(babel: Callable[[int], str], digits: int) -> Callable[[int], str]:
    whole_digits = "9876543210987"
    probe = int(whole_digits + "123456789"[:digits])

    def parts(text: str) -> tuple[str, str, list[str], list[str]]:
        at = [i for i, c in enumerate(text) if c in "0123456789"]
        if not at:
            raise ValueError(text)
        body = text[at[0] : at[-1] + 1]
        runs, seps, current, sep = [], [], "", ""
        for c in body:
            if c in "0123456789":
                if sep:
                    seps.append(sep)
                    runs.append(current)
                    current, sep = "", ""
                current += c
            else:
                sep += c
        runs.append(current)
        return text[: at[0]], text[at[-1] + 1 :], runs, seps

    pos_prefix, pos_suffix, runs, seps = parts(babel(probe))
    neg_prefix, neg_suffix, neg_runs, neg_seps = parts(babel(-probe))
    if (runs, seps) != (neg_runs, neg_seps) or "".join(runs) != str(probe):
        raise ValueError("unexpected layout")
    decimal_symbol = ""
    if digits:
        if len(runs) < 2 or len(runs[-1]) != digits:
            raise ValueError("unexpected fraction")
        decimal_symbol = seps.pop()
        runs.pop()
    group_symbol = seps[0] if seps else ""
    if any(sep != group_symbol for sep in seps):
        raise ValueError("mixed group separators")
    primary = len(runs[-1])
    secondary = len(runs[-2]) if len(runs) > 2 else primary
    scale = 10**digits
    fractions = [f"{decimal_symbol}{n:0{digits}d}" for n in range(scale)] if digits else [""]

    def group(number: int) -> str:
        text = str(number)
        if len(text) <= primary:
            return text
        out = [text[-primary:]]
        text = text[:-primary]
        while len(text) > secondary:
            out.append(text[-secondary:])
            text = text[:-secondary]
        out.append(text)
        return group_symbol.join(reversed(out))

    if not group_symbol:
        group = "{}".format
    elif primary == secondary == 3:  # as Python groups: "{:,}"
        group = (
            "{:,}".format
            if group_symbol == ","
            else (lambda number: f"{number:,}".replace(",", group_symbol))
        )

    def fast(minor: int) -> str:
        if minor < 0:
            whole, fraction = divmod(-minor, scale)
            return f"{neg_prefix}{group(whole)}{fractions[fraction]}{neg_suffix}"
        whole, fraction = divmod(minor, scale)
        return f"{pos_prefix}{group(whole)}{fractions[fraction]}{pos_suffix}"

    return fast


def major_text(minor: int, currency: str) -> str:
    """``str(Money(minor, currency).amount)``: "27.20"."""
    digits = currency_digits(currency)
    if not digits:
        return str(minor)
    whole, fraction = divmod(abs(minor), 10**digits)
    return f"{'-' if minor < 0 else ''}{whole}.{fraction:0{digits}d}"

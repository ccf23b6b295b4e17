"""The pure parts: proration to the cent, overage above limits, the fee line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.services.invoicing import lines

HOUR = 3600


def test_prorate_day_10_of_30_by_hand():
    # Pro $29.99 -> Enterprise $99.99 with 20 of 30 days left:
    # credit 29.99 x 20/30 = 19.9933.. -> 19.99; charge 99.99 x 20/30 = 66.66 -> 66.66
    p = lines.prorate(2999, 9999, 20 * 86400, 30 * 86400)
    assert (p.credit_minor, p.charge_minor, p.due_minor) == (1999, 6666, 4667)


def test_prorate_rounds_half_up_once_per_line():
    # 1 cent x 1/2 = 0.5 -> 1 (half up); 3 cents x 1/2 = 1.5 -> 2
    assert lines.prorate(1, 3, 1, 2)[2:] == (1, 2, 1)


@pytest.mark.parametrize("left", [0, 30 * 86400])
def test_prorate_boundaries(left):
    p = lines.prorate(2999, 9999, left, 30 * 86400)
    if left == 0:
        assert (p.credit_minor, p.charge_minor, p.due_minor) == (0, 0, 0)
    else:
        assert (p.credit_minor, p.charge_minor, p.due_minor) == (2999, 9999, 7000)


def test_prorate_refuses_a_time_outside_the_period():
    with pytest.raises(ValueError):
        lines.prorate(1, 2, 31, 30)


@given(
    old=st.integers(0, 10**9),
    new=st.integers(0, 10**9),
    total=st.integers(1, 400 * 86400),
    data=st.data(),
)
def test_prorated_amounts_are_exact_shares_rounded_once(old, new, total, data):
    left = data.draw(st.integers(0, total))
    p = lines.prorate(old, new, left, total)
    # each amount is within half a cent of the exact share, and never more than the price
    assert abs(p.credit_minor * total - old * left) * 2 <= total
    assert abs(p.charge_minor * total - new * left) * 2 <= total
    assert 0 <= p.credit_minor <= old and 0 <= p.charge_minor <= new
    assert p.due_minor == p.charge_minor - p.credit_minor
    # the lines of the change's invoice add up to what is due
    drafts = lines.proration_lines("Pro", "Enterprise", p, "label", "USD")
    assert sum(d.amount_minor for d in drafts) == p.due_minor


def test_the_seed_pro_overage_example_is_ten_cents():
    # Pro includes 8 cores; 10 cores for one hour is 2 core-hours over, at $0.05: $0.10
    excess = lines.excess_milli_seconds([(0, HOUR, 10_000)], [(0, 8_000)], 0, 10 * HOUR)
    assert excess == 2_000 * HOUR
    line = lines.overage_line("cpu", excess, 50_000, HOUR, "USD")
    assert line.amount_minor == 10
    assert (line.quantity, line.unit, line.unit_price) == ("2", "core-hours", "0.05")


def test_allocations_add_up_and_limits_follow_the_plan_held():
    segments = [(0, 4 * HOUR, 6_000), (HOUR, 3 * HOUR, 6_000)]  # 12 cores from 1h to 3h
    # limit 8 until 2h, then 32 (an upgrade): 4 cores over for one hour
    steps = [(0, 8_000), (2 * HOUR, 32_000)]
    assert lines.excess_milli_seconds(segments, steps, 0, 4 * HOUR) == 4_000 * HOUR
    # clipped to the period
    assert lines.excess_milli_seconds(segments, [(0, 8_000)], 0, 2 * HOUR) == 4_000 * HOUR
    assert lines.overage_line("cpu", 0, 50_000, HOUR, "USD") is None


def test_the_fee_line():
    line = lines.fee_line("Professional", 2999, "month", "2026-12-01 to 2026-12-31", "USD")
    assert line.amount_minor == 2999
    assert line.unit_price == "29.99"
    assert line.description == "Professional plan · 2026-12-01 to 2026-12-31"


@given(
    segments=st.lists(
        st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(0, 5_000)), max_size=6
    ),
    limits=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8_000)), max_size=4),
)
def test_excess_equals_a_second_by_second_count(segments, limits):
    segments = [(min(a, b), max(a, b), m) for a, b, m in segments]
    steps = sorted([(0, 2_000), *limits])

    def limit_at(t):
        return [v for at, v in steps if at <= t][-1]

    brute = sum(
        max(0, sum(m for s, e, m in segments if s <= t < e) - limit_at(t)) for t in range(10, 50)
    )
    assert lines.excess_milli_seconds(segments, steps, 10, 50) == brute

"""The study's decision rule (fedlora.decide) against scipy's paired t-test and hand-worked cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedlora import decide

accuracies = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(accuracies, accuracies), min_size=2, max_size=8))
def test_interval_is_scipys_paired_t_interval(pairs):
    a = {seed: x for seed, (x, _) in enumerate(pairs)}
    b = {seed: y for seed, (_, y) in enumerate(pairs)}
    gap = decide.paired_gap(a, b)
    xs, ys = zip(*pairs, strict=True)
    assert gap.n == len(pairs)
    assert gap.mean == pytest.approx(sum(xs) / len(xs) - sum(ys) / len(ys), abs=1e-12)
    if len({round(x - y, 12) for x, y in pairs}) > 1:  # scipy's interval is nan for zero spread
        reference = stats.ttest_rel(xs, ys).confidence_interval(0.95)
        assert (gap.low, gap.high) == pytest.approx((reference.low, reference.high), abs=1e-9)


def test_hand_worked_interval_and_pairing_by_seed():
    # gaps 0.02, 0.04, 0.06 on seeds 0..2 (seed 3 only in a: ignored); mean 0.04, sd 0.02, t_{0.975,2} = 4.3027
    a = {0: 0.52, 1: 0.54, 2: 0.56, 3: 0.99}
    b = {2: 0.50, 0: 0.50, 1: 0.50}
    gap = decide.paired_gap(a, b)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert (gap.n, gap.mean) == (3, pytest.approx(0.04))
    assert (gap.low, gap.high) == (pytest.approx(0.04 - half), pytest.approx(0.04 + half))
    # every seed favours a, yet three seeds leave the interval (−0.010, 0.090) across zero and past the margin
    assert decide.verdict(gap) == "undecided"


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.001, 0.05, "A better"),
        (-0.05, -0.001, "B better"),
        (-0.019, 0.019, "no difference"),
        (-0.021, 0.01, "undecided"),
        (-0.01, 0.03, "undecided"),
    ],
)
def test_verdicts(low, high, expected):
    assert decide.verdict(decide.PairedGap((low + high) / 2, low, high, 3), margin=0.02) == expected


def test_fewer_than_two_shared_seeds_decide_nothing():
    assert decide.paired_gap({0: 0.5, 1: 0.6}, {1: 0.4, 2: 0.3}) is None


def test_last_quarter_change_reads_the_evaluation_at_three_quarters():
    curve = [(0, 0.40), (10, 0.60), (20, 0.64), (30, 0.66), (40, 0.67)]
    assert decide.last_quarter_change(curve, 40) == pytest.approx(0.01)  # 0.67 − value at round 30
    assert decide.last_quarter_change([(0, 0.4), (5, 0.5), (35, 0.6), (40, 0.62)], 40) == pytest.approx(0.12)
    assert decide.last_quarter_change(curve[:-1], 40) is None  # unfinished run
    assert decide.flattened(0.009) and not decide.flattened(0.011)


def test_last_quarter_mean_averages_rounds_from_three_quarters_on():
    curve = [(0, 0.40), (8, 0.55), (16, 0.60), (24, 0.62), (28, 0.58), (32, 0.66)]
    assert decide.last_quarter_mean(curve, 32) == pytest.approx((0.62 + 0.58 + 0.66) / 3)
    assert decide.last_quarter_mean(curve[:-1], 32) is None

"""The study's decision rule: paired gaps between two methods over seeds, a 95% t-interval, and a verdict.

Stated before any result was looked at (issue 15), and used by ``benchmarks/reproduce.py``:

* A run's accuracy is the **mean of its evaluations in the last quarter** of the rounds (rounds ≥ ⌈3R/4⌉), so
  that one round's drift (non-IID clients sampled that round) does not decide; the last evaluation is reported too.
* Two methods are compared **paired by seed** (a seed fixes the data subset, the held-out set, the partition, the
  sampled clients and the training randomness): gap_s = metric_A(s) − metric_B(s), one per seed.
* The interval is the two-sided 95% Student-t interval of the mean gap over the n seeds,
  mean ± t_{0.975, n−1} · sd / √n (sd the sample standard deviation, n − 1).
* "A better than B" **holds** when the whole interval is above zero, **fails** when it is below zero (B better);
  "no difference" is declared only when the whole interval lies inside the equivalence margin (−m, +m); otherwise
  the comparison is **undecided** at this number of seeds.
* A curve has **flattened** when the change of the method's mean over seeds across the last quarter of the rounds
  (the last evaluation minus the evaluation at or before round ⌈3R/4⌉) is smaller in magnitude than the margin
  divided by two.

Pure functions on floats; no torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95
"""Two-sided level of the interval."""
MARGIN = 0.02
"""Equivalence margin on accuracy (a fraction: 0.02 = 2 points)."""


@dataclass(frozen=True)
class PairedGap:
    """The mean of per-seed gaps A − B with its two-sided t-interval."""

    mean: float
    low: float
    high: float
    n: int
    """Seeds both methods have."""


def paired_gap(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> PairedGap | None:
    """Mean of a[s] − b[s] over the seeds both have, with its Student-t interval; None with fewer than 2 seeds."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    gaps = [a[s] - b[s] for s in seeds]
    n = len(gaps)
    mean = sum(gaps) / n
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return PairedGap(mean, mean - half, mean + half, n)


def verdict(gap: PairedGap, margin: float = MARGIN) -> str:
    """ "A better" / "B better" when the interval excludes zero, "no difference" when it lies inside ±margin,
    else "undecided"."""
    if gap.low > 0:
        return "A better"
    if gap.high < 0:
        return "B better"
    if -margin < gap.low and gap.high < margin:
        return "no difference"
    return "undecided"


def last_quarter_change(curve: Sequence[tuple[int, float]], rounds: int) -> float | None:
    """The curve's last value minus its value at the last evaluated round ≤ ⌈3·rounds/4⌉; None when it has no
    point that early or its last point is not at ``rounds``. ``curve`` is (round, value), sorted by round."""
    if not curve or curve[-1][0] != rounds:
        return None
    cut = math.ceil(3 * rounds / 4)
    earlier = [value for r, value in curve if r <= cut]
    return curve[-1][1] - earlier[-1] if earlier else None


def last_quarter_mean(curve: Sequence[tuple[int, float]], rounds: int) -> float | None:
    """Mean of the curve's values at rounds ≥ ⌈3·rounds/4⌉; None unless its last point is at ``rounds``."""
    if not curve or curve[-1][0] != rounds:
        return None
    values = [value for r, value in curve if r >= math.ceil(3 * rounds / 4)]
    return sum(values) / len(values)


def flattened(change: float, margin: float = MARGIN) -> bool:
    """Whether a curve's last-quarter change (of the mean over seeds) is below half the equivalence margin."""
    return abs(change) < margin / 2


__all__ = [
    "CONFIDENCE",
    "MARGIN",
    "PairedGap",
    "flattened",
    "last_quarter_change",
    "last_quarter_mean",
    "paired_gap",
    "verdict",
]

"""Drawn budgets: each distribution's sample moments against its definition, computed independently (scipy's
distributions, or the exact formula), with tolerances stated per test."""

import math

import numpy as np
import pytest
from scipy import stats

from fedlora.budgets import DISTRIBUTIONS, draw_budgets

N = 20_000  # draws per check: the standard error of a mean is ≈ σ/141


def _draw(distribution, a, b, seed=0):
    return np.array(draw_budgets(N, a, b, distribution, seed))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_budgets_are_integers_in_range_and_seeded(distribution):
    values = draw_budgets(500, 4, 64, distribution, seed=7)
    assert all(isinstance(v, int) and 4 <= v <= 64 for v in values)
    assert values == draw_budgets(500, 4, 64, distribution, seed=7)
    assert values != draw_budgets(500, 4, 64, distribution, seed=8)


def test_uniform_moments():
    x = _draw("uniform", 4, 64)
    assert x.mean() == pytest.approx(34.0, abs=0.4)  # mean (a+b)/2; SE ≈ 0.12
    assert x.var() == pytest.approx(((64 - 4 + 1) ** 2 - 1) / 12, rel=0.03)  # discrete uniform variance


def _clipped_rounded_normal_moments(mu, sigma, a, b):
    """Mean and std of clip(round(N(mu, sigma)), a, b), by summing the exact probabilities of each integer."""
    ks = np.arange(a, b + 1)
    upper = np.where(ks == b, np.inf, ks + 0.5)
    lower = np.where(ks == a, -np.inf, ks - 0.5)
    p = stats.norm.cdf(upper, mu, sigma) - stats.norm.cdf(lower, mu, sigma)
    mean = (p * ks).sum()
    return mean, math.sqrt((p * (ks - mean) ** 2).sum())


@pytest.mark.parametrize(("distribution", "divisor"), [("fslora_normal", 6), ("normal", 4)])
def test_normal_moments(distribution, divisor):
    """fslora_normal: N((a+b)/2, (b−a)/6), generate_ranks in src/main.py of the FSLoRA code; normal: σ = (b−a)/4."""
    a, b = 1, 32
    x = _draw(distribution, a, b)
    mean, std = _clipped_rounded_normal_moments((a + b) / 2, (b - a) / divisor, a, b)
    assert x.mean() == pytest.approx(mean, abs=0.15)  # SE ≈ 0.04–0.06
    assert x.std() == pytest.approx(std, rel=0.03)
    # the two shapes are told apart: their spreads differ by far more than the tolerance
    other = (b - a) / (4 if divisor == 6 else 6)
    assert abs(x.std() - other) > 0.2 * std


def test_fslora_heavy_tail_is_a_rescaled_inverse_lognormal():
    """s = 1/X, X ~ LogNormal(ln((a+b)/4), 1), min-max rescaled to [a, b]: after undoing the rescale with the sample's
    own extremes, ln(1/s) is normal with mean ln((a+b)/4) and std 1 (shape checked by Kolmogorov–Smirnov)."""
    a, b = 1, 32
    x = _draw("fslora_heavy_tail", a, b, seed=3)
    assert x.min() == a and x.max() == b
    # most clients small: the median sits in the lowest tenth of the range, the mean well below the midpoint
    assert np.median(x) <= a + (b - a) / 10 and x.mean() < (a + b) / 4
    # the same draw before rounding, regenerated with the generator the function uses
    rng = np.random.default_rng(3)
    s = 1.0 / rng.lognormal(math.log((a + b) / 4), 1.0, size=N)
    rescaled = a + (s - s.min()) / (s.max() - s.min()) * (b - a)
    assert np.array_equal(np.rint(rescaled).astype(int), x)
    log_x = -np.log(s)
    assert stats.kstest(log_x, "norm", args=(math.log((a + b) / 4), 1.0)).pvalue > 0.001
    assert log_x.std() == pytest.approx(1.0, abs=0.03)


def test_pareto_heavy_tail_moments():
    """heavy_tail: floor(a·(1 + Pareto(1.5))) clipped at b: P(k ≥ a·t) = t^(−1.5) for t ≥ 1 below the clip."""
    a, b = 4, 64
    x = _draw("heavy_tail", a, b, seed=5)
    for t in (2, 4, 8):
        assert (x >= a * t).mean() == pytest.approx(t**-1.5, abs=0.01)  # SE ≤ 0.0035

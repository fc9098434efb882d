"""Pure helpers of the wall-clock study (``benchmarks/wallclock.py``): smoothing, time to target, the target rule,
the rounds model's R0 / θ fit, and the paired speed-up interval. Plain floats, no torch, no I/O.

The rounds model is the planner's (docs/planner.md, ``fedlora.network.planner.predicted_rounds``):

    R(k, q) = R0·(1 + θ·V(k, q)) / s(k),   V = Σ_i a_i² ρ_i (r / (k_i q_i) − 1),   s = Σ_i a_i (k_i / r)^β

with a_i the aggregation weights, ρ_i and β measured by ``fedlora plan``'s pilot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def smooth(values: Sequence[float], window: int = 3) -> list[float]:
    """Trailing moving average: point j is the mean of values[max(0, j − window + 1) .. j] (fewer at the start)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window!r}")
    out = []
    for j in range(len(values)):
        part = values[max(0, j - window + 1) : j + 1]
        out.append(sum(part) / len(part))
    return out


def first_crossing(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """First x at which the piecewise-linear curve (xs, ys) reaches ys ≤ target, or None if it never does.

    Linear interpolation between the last point above the target and the first at or below it; the first point
    itself when it is already at or below."""
    if len(xs) != len(ys):
        raise ValueError(f"xs has {len(xs)} points but ys has {len(ys)}")
    for j, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if y <= target:
            if j == 0:
                return float(x)
            x0, y0 = xs[j - 1], ys[j - 1]
            return float(x0 + (y0 - target) / (y0 - y) * (x - x0))
    return None


def target_loss(curves: Sequence[Sequence[float]], fraction: float) -> float:
    """The study's target: ``fraction`` of the way from L0 to L*, where L* = the highest of the curves' lowest
    (smoothed) losses and L0 = the lowest of their first points (the initial held-out loss). Every curve reaches it
    (fraction ≤ 1); when no curve improves (L* ≥ L0) it is L*."""
    if not curves or any(len(c) == 0 for c in curves):
        raise ValueError("target_loss needs at least one non-empty curve")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    worst_best = max(min(c) for c in curves)
    initial = min(c[0] for c in curves)
    if worst_best >= initial:
        return worst_best
    return initial - fraction * (initial - worst_best)


def variance_term(
    weights: Sequence[float], spread: Sequence[float], k: Sequence[float], q: Sequence[float], rank: int
) -> float:
    """V(k, q) = Σ_i a_i² ρ_i (r / (k_i q_i) − 1)."""
    return sum(a * a * p * (rank / (ki * qi) - 1) for a, p, ki, qi in zip(weights, spread, k, q, strict=True))


def step_fraction(weights: Sequence[float], k: Sequence[float], rank: int, beta: float) -> float:
    """s(k) = Σ_i a_i (k_i / r)^β with the weights normalised to sum 1 (1 at k = r, and for every k when β = 0)."""
    total = sum(weights)
    return sum(a / total * (ki / rank) ** beta for a, ki in zip(weights, k, strict=True))


def predicted_rounds(r0: float, theta: float, variance: float, fraction: float) -> float:
    """R = R0·(1 + θ·V) / s."""
    return r0 * (1 + theta * variance) / fraction


def fit_rounds_model(
    variances: Sequence[float], fractions: Sequence[float], rounds: Sequence[float]
) -> tuple[float, float]:
    """(R0, θ) from measured rounds-to-target R_j of runs with known V_j and s_j.

    R_j·s_j = R0 + (R0·θ)·V_j is linear in V: least squares of y_j = R_j·s_j on V_j (exact for two runs), then
    θ = slope / R0. A negative slope (more variance, fewer rounds: the model's variance term cannot explain it) is
    clipped to θ = 0 with R0 = mean(y). Needs at least two runs with different V."""
    if not len(variances) == len(fractions) == len(rounds):
        raise ValueError("variances, fractions and rounds must have the same length")
    if len(variances) < 2 or max(variances) - min(variances) <= 1e-12 * max(1.0, abs(max(variances))):
        raise ValueError("fit_rounds_model needs at least two runs with different variance terms V")
    ys = [r * s for r, s in zip(rounds, fractions, strict=True)]
    mv, my = sum(variances) / len(variances), sum(ys) / len(ys)
    slope = sum((v - mv) * (y - my) for v, y in zip(variances, ys, strict=True)) / sum((v - mv) ** 2 for v in variances)
    r0 = my - slope * mv
    if slope < 0 or r0 <= 0:
        return my, 0.0
    return r0, slope / r0


def fit_from_sampling_pair(
    variances: tuple[float, float], rounds: tuple[float, float], variance_full: float, rounds_full_k: float
) -> tuple[float, float]:
    """(R0, θ) from two uniform runs at the same k that differ only in how many clients a round samples, and the
    run at k = r.

    At one k, R_j = (R0 / s(k))·(1 + θ·V_j): s(k) and β cancel in the ratio R_a / R_b, so
    θ = (R_a − R_b) / (R_b·V_a − R_a·V_b), unclipped (a negative θ is a measurement: more variance, fewer
    rounds). R0 then comes from the run at k = r, where s = 1 for every β: R0 = R_r / (1 + θ·V_r)."""
    (va, vb), (ra, rb) = variances, rounds
    denominator = rb * va - ra * vb
    if abs(va - vb) <= 1e-12 * max(1.0, abs(va)) or denominator == 0:
        raise ValueError("the two runs must differ in their variance terms V")
    theta = (ra - rb) / denominator
    factor = 1 + theta * variance_full
    if factor <= 0:
        raise ValueError(f"θ = {theta:.4g} makes the k = r run's variance factor non-positive ({factor:.4g})")
    return rounds_full_k / factor, theta


def fit_rank_exponent(
    r0: float, theta: float, ratios: Sequence[float], variances: Sequence[float], rounds: Sequence[float]
) -> float:
    """β from uniform runs at k_j = ratios_j·r (0 < ratio < 1) with measured rounds R_j, given R0 and θ.

    With every client at the same k, s(k) = (k / r)^β, so each run asks s_j = R0·(1 + θ·V_j) / R_j and
    ln s_j = β·ln x_j: least squares through the origin, β = Σ ln s_j ln x_j / Σ (ln x_j)²."""
    if not len(ratios) == len(variances) == len(rounds) or not ratios:
        raise ValueError("ratios, variances and rounds must be non-empty and of the same length")
    if any(not 0 < x < 1 for x in ratios):
        raise ValueError(f"every k / r must lie in (0, 1), got {list(ratios)!r}")
    logs_x = [math.log(x) for x in ratios]
    logs_s = [math.log(r0 * (1 + theta * v) / rj) for v, rj in zip(variances, rounds, strict=True)]
    return sum(a * b for a, b in zip(logs_s, logs_x, strict=True)) / sum(a * a for a in logs_x)


def log_ratio_interval(ratios: Sequence[float]) -> tuple[float, float, float]:
    """(geometric mean, low, high): the 95 % Student-t interval of the mean log ratio over paired seeds,
    exponentiated. With one ratio the interval is (nan, nan)."""
    if not ratios or any(not r > 0 for r in ratios):
        raise ValueError(f"ratios must be positive, got {list(ratios)!r}")
    logs = [math.log(r) for r in ratios]
    n = len(logs)
    mean = sum(logs) / n
    if n == 1:
        return math.exp(mean), math.nan, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)

"""Per-client FSLoRA budgets k_i, given or drawn once per run (as in the FSLoRA paper's heterogeneity study)."""

from __future__ import annotations

import numpy as np


def draw_budgets(num_clients: int, k_min: int, k_max: int, distribution: str, seed: int) -> list[int]:
    """``num_clients`` integer budgets in [k_min, k_max].

    uniform: every integer equally likely. normal: mean (k_min+k_max)/2, std (k_max−k_min)/4, rounded and
    clipped. heavy_tail: Pareto (shape 1.5) scaled by k_min and clipped at k_max: most clients small, a few large.
    """
    if not 1 <= k_min <= k_max:
        raise ValueError(f"budgets need 1 <= k_min <= k_max, got {k_min}, {k_max}")
    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        values = rng.integers(k_min, k_max + 1, size=num_clients)
    elif distribution == "normal":
        values = np.rint(rng.normal((k_min + k_max) / 2, max((k_max - k_min) / 4, 1e-9), size=num_clients))
    elif distribution == "heavy_tail":
        values = np.floor(k_min * (1 + rng.pareto(1.5, size=num_clients)))
    else:
        raise ValueError(f"unknown budget distribution {distribution!r}")
    return [int(v) for v in np.clip(values, k_min, k_max)]

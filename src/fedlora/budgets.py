"""Per-client budgets k_i (FSLoRA sketch sizes, or client ranks), given or drawn once per run.

Two families of distributions:

- the FSLoRA authors' code (``generate_ranks`` in src/main.py of wenzhifang/Federated-Sketching-LoRA-Implementation):
  ``fslora_normal`` and ``fslora_heavy_tail``, the shapes its run script uses (run_main.sh: normal, heavy_tail_low);
- fedlora's own: ``uniform``, ``normal`` (a wider normal) and ``heavy_tail`` (a Pareto tail).
"""

from __future__ import annotations

import math

import numpy as np

DISTRIBUTIONS = ("uniform", "normal", "heavy_tail", "fslora_normal", "fslora_heavy_tail")


def draw_budgets(num_clients: int, k_min: int, k_max: int, distribution: str, seed: int) -> list[int]:
    """``num_clients`` integer budgets in [a, b] = [k_min, k_max], drawn with ``numpy.random.default_rng(seed)``.

    - ``uniform``: every integer in [a, b] equally likely.
    - ``normal``: N((a+b)/2, σ = (b−a)/4), rounded, clipped to [a, b].
    - ``heavy_tail``: a·(1 + Pareto(1.5)), floored, clipped at b: most clients small, a few large.
    - ``fslora_normal`` (FSLoRA code): N((a+b)/2, σ = (b−a)/6), clipped to [a, b], rounded.
    - ``fslora_heavy_tail`` (FSLoRA code's "heavy_tail_low"): s = 1/X with X ~ LogNormal(ln((a+b)/4), 1), min-max
      rescaled over the draws to [a, b] (the smallest draw becomes a, the largest b; most sit near a), rounded.
    """
    if not 1 <= k_min <= k_max:
        raise ValueError(f"budgets need 1 <= k_min <= k_max, got {k_min}, {k_max}")
    a, b = k_min, k_max
    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        values = rng.integers(a, b + 1, size=num_clients)
    elif distribution == "normal":
        values = np.rint(rng.normal((a + b) / 2, max((b - a) / 4, 1e-9), size=num_clients))
    elif distribution == "heavy_tail":
        values = np.floor(a * (1 + rng.pareto(1.5, size=num_clients)))
    elif distribution == "fslora_normal":
        values = np.rint(np.clip(rng.normal((a + b) / 2, (b - a) / 6, size=num_clients), a, b))
    elif distribution == "fslora_heavy_tail":
        inverse = 1.0 / rng.lognormal(math.log((a + b) / 4), 1.0, size=num_clients)
        spread = inverse.max() - inverse.min()
        rescaled = a + (inverse - inverse.min()) / spread * (b - a) if spread > 0 else np.full(num_clients, float(a))
        values = np.rint(rescaled)
    else:
        raise ValueError(f"unknown budget distribution {distribution!r}")
    return [int(v) for v in np.clip(values, a, b)]

"""Independent client sampling with unbiased (inverse-probability) weights.

Client i joins a round independently with probability q_i ∈ (0, 1]. Weighting its update by a_i / q_i makes the
aggregate over the random participant set S unbiased:

    E[Σ_{i∈S} (a_i / q_i) x_i] = Σ_i q_i (a_i / q_i) x_i = Σ_i a_i x_i.

The weights are deliberately not renormalised (renormalising would bias the estimate). Not yet used by runs.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch


def _check_probs(probs: Sequence[float]) -> None:
    for i, q in enumerate(probs):
        if not (0 < q <= 1) or math.isnan(q):
            raise ValueError(f"probs[{i}] must be in (0, 1], got {q!r}")


def sample_independent(probs: Sequence[float], generator: torch.Generator) -> list[int]:
    """Client ids (sorted, possibly empty) that join: id i joins independently with probability probs[i]."""
    _check_probs(probs)
    if len(probs) == 0:
        return []
    u = torch.rand(len(probs), generator=generator, dtype=torch.float64)  # in [0, 1): q = 1 always joins
    q = torch.tensor([float(p) for p in probs], dtype=torch.float64)
    return torch.nonzero(u < q).flatten().tolist()


def unbiased_weights(participants: Sequence[int], base_weights: Sequence[float], probs: Sequence[float]) -> list[float]:
    """Weights a_i / q_i for each i in ``participants`` (same order), so that Σ_{i∈S} w_i x_i is unbiased."""
    if len(base_weights) != len(probs):
        raise ValueError(f"base_weights has {len(base_weights)} entries but probs has {len(probs)}")
    _check_probs(probs)
    ids = []
    for i in participants:
        try:
            idx = operator.index(i)
        except TypeError:
            idx = -1
        if not 0 <= idx < len(probs):
            raise ValueError(f"participants contains {i!r}, not a client id in [0, {len(probs)})")
        ids.append(idx)
    return [float(base_weights[i]) / float(probs[i]) for i in ids]

"""Seeds derived from (run seed, purpose, round, client): stateless, so a resumed run draws the same numbers."""

from __future__ import annotations

import numpy as np
import torch

PURPOSES = {
    "init": 0,
    "sample": 1,
    "sketch": 2,
    "train": 3,
    "budgets": 4,
    "data": 5,
    "model": 6,
    "fleet": 7,
    "pilot": 8,
    "dp-noise": 9,
    "client-eval": 10,
    "fedsb-init": 11,
}


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed that depends only on its arguments."""
    entropy = [seed & 0xFFFFFFFF, PURPOSES[purpose], *[k & 0xFFFFFFFF for k in keys]]
    return int(np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, purpose, *keys))

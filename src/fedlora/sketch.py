"""FSLoRA sketching: index sets, the r/k scale, and block extraction/insertion.

The server keeps one global LoRA pair per module, B (m×r) and A (r×n). For client i with budget k_i ≤ r, each
round and each module draws ONE index set I ⊂ {0..r-1}, |I| = k_i, shared by B's columns and A's rows. The sketch
S = diag(r/k_i on I, 0 elsewhere) has E[S] = Identity, and the client's model is
W0 + B S A = W0 + (r/k_i)·B[:, I]·A[I, :]: a real rank-k_i adapter (only B[:, I] and A[I, :] travel and train).
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_indices(r: int, k: int, generator: torch.Generator) -> Tensor:
    """k distinct sorted indices drawn uniformly from [0, r).

    Returns a LongTensor of shape [k]. Every k-subset is equally likely, so each index is kept with
    probability k/r.
    """
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    if not 1 <= k <= r:
        raise ValueError(f"k must be in [1, r={r}], got {k}")
    chosen = torch.randperm(r, generator=generator)[:k]
    return torch.sort(chosen).values


def sketch_scale(r: int, k: int) -> float:
    """The nonzero entry r/k of the sketch matrix S, so that E[S] = Identity."""
    return r / k


def extract_block(B: Tensor, A: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """The rank-k block of a rank-r pair: (B[:, I] of shape m×k, A[I, :] of shape k×n), as new tensors."""
    return B[:, indices].clone(), A[indices, :].clone()


def scatter_block(delta_B: Tensor, delta_A: Tensor, indices: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Place a client's block update back in rank-r shape, zeros elsewhere.

    delta_B: m×k, delta_A: k×n → (m×r, r×n) with the block's columns/rows at ``indices``.
    """
    m, n = delta_B.shape[0], delta_A.shape[1]
    full_B = delta_B.new_zeros(m, r)
    full_A = delta_A.new_zeros(r, n)
    full_B[:, indices] = delta_B
    full_A[indices, :] = delta_A
    return full_B, full_A


def sketched_product(B: Tensor, A: Tensor, indices: Tensor) -> Tensor:
    """The sketched update B S A = (r/k)·B[:, I]·A[I, :] (m×n), a dense reference for tests."""
    r, k = B.shape[1], indices.numel()
    return sketch_scale(r, k) * B[:, indices] @ A[indices, :]

"""HetLoRA: zero-pad heterogeneous factors to the largest rank, average, truncate (Cho et al., 2024).

Each B_k is zero-padded to r_max columns and each A_k to r_max rows, then B and A are averaged *separately*
with the weights (as in FedIT), and the result is truncated to the requested rank. The paper truncates per
client; here the function returns the global at ``rank``: call it with ``rank = r_max`` to keep everything
and slice ``B[:, :r_k]``, ``A[:r_k]`` per client. HetLoRA's self-pruning and sparsity-weighted aggregation
are not part of this baseline.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora.aggregation._validate import check_factors, check_rank, compute_dtype


@torch.no_grad()
def hetlora(
    Bs: Sequence[Tensor],
    As: Sequence[Tensor],
    weights: Sequence[float],
    rank: int,
) -> tuple[Tensor, Tensor]:
    """HetLoRA's global at ``rank``: pad to r_max, average B and A separately, keep the first ``rank``.

    Args:
        Bs: client factors B_k, each m×r_k.
        As: client factors A_k, each r_k×n.
        weights: w_k per client, used as given (not renormalised).
        rank: columns of B / rows of A to return (>= 1). Usually r_max = max r_k; a larger rank pads zeros.

    Returns:
        ``(B, A)``: B (m×rank) = first ``rank`` columns of Σ w_k pad(B_k), A (rank×n) = first ``rank`` rows of
        Σ w_k pad(A_k), in the input dtype and device (accumulated in float32 for half precision).

    Raises:
        ValueError: bad inputs (the message names the argument and client index) or ``rank`` < 1.
    """
    f = check_factors(Bs, As, weights)
    rank = check_rank(rank)
    acc = compute_dtype(f.dtype)
    B = torch.zeros(f.m, rank, dtype=acc, device=f.device)
    A = torch.zeros(rank, f.n, dtype=acc, device=f.device)
    for b, a, w, r in zip(Bs, As, f.weights, f.ranks, strict=True):
        q = min(r, rank)
        B[:, :q].add_(b[:, :q].to(acc), alpha=w)
        A[:q].add_(a[:q].to(acc), alpha=w)
    return B.to(f.dtype), A.to(f.dtype)

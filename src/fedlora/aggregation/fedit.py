"""FedIT: average the LoRA factors separately (Zhang et al., 2024; FedAvg applied to A and B).

B = Σ w_k B_k and A = Σ w_k A_k. The product B @ A is *not* Σ w_k B_k A_k (the cross terms are the known
aggregation noise of FedIT); all clients must share one rank.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora.aggregation._validate import check_factors, compute_dtype


def weighted_sum(tensors: Sequence[Tensor], weights: Sequence[float], dtype: torch.dtype) -> Tensor:
    """Σ w_k T_k for same-shape tensors, accumulated in ``dtype`` into a new tensor."""
    out = torch.zeros(tensors[0].shape, dtype=dtype, device=tensors[0].device)
    for t, w in zip(tensors, weights, strict=True):
        out.add_(t.to(dtype), alpha=float(w))
    return out


@torch.no_grad()
def fedit(Bs: Sequence[Tensor], As: Sequence[Tensor], weights: Sequence[float]) -> tuple[Tensor, Tensor]:
    """FedIT's global factors: the weighted averages of B and of A, taken separately.

    Args:
        Bs: client factors B_k, each m×r (one rank r for all clients).
        As: client factors A_k, each r×n.
        weights: w_k per client, used as given (not renormalised).

    Returns:
        ``(B, A)`` with B = Σ w_k B_k (m×r) and A = Σ w_k A_k (r×n) in the input dtype and device
        (accumulated in float32 for half-precision inputs).

    Raises:
        ValueError: bad inputs, or ranks that differ (the message names the argument and client index).
    """
    f = check_factors(Bs, As, weights)
    r0 = f.ranks[0]
    for i, r in enumerate(f.ranks):
        if r != r0:
            raise ValueError(
                f"Bs[{i}]: rank {r} differs from rank {r0} of Bs[0]; fedit averages factors and needs one "
                "rank (use hetlora or flora for heterogeneous ranks)"
            )
    acc = compute_dtype(f.dtype)
    B = weighted_sum(Bs, f.weights, acc).to(f.dtype)
    A = weighted_sum(As, f.weights, acc).to(f.dtype)
    return B, A

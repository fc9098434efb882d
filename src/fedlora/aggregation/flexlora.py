"""FlexLoRA: dense weighted update, SVD, best rank-r factors (Bai et al., NeurIPS 2024).

ΔW = Σ w_k B_k A_k is formed as a dense m×n matrix (the *product* is averaged) and decomposed with a full SVD;
the global factors are the best rank-r approximation (Eckart–Young). This is the baseline whose cost grows
with m×n: about 28 s for one 4096×4096 module on 2 CPU cores.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora.aggregation._validate import check_factors, check_rank, compute_dtype
from fedlora.aggregation.flora import stack


@torch.no_grad()
def flexlora(
    Bs: Sequence[Tensor],
    As: Sequence[Tensor],
    weights: Sequence[float],
    rank: int,
) -> tuple[Tensor, Tensor]:
    """FlexLoRA's global factors: the best rank-``rank`` approximation of the dense Σ w_k B_k A_k.

    Args:
        Bs: client factors B_k, each m×r_k.
        As: client factors A_k, each r_k×n.
        weights: w_k per client, used as given (not renormalised).
        rank: target rank (>= 1); values above min(m, n) are clamped to min(m, n).

    Returns:
        ``(B, A)`` with B = U[:, :r]·diag(S[:r]) (m×r) and A = Vᵀ[:r] (r×n) from the SVD of the dense m×n
        update (float32, or float64 for float64 inputs), returned in the input dtype and device.

    Raises:
        ValueError: bad inputs (the message names the argument and client index) or ``rank`` < 1.
    """
    f = check_factors(Bs, As, weights)
    r = min(check_rank(rank), f.m, f.n)
    B_s, A_s = stack(Bs, As, f.weights, compute_dtype(f.dtype))
    U, S, Vh = torch.linalg.svd(B_s @ A_s, full_matrices=False)
    return (U[:, :r] * S[:r]).to(f.dtype), Vh[:r].to(f.dtype, copy=True)

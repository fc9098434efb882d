"""FLoRA: exact aggregation by stacking the client factors (Wang et al., NeurIPS 2024).

B = [B_1 … B_K] (m×R) and A = [w_1 A_1; …; w_K A_K] (R×n) with R = Σ r_k, so that
B @ A = Σ_k w_k B_k A_k exactly. Nothing is averaged: the *product* is the weighted sum of the client
products.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora.aggregation._validate import check_factors


def stack(
    Bs: Sequence[Tensor], As: Sequence[Tensor], weights: Sequence[float], dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Stack already-validated factors into B_s (m×R) and A_s = [w_k A_k] (R×n) in ``dtype`` (new tensors)."""
    B = torch.cat([b.to(dtype) for b in Bs], dim=1)
    A = torch.cat([a.to(dtype) * float(w) for a, w in zip(As, weights, strict=True)], dim=0)
    return B, A


@torch.no_grad()
def flora(Bs: Sequence[Tensor], As: Sequence[Tensor], weights: Sequence[float]) -> tuple[Tensor, Tensor]:
    """FLoRA's global update as stacked factors.

    Args:
        Bs: client factors B_k, each m×r_k (ranks may differ).
        As: client factors A_k, each r_k×n.
        weights: w_k per client, used as given (not renormalised).

    Returns:
        ``(B, A)`` with B = [B_1 … B_K] (m×R) and A = [w_1 A_1; …; w_K A_K] (R×n), R = Σ r_k, in the input
        dtype and device. B @ A = Σ w_k B_k A_k exactly (the product, not the factors, is averaged).

    Raises:
        ValueError: bad inputs (the message names the argument and client index).
    """
    f = check_factors(Bs, As, weights)
    return stack(Bs, As, f.weights, f.dtype)

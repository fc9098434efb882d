"""Fed-SB: federated LoRA-SB (Singhal, Ponkshe, Bhatt, Vepakomma, 2025, arXiv 2502.15436).

Every client's adapter of a module is ΔW_k = s · B R_k A with B (m×r) and A (r×n) fixed and shared (LoRA-SB's
initialisation) and only the r×r matrix R_k trained. Averaging R is exact:
Σ w_k s B R_k A = s B (Σ w_k R_k) A, so the server needs only Σ w_k R_k (r² numbers per module and client).
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora.aggregation._validate import check_factors, compute_dtype
from fedlora.aggregation.fedit import weighted_sum


@torch.no_grad()
def fedsb(Rs: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Fed-SB's global R of one module: Σ w_k R_k.

    Args:
        Rs: client matrices R_k, each r×r (one r for all clients).
        weights: w_k per client, used as given (not renormalised).

    Returns:
        R (r×r) in the input dtype and device (accumulated in float32 for half-precision inputs).

    Raises:
        ValueError: bad inputs, a non-square R_k or r that differ (names the argument and client index).
    """
    for i, R in enumerate(Rs if isinstance(Rs, (list, tuple)) else []):
        if isinstance(R, Tensor) and R.dim() == 2 and R.shape[0] != R.shape[1]:
            raise ValueError(f"Rs[{i}]: shape {R.shape[0]}×{R.shape[1]} is not square (r×r)")
    try:  # R_k as its own "B" and "A": the shared checks of lists, dtypes, devices and weights
        f = check_factors(Rs, Rs, weights)
    except ValueError as err:
        raise ValueError(str(err).replace("Bs", "Rs").replace("As", "Rs")) from None
    for i, R in enumerate(Rs):
        if R.shape != Rs[0].shape:
            raise ValueError(f"Rs[{i}]: r = {R.shape[0]} differs from r = {Rs[0].shape[0]} of Rs[0]")
    return weighted_sum(Rs, f.weights, compute_dtype(f.dtype)).to(f.dtype)

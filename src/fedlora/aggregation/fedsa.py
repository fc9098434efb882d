"""FedSA-LoRA: share A, keep B on the client (Guo et al., "Selective Aggregation for Low-Rank Adaptation in
Federated Learning", ICLR 2025).

Clients train both factors; only A_k travels to the server, which averages it: A = Σ w_k A_k. Each client keeps its
own B_k, so client k's personalised model is W0 + s·B_k A (the next round starts from (B_k, A)). The server never
sees a B. :func:`fedsa` is the SHARED VIEW used where one adapter for everybody is wanted (fedlora's export and
its global evaluation): (Σ w_k B_k, Σ w_k A_k), the average of the clients' B on the shared A. Its product is
(Σ w_k B_k) A, the weighted average of the personalised updates B_k A (exact, since A is common): the shared
view is the mean personalised model, not a model any client trained.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora.aggregation._validate import _check_list, check_factors, compute_dtype
from fedlora.aggregation.fedit import weighted_sum


@torch.no_grad()
def shared_A(As: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """The server's FedSA-LoRA step: A = Σ w_k A_k (each A_k r×n, one rank; weights used as given)."""
    _check_list("As", As)
    for i, a in enumerate(As):
        if not isinstance(a, Tensor) or a.dim() != 2:
            raise ValueError(f"As[{i}]: expected a 2-D tensor, got {type(a).__name__} {getattr(a, 'shape', '')}")
    # the B's never reach the server: check A through the common checks with zero 1×r_k stand-ins for B
    stand_ins = [torch.zeros(1, a.shape[0], dtype=a.dtype, device=a.device) for a in As]
    f = check_factors(stand_ins, As, weights)
    for i, r in enumerate(f.ranks):
        if r != f.ranks[0]:
            raise ValueError(f"As[{i}]: rank {r} differs from rank {f.ranks[0]} of As[0]; fedsa needs one rank")
    return weighted_sum(As, f.weights, compute_dtype(f.dtype)).to(f.dtype)


@torch.no_grad()
def fedsa(Bs: Sequence[Tensor], As: Sequence[Tensor], weights: Sequence[float]) -> tuple[Tensor, Tensor]:
    """The shared view of FedSA-LoRA: ``(Σ w_k B_k, Σ w_k A_k)`` (B m×r, A r×n; one rank for all clients).

    With every A_k equal to the shared A (the clients' B's against the current global A) the product is exactly
    Σ w_k B_k A. Raises ValueError naming the argument and client for bad inputs or mixed ranks.
    """
    f = check_factors(Bs, As, weights)
    for i, r in enumerate(f.ranks):
        if r != f.ranks[0]:
            raise ValueError(f"Bs[{i}]: rank {r} differs from rank {f.ranks[0]} of Bs[0]; fedsa needs one rank")
    acc = compute_dtype(f.dtype)
    return weighted_sum(Bs, f.weights, acc).to(f.dtype), shared_A(As, f.weights)

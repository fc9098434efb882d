"""RoLoRA: alternating optimisation of the LoRA factors (Chen et al., arXiv 2502.01755, NeurIPS 2025).

In a round every client trains ONE factor from the same global pair while the other stays frozen at the global
value; the server averages the trained factor only. With A frozen, (Σ w_k B_k) A = Σ w_k B_k A_k; with B frozen,
B (Σ w_k A_k) = Σ w_k B A_k: the product of the averaged pair is exactly the weighted sum of the clients' products,
for any weights, with none of FedIT's cross terms. Which factor trains in which round is the caller's (fedlora:
B in odd rounds, A in even ones, ``fedlora.methods.rolora``).
"""

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from fedlora.aggregation._validate import check_factors, compute_dtype
from fedlora.aggregation.fedit import weighted_sum

Trained = Literal["B", "A"]


@torch.no_grad()
def rolora(
    Bs: Sequence[Tensor], As: Sequence[Tensor], weights: Sequence[float], *, trained: Trained
) -> tuple[Tensor, Tensor]:
    """The global pair after a RoLoRA round: the trained factor averaged, the frozen one kept.

    Args:
        Bs: client factors B_k, each m×r (one rank r for all clients).
        As: client factors A_k, each r×n.
        weights: w_k per client, used as given (not renormalised).
        trained: "B" (A was frozen: every A_k must be the same tensor values) or "A" (every B_k the same).

    Returns:
        ``(B, A)``: trained = "B" gives (Σ w_k B_k, A_0); trained = "A" gives (B_0, Σ w_k A_k); so that
        B @ A = Σ w_k B_k A_k exactly (input dtype and device; accumulated in float32 for half precision).

    Raises:
        ValueError: bad inputs, ranks that differ, an unknown ``trained``, or a client whose frozen factor
        differs from client 0's (the message names the argument and client index).
    """
    if trained not in ("A", "B"):
        raise ValueError(f"trained: expected 'A' or 'B', got {trained!r}")
    f = check_factors(Bs, As, weights)
    for i, r in enumerate(f.ranks):
        if r != f.ranks[0]:
            raise ValueError(f"Bs[{i}]: rank {r} differs from rank {f.ranks[0]} of Bs[0]; rolora needs one rank")
    frozen_name, frozen = ("As", As) if trained == "B" else ("Bs", Bs)
    for i, t in enumerate(frozen):
        if not torch.equal(t, frozen[0]):
            raise ValueError(f"{frozen_name}[{i}]: differs from {frozen_name}[0], but it was frozen this round")
    acc = compute_dtype(f.dtype)
    if trained == "B":
        return weighted_sum(Bs, f.weights, acc).to(f.dtype), As[0].clone()
    return Bs[0].clone(), weighted_sum(As, f.weights, acc).to(f.dtype)

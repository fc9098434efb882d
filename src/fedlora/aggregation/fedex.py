"""FedEx-LoRA: exact aggregation by folding the averaging error into the frozen base (Singhal, Ponkshe,
Vepakomma, ACL 2025, arXiv 2410.09432).

Clients share one rank r. The server averages B and A separately, as FedIT does (B̄ = Σ w_k B_k, Ā = Σ w_k A_k),
and computes the error that averaging makes, the residual ΔW_res = Σ w_k B_k A_k − B̄ Ā (m×n). Folding
s·ΔW_res into the frozen base makes the global model exact: W0 + s ΔW_res + s B̄ Ā = W0 + Σ w_k s B_k A_k.

The residual is never formed as an m×n matrix: it is the product of stacked factors
B_res = [B_1 … B_K, −B̄] (m×(K+1)r) and A_res = [w_1 A_1; …; w_K A_K; Ā] ((K+1)r×n), exactly.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from fedlora.aggregation._validate import check_factors
from fedlora.aggregation.fedit import fedit
from fedlora.aggregation.flora import stack


class FedExParts(NamedTuple):
    """The averaged adapter and the residual, as factors (input dtype and device).

    B_avg (m×r) = Σ w_k B_k, A_avg (r×n) = Σ w_k A_k; B_res (m×(K+1)r), A_res ((K+1)r×n) with
    B_res A_res = Σ w_k B_k A_k − B_avg A_avg."""

    B_avg: Tensor
    A_avg: Tensor
    B_res: Tensor
    A_res: Tensor


@torch.no_grad()
def fedex_parts(
    Bs: Sequence[Tensor],
    As: Sequence[Tensor],
    weights: Sequence[float],
    old: tuple[Tensor, Tensor] | None = None,
    old_weight: float = 0.0,
) -> FedExParts:
    """FedEx-LoRA's averaged adapter and residual for one module.

    Args:
        Bs: client factors B_k, each m×r (one rank r for all clients).
        As: client factors A_k, each r×n.
        weights: w_k per client, used as given (not renormalised).
        old: the current global pair (B_o, A_o), joining as one more term of weight ``old_weight`` (any sign:
            the affine rule 1 − Σ w_k of ``fedlora.methods.common`` when the round's weights do not sum to 1).

    Returns:
        :class:`FedExParts` with B_avg = Σ w_k B_k + c B_o, A_avg = Σ w_k A_k + c A_o (c = ``old_weight``) and
        B_avg A_avg + B_res A_res = Σ w_k B_k A_k + c B_o A_o exactly (up to float rounding).

    Raises:
        ValueError: bad inputs or ranks that differ (the message names the argument and client index).
    """
    B_avg, A_avg = fedit(Bs, As, weights)  # checks the inputs and the single rank
    f = check_factors(Bs, As, weights)
    B_stack, A_stack = stack(Bs, As, f.weights, f.dtype)
    if old is not None and old_weight != 0.0:
        B_o, A_o = old[0].to(f.dtype), old[1].to(f.dtype)
        if B_o.shape != Bs[0].shape or A_o.shape != As[0].shape:
            raise ValueError(f"old: shapes {tuple(B_o.shape)}, {tuple(A_o.shape)} differ from the clients' factors")
        B_avg, A_avg = B_avg + old_weight * B_o, A_avg + old_weight * A_o
        B_stack, A_stack = torch.cat([B_stack, old_weight * B_o], dim=1), torch.cat([A_stack, A_o], dim=0)
    B_res = torch.cat([B_stack, -B_avg], dim=1)
    A_res = torch.cat([A_stack, A_avg], dim=0)
    return FedExParts(B_avg, A_avg, B_res, A_res)


@torch.no_grad()
def fedex(Bs: Sequence[Tensor], As: Sequence[Tensor], weights: Sequence[float]) -> tuple[Tensor, Tensor]:
    """FedEx-LoRA's global update of one module as factors whose product is Σ w_k B_k A_k exactly.

    Returns ``(B, A)`` = ([B̄ | B_res], [Ā; A_res]): the first r columns of B (rows of A) are the averaged adapter
    the clients continue from, the rest the residual folded into the base (:func:`fedex_parts`).
    """
    p = fedex_parts(Bs, As, weights)
    return torch.cat([p.B_avg, p.B_res], dim=1), torch.cat([p.A_avg, p.A_res], dim=0)

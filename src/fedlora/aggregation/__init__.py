"""Server-side aggregation of client LoRA factors: pure tensor math, one module per method.

Every method is a function ``(Bs, As, weights, **options) -> (B, A)`` where Bs[k] is client k's B_k (m×r_k),
As[k] its A_k (r_k×n), weights are used as given (callers normalise), and the product B @ A is the method's
global ΔW for the module. Inputs are validated first (``ValueError`` naming the argument and client index),
never modified, and outputs come back in the input dtype and device.

- :func:`fedit` — average B and A separately (one shared rank).
- :func:`rolora` — average the one factor trained this round (``trained``), keep the frozen one: exact.
- :func:`fedsa` — FedSA-LoRA's shared view (Σ w_k B_k, Σ w_k A_k); the server itself runs :func:`shared_A` only.
- :func:`hetlora` — zero-pad to the largest rank, average B and A separately, truncate to ``rank``.
- :func:`flora` — stack the factors: B @ A = Σ w_k B_k A_k exactly.
- :func:`flexlora` — dense Σ w_k B_k A_k, full SVD, best rank-``rank`` factors.
- :func:`florist` — exact SVD of Σ w_k B_k A_k from R×R matrices, rank by energy threshold ``tau``
  (:func:`florist_decompose` also returns the rank and singular values; :func:`energy_rank` is the rule).
- :func:`fedex` — FedEx-LoRA: average B and A separately and keep the residual Σ w_k B_k A_k − B̄Ā as factors
  (:func:`fedex_parts` returns them apart), so the product is Σ w_k B_k A_k exactly.
- :func:`fedsb` — Fed-SB: ``(Rs, weights) -> R``, the weighted sum of the clients' r×r matrices (B, A fixed).
"""

from fedlora.aggregation.fedex import FedExParts, fedex, fedex_parts
from fedlora.aggregation.fedit import fedit
from fedlora.aggregation.fedsa import fedsa, shared_A
from fedlora.aggregation.fedsb import fedsb
from fedlora.aggregation.flexlora import flexlora
from fedlora.aggregation.flora import flora
from fedlora.aggregation.florist import FloristResult, energy_rank, florist, florist_decompose
from fedlora.aggregation.hetlora import hetlora
from fedlora.aggregation.rolora import rolora

__all__ = [
    "FedExParts",
    "fedex",
    "fedex_parts",
    "fedsb",
    "FloristResult",
    "energy_rank",
    "fedit",
    "fedsa",
    "flexlora",
    "flora",
    "florist",
    "florist_decompose",
    "hetlora",
    "rolora",
    "shared_A",
]

"""Pieces several methods share: combining client updates per module, and a global-adapter state.

Weighting rule. The round loop passes weights w_i that sum to 1 over the round's participants under uniform
sampling, and w_i = a_i / q_i under independent sampling (a_i the population weights summing to 1 over ALL
clients, q_i client i's participation probability), which sum to 1 only in expectation. Methods that combine
DELTAS (Σ w_i Δ_i) are unbiased for any weights as they are. Methods that combine client STATES use the affine
form new = Σ_i w_i state_i + (1 − Σ_i w_i)·old, with old the current global (:func:`residual_weight`,
:func:`product_term`, ``combine_updates(..., old=...)``): it is today's Σ w_i state_i when Σ w_i = 1 (the extra
term is skipped, so uniform sampling is bit-for-bit unchanged), unbiased in expectation under independent
sampling (E[new] = Σ_i a_i state_i), and leaves the state unchanged when nobody takes part. (Σ_i w_i state_i
alone is unbiased too, as E[Σ_i w_i] = 1; what the affine term adds is that the global is never rescaled at
random: clients that return the global unchanged leave it unchanged whatever their weights, and an empty round,
which every method skips, is exactly the Σ w_i = 0 case.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from torch import Tensor

from fedlora.lora.state import Factors, flatten_factors, unflatten_factors
from fedlora.methods.base import Adapter, ClientPlan, MethodDefaults

Combine = Callable[[list[Tensor], list[Tensor], list[float]], tuple[Tensor, Tensor]]

RESIDUAL_TOL = 1e-12
"""|1 − Σ w_i| below this counts as Σ w_i = 1: the old global's term is skipped (uniform sampling unchanged)."""


def residual_weight(weights: Sequence[float]) -> float:
    """The weight 1 − Σ w_i of the old global in a state-combining method; exactly 0.0 when |1 − Σ w_i| < 1e-12.

    It is negative when the round's weights sum to more than 1 (e.g. one client with a_i / q_i > 1).
    """
    residual = 1.0 - math.fsum(float(w) for w in weights)
    return 0.0 if abs(residual) < RESIDUAL_TOL else residual


def product_term(B: Tensor, A: Tensor, weight: float) -> tuple[Tensor, Tensor, float]:
    """(B', A, |weight|) such that |weight| · B' A = weight · B A, for combiners of PRODUCTS (flora, florist, flexlora).

    The aggregation functions accept only non-negative weights, so a negative weight's sign goes into B.
    """
    if weight < 0:
        return -B, A, -weight
    return B, A, weight


def combine_updates(
    names: Iterable[str],
    plans: list[ClientPlan],
    uploads: list[Factors],
    weights: list[float],
    combine: Combine,
    old: Factors | None = None,
) -> Factors:
    """Per module, ``combine`` the clients' updates ΔW_k = s_k B_k A_k given as (s_k B_k, A_k) with their weights.

    ``old``: for a method that combines client STATES, the current global (scale folded into B). It joins as one
    more product term with weight 1 − Σ w_k (:func:`residual_weight`; a negative weight goes into B's sign, see
    :func:`product_term`), so the product of the result is Σ w_k ΔW_k + (1 − Σ w_k) B_old A_old. The term is
    skipped when 1 − Σ w_k is (numerically) zero, which makes the call identical to one without ``old``.
    ``combine`` must aggregate the products B_k A_k (flora, florist, flexlora), not the factors separately.
    """
    residual = residual_weight(weights) if old is not None else 0.0
    combined: Factors = {}
    for name in names:
        Bs = [plan.scale * upload[name][0] for plan, upload in zip(plans, uploads, strict=True)]
        As = [upload[name][1] for upload in uploads]
        ws = list(weights)
        if residual != 0.0:
            B_old, A_old, w_old = product_term(*old[name], residual)
            Bs, As, ws = [*Bs, B_old], [*As, A_old], [*ws, w_old]
        combined[name] = combine(Bs, As, ws)
    return combined


def rank_facts(factors: Factors) -> dict[str, float]:
    """Min, max and mean rank of the combined update over modules (logged in metrics.jsonl)."""
    ranks = [int(A.shape[0]) for _, A in factors.values()]
    return {"global_rank_min": min(ranks), "global_rank_max": max(ranks), "global_rank_mean": sum(ranks) / len(ranks)}


def restore_factors(tensors: dict[str, Tensor], prefix: str, built: Factors) -> Factors:
    """The factors under ``prefix`` of a checkpoint's ``tensors``, in the module order of ``built`` (the method's
    factors as constructed, in model order). A checkpoint's tensors come back in name order ("...key" before
    "...query"), and methods that draw per module from one generator in the order of their factors (FSLoRA's
    index sets, a truncated global's padding, DP noise) would draw other numbers after a resume than an
    uninterrupted run does."""
    loaded = unflatten_factors(tensors, prefix=prefix)
    if set(loaded) != set(built):
        raise ValueError(f"checkpoint modules {sorted(set(loaded) ^ set(built))[:3]} do not match the model's")
    return {name: loaded[name] for name in built}


class GlobalAdapterState(MethodDefaults):
    """For methods whose whole state is a global adapter ``self.factors`` at ``self.global_scale``.

    The adapter is both what is evaluated and what is exported; nothing is merged into the base.
    """

    factors: Factors
    global_scale: float
    step_count: int

    def eval_adapter(self) -> Adapter:
        return self.factors, {name: self.global_scale for name in self.factors}

    def export_adapter(self) -> Adapter:
        return self.eval_adapter()

    def state_tensors(self) -> dict[str, Tensor]:
        return flatten_factors(self.factors, prefix="global.")

    def load_state_tensors(self, tensors: dict[str, Tensor], step_count: int) -> None:
        self.factors = restore_factors(tensors, "global.", self.factors)
        self.step_count = step_count

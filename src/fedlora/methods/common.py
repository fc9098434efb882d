"""Pieces several methods share: combining client updates per module, and a global-adapter state."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor

from fedlora.lora.state import Factors, flatten_factors, unflatten_factors
from fedlora.methods.base import Adapter, ClientPlan

Combine = Callable[[list[Tensor], list[Tensor], list[float]], tuple[Tensor, Tensor]]


def combine_updates(
    names: Iterable[str], plans: list[ClientPlan], uploads: list[Factors], weights: list[float], combine: Combine
) -> Factors:
    """Per module, ``combine`` the clients' updates ΔW_k = s_k B_k A_k given as (s_k B_k, A_k) with their weights."""
    combined: Factors = {}
    for name in names:
        Bs = [plan.scale * upload[name][0] for plan, upload in zip(plans, uploads, strict=True)]
        As = [upload[name][1] for upload in uploads]
        combined[name] = combine(Bs, As, weights)
    return combined


def rank_facts(factors: Factors) -> dict[str, float]:
    """Min, max and mean rank of the combined update over modules (logged in metrics.jsonl)."""
    ranks = [int(A.shape[0]) for _, A in factors.values()]
    return {"global_rank_min": min(ranks), "global_rank_max": max(ranks), "global_rank_mean": sum(ranks) / len(ranks)}


class GlobalAdapterState:
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

    def pending_base_update(self) -> None:
        return None

    def base_history(self) -> list[Factors]:
        return []

    def state_tensors(self) -> dict[str, Tensor]:
        return flatten_factors(self.factors, prefix="global.")

    def load_state_tensors(self, tensors: dict[str, Tensor], step_count: int) -> None:
        self.factors = unflatten_factors(tensors, prefix="global.")
        self.step_count = step_count

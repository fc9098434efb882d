"""RoLoRA (Chen et al., arXiv 2502.01755, NeurIPS 2025): clients alternate between training B and training A.

One global rank-r pair per module, as FedIT. Round t (1-based) trains B with A frozen when t is odd and A with B
frozen when t is even; every participant trains the same factor, uploads only it, and the server applies
Δ = Σ w_i (trained_i − sent) to that factor (``FactorAveraging``'s update with the frozen factor's Δ = 0). With the
"avg" server optimizer at lr 1 the new pair is ``aggregation.rolora``'s: B @ A = Σ w_i B_i A_i exactly.

B first: with LoRA's init B = 0 the gradient of A (s·Bᵀ·∂L/∂(ΔW)) is zero, so an A-first round would train
nothing. The alternation is per round (per aggregation), not per local step: that is what makes each average
exact.
"""

from __future__ import annotations

import torch

from fedlora.methods.base import ClientPlan
from fedlora.methods.factor_averaging import FactorAveraging


def trains_B(round_idx: int) -> bool:
    """Whether round ``round_idx`` (1-based) trains B (odd rounds) rather than A (even rounds)."""
    return round_idx % 2 == 1


class RoLoRA(FactorAveraging):
    """FactorAveraging at full rank whose clients train B in odd rounds and A in even rounds."""

    def __init__(self, shapes, rank, scale, optimizer, init_generator) -> None:
        super().__init__("rolora", shapes, rank, scale, None, optimizer, init_generator)

    def plan(self, client_id: int, round_idx: int, generator: torch.Generator) -> ClientPlan:
        plan = super().plan(client_id, round_idx, generator)
        plan.train_B = trains_B(round_idx)
        plan.train_A = not plan.train_B
        return plan

    def options(self) -> dict:
        return {**super().options(), "alternation": "B in odd rounds (A frozen), A in even rounds (B frozen)"}

"""HetLoRA (arXiv 2401.06432) as a baseline: one global pair at the largest rank, truncated per client.

Client k receives B[:, :r_k] and A[:r_k] at the one scale s = alpha / r_max (so its model is the global one
cut to rank r_k) and uploads its trained pair. The server zero-pads every pair to r_max, averages B and A
separately with the round's weights, and keeps rank r_max (``fedlora.aggregation.hetlora``). Columns beyond a
small client's rank receive zeros from it, so they shrink unless large-rank clients keep training them: the
padding bias FLoRIST and FSLoRA avoid. (HetLoRA's rank self-pruning and sparsity-weighted averaging are not
part of this baseline.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedlora import aggregation
from fedlora.lora.state import Factors, ModuleShape, init_factors
from fedlora.methods.base import ClientPlan
from fedlora.methods.common import GlobalAdapterState


class HetLoRA(GlobalAdapterState):
    def __init__(
        self, shapes: Mapping[str, ModuleShape], alpha: float, budgets: Sequence[int], init_generator: torch.Generator
    ) -> None:
        self.name = "hetlora"
        self.budgets = list(budgets)
        self.rank = max(self.budgets)
        self.global_scale = alpha / self.rank
        self.factors: Factors = init_factors(shapes, self.rank, init_generator)
        self.step_count = 0

    def plan(self, client_id: int, round_idx: int, generator: torch.Generator) -> ClientPlan:
        rank = self.budgets[client_id]
        factors = {name: (B[:, :rank].clone(), A[:rank].clone()) for name, (B, A) in self.factors.items()}
        return ClientPlan(client_id, rank, self.global_scale, factors)

    def aggregate(self, plans: list[ClientPlan], uploads: list[Factors], weights: list[float]) -> dict:
        self.factors = {
            name: aggregation.hetlora(
                [u[name][0] for u in uploads], [u[name][1] for u in uploads], weights, rank=self.rank
            )
            for name in self.factors
        }
        self.step_count += 1
        return {}

    def options(self) -> dict:
        return {"budgets": self.budgets, "global_rank": self.rank}

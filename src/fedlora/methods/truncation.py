"""FlexLoRA, and FLoRIST's pad/truncate hand-off: one global ΔW kept as factors, each client gets its rank-r_k cut.

The server holds the global update as (B m×p, A p×n) with the scale folded into B (ΔW = B A). Client k with
rank r_k receives the first r_k columns/rows (B[:, :r_k] / s_k, A[:r_k], s_k = scale(r_k), so its model starts
at W0 + B[:, :r_k] A[:r_k]); when p < r_k, B is padded with zero columns and A with fresh random rows. Clients
upload their trained factors; the server combines the ΔW_k = s_k B_k A_k into the next global:

- FlexLoRA (arXiv 2402.11505): the dense Σ a_k ΔW_k and its truncated SVD at the largest client rank (the
  first r_k singular directions are each client's best rank-r_k approximation);
- FLoRIST, handoff = "pad": the exact SVD from the stacks, rank by energy τ (the MLSys code's variant).

Weighting rule: these methods combine client STATES (each ΔW_k is a client's whole model update, not its change
this round), so the server uses the affine form ΔW_new = Σ_k w_k ΔW_k + (1 − Σ_k w_k)·B A, the old global
(B, A) joining the combine as one more term (``combine_updates(..., old=...)``). With Σ w_k = 1 (uniform
sampling) that term is skipped and the result is Σ w_k ΔW_k as before; with independent sampling (w_k = a_k /
q_k) the combined product is unbiased for Σ_k a_k ΔW_k before truncation (the SVD truncation is not linear), and
1 − Σ w_k may be negative (its sign goes into B, since the aggregation functions take weights >= 0). An empty
round leaves the global unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import Factors, ModuleShape, init_factors
from fedlora.methods.base import ClientPlan
from fedlora.methods.common import Combine, GlobalAdapterState, combine_updates, rank_facts


def cut_to_rank(B: Tensor, A: Tensor, rank: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The first ``rank`` columns of B / rows of A; zero columns and random rows (A's init) pad a short pair."""
    have = A.shape[0]
    if have >= rank:
        return B[:, :rank].clone(), A[:rank].clone()
    bound = 1.0 / math.sqrt(A.shape[1])
    extra = (torch.rand(rank - have, A.shape[1], generator=generator) * 2 - 1) * bound
    return torch.cat([B, B.new_zeros(B.shape[0], rank - have)], dim=1), torch.cat([A, extra.to(A.dtype)], dim=0)


class TruncatedGlobal(GlobalAdapterState):
    def __init__(
        self,
        name: str,
        shapes: Mapping[str, ModuleShape],
        scale: ScaleRule,
        budgets: Sequence[int],
        combine: Combine,
        init_generator: torch.Generator,
        options: dict,
    ) -> None:
        self.name = name
        self.scale = scale
        self.budgets = list(budgets)
        self.combine = combine
        self._options = options
        self.factors: Factors = init_factors(shapes, max(self.budgets), init_generator)
        self.global_scale = 1.0  # folded into B
        self.step_count = 0

    def plan(self, client_id: int, round_idx: int, generator: torch.Generator) -> ClientPlan:
        rank = self.budgets[client_id]
        scale = self.scale(rank)
        factors = {}
        for name, (B, A) in self.factors.items():
            b, a = cut_to_rank(B, A, rank, generator)
            factors[name] = (b / scale, a)
        return ClientPlan(client_id, rank, scale, factors)

    def aggregate(self, plans: list[ClientPlan], uploads: list[Factors], weights: list[float]) -> dict:
        """New global = combine(Σ w_k ΔW_k + (1 − Σ w_k)·B A); returns the global's rank facts.

        An empty round (no plans) changes nothing, does not advance ``step_count`` and returns ``{}`` (no facts).
        """
        if not plans:
            return {}
        self.factors = combine_updates(self.factors, plans, uploads, weights, self.combine, old=self.factors)
        self.step_count += 1
        return rank_facts(self.factors)

    def options(self) -> dict:
        return {"budgets": self.budgets, **self._options}

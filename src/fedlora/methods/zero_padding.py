"""HetLoRA (arXiv 2401.06432) as a baseline: one global pair at the largest rank, truncated per client.

The global pair is held at rank r_max and scale s = scale(r_max) (:class:`fedlora.lora.scaling.ScaleRule`).
Client k trains at its own scale s_k = scale(r_k): it receives B[:, :r_k]·s/s_k and A[:r_k] (so its model is the
global one cut to rank r_k) and uploads its trained pair; the server puts the scale back (B_k·s_k/s), zero-pads
every pair to r_max, averages B and A separately with the round's weights, and keeps rank r_max
(``fedlora.aggregation.hetlora``). Under the ``constant`` convention s_k = s and nothing is rescaled. Columns beyond a
small client's rank receive zeros from it, so they shrink unless large-rank clients keep training them: the
padding bias FLoRIST and FSLoRA avoid. (HetLoRA's rank self-pruning and sparsity-weighted averaging are not
part of this baseline.)

Weighting rule: the server combines client STATES (the trained pairs), so it uses the affine form
new = Σ_k w_k pad(B_k, A_k) + (1 − Σ_k w_k)·(B, A) with (B, A) the current global at r_max: the old pair joins
the average as one more client (with (−B, −A) at weight Σ w_k − 1 when that residual is negative, since the
aggregation function takes weights >= 0). With Σ w_k = 1 (uniform sampling) the extra term is skipped and the
result is what it always was; with independent sampling (w_k = a_k / q_k) each new factor is unbiased for
Σ_k a_k pad(factor_k) (the product B A is bilinear in the weights, so it is not). An empty round leaves the
global unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedlora import aggregation
from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import Factors, ModuleShape, init_factors
from fedlora.methods.base import ClientPlan
from fedlora.methods.common import GlobalAdapterState, residual_weight


class HetLoRA(GlobalAdapterState):
    def __init__(
        self,
        shapes: Mapping[str, ModuleShape],
        scale: ScaleRule,
        budgets: Sequence[int],
        init_generator: torch.Generator,
    ) -> None:
        self.name = "hetlora"
        self.budgets = list(budgets)
        self.rank = max(self.budgets)
        self.scale = scale
        self.global_scale = scale(self.rank)
        self.factors: Factors = init_factors(shapes, self.rank, init_generator)
        self.step_count = 0

    def plan(self, client_id: int, round_idx: int, generator: torch.Generator) -> ClientPlan:
        rank = self.budgets[client_id]
        ratio = self.global_scale / self.scale(rank)
        factors = {name: (B[:, :rank] * ratio, A[:rank].clone()) for name, (B, A) in self.factors.items()}
        return ClientPlan(client_id, rank, self.scale(rank), factors)

    def aggregate(self, plans: list[ClientPlan], uploads: list[Factors], weights: list[float]) -> dict:
        """New global pair = Σ w_k pad(B_k, A_k) + (1 − Σ w_k)·(B, A) at rank r_max; returns no facts (``{}``).

        An empty round (no plans) changes nothing and does not advance ``step_count``.
        """
        if not plans:
            return {}
        residual = residual_weight(weights)
        factors: Factors = {}
        for name, (B_old, A_old) in self.factors.items():
            Bs = [u[name][0] * (plan.scale / self.global_scale) for plan, u in zip(plans, uploads, strict=True)]
            As, ws = [u[name][1] for u in uploads], list(weights)
            if residual != 0.0:  # the old pair as one more client; B and A are averaged separately: negate both
                sign = 1.0 if residual > 0 else -1.0
                Bs, As, ws = [*Bs, sign * B_old], [*As, sign * A_old], [*ws, abs(residual)]
            factors[name] = aggregation.hetlora(Bs, As, ws, rank=self.rank)
        self.factors = factors
        self.step_count += 1
        return {}

    def options(self) -> dict:
        return {"budgets": self.budgets, "global_rank": self.rank}

"""FedEx-LoRA (Singhal, Ponkshe, Vepakomma, ACL 2025, arXiv 2410.09432): FedIT plus the averaging error folded
into the frozen base, so every round's global model is exact.

One global pair (B̄ m×r, Ā r×n) per module at the shared rank r = ``lora.rank`` and scale s. Each participant
starts from it, trains both factors and uploads (B_k, A_k). The server (``fedlora.aggregation.fedex_parts``):

    B̄' = Σ w_k B_k,   Ā' = Σ w_k Ā_k,   W0 ← W0 + s · (Σ w_k B_k A_k − B̄' Ā'),

so the global model W0 + s B̄' Ā' equals W0 + Σ w_k s B_k A_k, the average of the clients' models. The residual
is kept as stacked factors of rank (K+1)·r (never m×n), merged into the base by the round loop
(``pending_base_update``) and sent to the next round's participants as the download's "sync." part, with the
global pair (what the authors' code does in one process: ``fed_agg.py`` ``aggregate_models_ours`` adds the residue
to ``base_layer.weight`` and sets the LoRA weights to the averages, which every client then loads).

Weighting rule: B̄ and Ā combine client STATES, so the affine form of ``fedlora.methods.common`` applies: the
current pair joins with weight 1 − Σ w_k (skipped when Σ w_k = 1), and the exact global is then
W0 + Σ w_k s B_k A_k + (1 − Σ w_k) s B̄ Ā. An empty round changes nothing.

The run's result is W0 + Σ_t s·residual_t + s B̄ Ā, exported as one LoRA by stacking (exact); its rank grows by
(K_t + 1)·r per round t.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedlora import aggregation
from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import Factors, ModuleShape, clone_factors, flatten_factors, init_factors, unflatten_factors
from fedlora.methods.base import Adapter, ClientPlan, MergedHistory
from fedlora.methods.common import residual_weight


class FedExLoRA(MergedHistory):
    def __init__(
        self, shapes: Mapping[str, ModuleShape], rank: int, scale: ScaleRule, init_generator: torch.Generator
    ) -> None:
        self.name = "fedex"
        self.shapes = dict(shapes)
        self.rank = rank
        self.global_scale = scale(rank)
        self.factors: Factors = init_factors(shapes, rank, init_generator)
        self.history: list[Factors] = []
        self._pending: Factors | None = None
        self.step_count = 0

    def plan(self, client_id: int, round_idx: int, generator: torch.Generator) -> ClientPlan:
        sync = self.history[-1] if self.history else None
        return ClientPlan(client_id, self.rank, self.global_scale, clone_factors(self.factors), base_sync=sync)

    def aggregate(self, plans: list[ClientPlan], uploads: list[Factors], weights: list[float]) -> dict:
        """New global pair = the averages; the residual s·(Σ w_k B_k A_k − B̄Ā) becomes this round's base update.

        Returns the residual's rank (``residual_rank``). An empty round records nothing (no base update, no
        history entry, ``step_count`` unchanged: it always equals the number of residuals merged)."""
        if not plans:
            self._pending = None
            return {}
        c = residual_weight(weights)
        s = self.global_scale
        factors: Factors = {}
        update: Factors = {}
        for name, old in self.factors.items():
            Bs, As = [u[name][0] for u in uploads], [u[name][1] for u in uploads]
            p = aggregation.fedex_parts(Bs, As, weights, old=old, old_weight=c)
            factors[name] = (p.B_avg, p.A_avg)
            update[name] = (s * p.B_res, p.A_res)
        self.factors = factors
        self.history.append(update)
        self._pending = update
        self.step_count += 1
        return {"residual_rank": int(next(iter(update.values()))[1].shape[0])}

    def eval_adapter(self) -> Adapter:
        return self.factors, {name: self.global_scale for name in self.factors}

    def export_adapter(self) -> Adapter:
        """Every merged residual and the global pair stacked into one LoRA at scale 1 (exact, on the original W0)."""
        factors = {
            name: (
                torch.cat([h[name][0] for h in self.history] + [self.global_scale * B], dim=1),
                torch.cat([h[name][1] for h in self.history] + [A], dim=0),
            )
            for name, (B, A) in self.factors.items()
        }
        return factors, {name: 1.0 for name in factors}

    def options(self) -> dict:
        return {
            "rank": self.rank,
            "residual": "s * (sum_k w_k B_k A_k - mean(B) mean(A)) merged into the base each round (stacked factors)",
        }

    def state_tensors(self) -> dict[str, Tensor]:
        state = flatten_factors(self.factors, prefix="global.")
        for i, update in enumerate(self.history):
            state.update(flatten_factors(update, prefix=f"round{i:06d}."))
        return state

    def load_state_tensors(self, tensors: dict[str, Tensor], step_count: int) -> None:
        self.factors = unflatten_factors(tensors, prefix="global.")
        self.history = [unflatten_factors(tensors, prefix=f"round{i:06d}.") for i in range(step_count)]
        self.step_count = step_count
        self._pending = None

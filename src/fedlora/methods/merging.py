"""FLoRA and FLoRIST (v1, the paper's Algorithm 1): fold each round's global update into the frozen base.

Every round each participant k starts a FRESH rank-r_k adapter (B = 0, A random from a seed it is sent) at
scale s_k = scale(r_k) (:class:`fedlora.lora.scaling.ScaleRule`) on the current base, trains it and uploads
(B_k, A_k). The server combines the clients' updates ΔW_k = s_k B_k A_k:

- FLoRA (arXiv 2409.05976): stack, exact: B = [s_1 B_1 … s_K B_K], A = [a_1 A_1; …; a_K A_K], B A = Σ a_k ΔW_k;
- FLoRIST (arXiv 2506.09199): the exact SVD of Σ a_k ΔW_k from the stacks (never m×n), keeping the smallest
  rank p whose singular values hold a share τ of the energy (τ = 1 is FLoRA's update, at its numerical rank).

The round's update (B, A) is merged into the base, W0 ← W0 + B A, and sent to the next round's participants
(``base_sync``) so they can do the same. The run's result is the sum of all merged updates, exported as one
LoRA by stacking them (exact).

Download accounting: a participant is charged for the previous round's update (what the papers count). A real
client that skipped rounds would also need the updates it missed; fedlora's in-process base is shared, so it
does not model that catch-up traffic.

Weighting rule: the fresh adapters' products ΔW_k = s_k B_k A_k are this round's DELTAS, so the update is
Σ_k w_k ΔW_k with the round's weights as given (Σ w_k = 1 under uniform sampling; w_k = a_k / q_k under
independent sampling, unbiased for Σ_k a_k ΔW_k without correction; FLoRIST's τ < 1 truncation is the only
non-linear step). An empty round merges nothing: no base update, no history entry, ``step_count`` unchanged
(it always equals the number of merged updates, which resume relies on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import Factors, ModuleShape, flatten_factors, init_factors, unflatten_factors
from fedlora.methods.base import Adapter, ClientPlan, MergedHistory
from fedlora.methods.common import Combine, combine_updates, rank_facts


class MergeIntoBase(MergedHistory):
    def __init__(
        self,
        name: str,
        shapes: Mapping[str, ModuleShape],
        scale: ScaleRule,
        budgets: Sequence[int],
        combine: Combine,
        options: dict,
    ) -> None:
        self.name = name
        self.shapes = dict(shapes)
        self.scale = scale
        self.budgets = list(budgets)
        self.combine = combine
        self._options = options
        self.history: list[Factors] = []
        self._pending: Factors | None = None
        self.step_count = 0

    def plan(self, client_id: int, round_idx: int, generator: torch.Generator) -> ClientPlan:
        rank = self.budgets[client_id]
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        factors = init_factors(self.shapes, rank, torch.Generator().manual_seed(seed))
        sync = self.history[-1] if self.history else None
        return ClientPlan(client_id, rank, self.scale(rank), factors, fresh_seed=seed, base_sync=sync)

    def aggregate(self, plans: list[ClientPlan], uploads: list[Factors], weights: list[float]) -> dict:
        """Combine Σ w_k ΔW_k into this round's base update; returns its rank facts.

        An empty round (no plans) records no update (``pending_base_update()`` is None, the history and
        ``step_count`` are unchanged, so ``step_count == len(history)`` still holds) and returns ``{}`` (no facts).
        """
        if not plans:
            self._pending = None
            return {}
        update = combine_updates(self.shapes, plans, uploads, weights, self.combine)
        self.history.append(update)
        self._pending = update
        self.step_count += 1
        return rank_facts(update)

    def eval_adapter(self) -> None:
        return None  # the base already holds every update

    def export_adapter(self) -> Adapter:
        factors = {
            name: (
                torch.cat([h[name][0] for h in self.history], dim=1),
                torch.cat([h[name][1] for h in self.history], dim=0),
            )
            for name in self.shapes
        }
        return factors, {name: 1.0 for name in factors}

    def options(self) -> dict:
        return {"budgets": self.budgets, "handoff": "merge into base, fresh adapters (v1)", **self._options}

    def state_tensors(self) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        for i, update in enumerate(self.history):
            state.update(flatten_factors(update, prefix=f"round{i:06d}."))
        return state

    def load_state_tensors(self, tensors: dict[str, Tensor], step_count: int) -> None:
        self.history = [unflatten_factors(tensors, prefix=f"round{i:06d}.") for i in range(step_count)]
        self.step_count = step_count
        self._pending = None

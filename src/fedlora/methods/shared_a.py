"""FedSA-LoRA (Guo et al., ICLR 2025): only A is shared and averaged; every client keeps its own B.

The server holds one shared A (r×n) per module and never a B. Client k trains both factors from (B_k, A), B_k
its own B from the previous round it took part in (zeros the first time, kept in its state store,
``fedlora.client.state``), and uploads A_k only. The server sets A ← A + Σ w_k (A_k − A) (= Σ w_k A_k when
Σ w_k = 1: ``aggregation.shared_A``; the affine form keeps A unbiased under independent sampling).

Views. Client k's personalised model is W0 + s·B_k A. The SHARED VIEW, used for the run's global evaluation and
``adapter/``, is (B̄, A) with B̄ = Σ_k a_k B_k / Σ_k a_k over the clients that have a B (the ones that trained at
least once), a_k = n_k (``server.weighting = "num_examples"``, n_k stored by the client with its B) or 1
(``"uniform"``): its update B̄ A is the weighted mean of the personalised updates B_k A (``aggregation.fedsa``).
It is built from the clients' stores, so it exists where the stores are readable: in-process runs keep them in the
run folder (``checkpoint/clients/<id>/``); on Flower they never leave the nodes, and the server's view is A with
B = 0 (summary.json says so) while each node exports its own personalised adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from fedlora.aggregation.fedsa import fedsa
from fedlora.client.state import client_store
from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import Factors, ModuleShape, init_factors
from fedlora.methods.base import Adapter, ClientPlan, MethodDefaults
from fedlora.privacy import GaussianNoise


class SharedA(MethodDefaults):
    """FedSA-LoRA's server: the shared A per module, and where the clients keep their B (when readable here)."""

    name = "fedsa"

    def __init__(
        self,
        shapes: Mapping[str, ModuleShape],
        rank: int,
        scale: ScaleRule,
        init_generator: torch.Generator,
        num_clients: int,
        weighting: str,
        client_states: Path | None,
    ) -> None:
        self.shapes = dict(shapes)
        self.rank = rank
        self.global_scale = scale(rank)
        self.A: dict[str, Tensor] = {name: A for name, (_, A) in init_factors(shapes, rank, init_generator).items()}
        self.num_clients = num_clients
        self.weighting = weighting
        self.client_states = client_states
        self.step_count = 0

    # ------------------------------------------------------------------ plan
    def plan(self, client_id: int, round_idx: int, generator: torch.Generator) -> ClientPlan:
        """A to train from; the client adds its own B (``keep_B``). B here is a zero placeholder (never sent)."""
        factors = {
            name: (torch.zeros(self.shapes[name].out_features, self.rank, dtype=A.dtype), A.clone())
            for name, A in self.A.items()
        }
        full = torch.arange(self.rank)  # every row of A (the planner's pilot scatters in factor space)
        return ClientPlan(
            client_id, self.rank, self.global_scale, factors, keep_B=True, context={n: full for n in factors}
        )

    # ------------------------------------------------------------- aggregate
    def aggregate(
        self, plans: list[ClientPlan], uploads: list[Factors], weights: list[float], noise: GaussianNoise | None = None
    ) -> dict:
        """A ← A + Σ w_k (A_k − A) (+ DP noise on A's update); an empty round changes nothing."""
        if not plans:
            return {}
        delta: Factors = {}
        for name, A in self.A.items():
            dA = torch.zeros_like(A)
            for upload, w in zip(uploads, weights, strict=True):
                dA.add_(upload[name][1] - A, alpha=float(w))
            delta[name] = (torch.zeros(0), dA)
        if noise is not None:
            delta = noise.perturb(delta, B=False, A=True)
        self.A = {name: A + delta[name][1] for name, A in self.A.items()}
        self.step_count += 1
        return {}

    # ---------------------------------------------------------------- views
    def client_states_here(self) -> dict[int, dict[str, Tensor]]:
        """Client id → its newest stored state ("<module>.lora_B", "num_examples"), for the clients whose store is
        readable here and holds one (none on a Flower server)."""
        if self.client_states is None:
            return {}
        states = {}
        for cid in range(self.num_clients):
            own = client_store(self.client_states, cid).latest()
            if own is not None:
                states[cid] = own
        return states

    def personal_adapters(self) -> dict[int, Adapter]:
        """Every client with a B of its own (readable here) → its personalised adapter (B_k, A) at the global scale."""
        adapters = {}
        for cid, own in self.client_states_here().items():
            factors = {name: (own[f"{name}.lora_B"], A) for name, A in self.A.items()}
            adapters[cid] = (factors, {name: self.global_scale for name in factors})
        return adapters

    def personal_eval_shared(self) -> tuple[dict[str, Tensor], dict[str, float], int]:
        """The shared A per module (r × n), the global scale per module and the rank: a client adds its own B."""
        return self.A, {name: self.global_scale for name in self.A}, self.rank

    def eval_adapter(self) -> Adapter:
        """The shared view (B̄, A): B̄ the weighted mean of the stored B's (zeros while none is readable)."""
        states = self.client_states_here()
        ids = sorted(states)
        weights = [float(states[c]["num_examples"]) if self.weighting == "num_examples" else 1.0 for c in ids]
        factors: Factors = {}
        for name, A in self.A.items():
            if ids and sum(weights) > 0:
                B_bar, _ = fedsa(
                    [states[c][f"{name}.lora_B"] for c in ids], [A] * len(ids), [w / sum(weights) for w in weights]
                )
            else:
                B_bar = torch.zeros(self.shapes[name].out_features, self.rank, dtype=A.dtype)
            factors[name] = (B_bar, A)
        return factors, {name: self.global_scale for name in factors}

    def export_adapter(self) -> Adapter:
        return self.eval_adapter()

    def options(self) -> dict:
        return {
            "shared": "A (averaged over the round's participants)",
            "kept_on_clients": "B (client state; never uploaded)",
            "global_view": (
                f"shared view: the clients' stored B averaged ({self.weighting}) on the shared A"
                if self.client_states is not None
                else "the shared A with B = 0 (the clients' B never leave the nodes; each node exports its own)"
            ),
        }

    def state_tensors(self) -> dict[str, Tensor]:
        return {f"shared.{name}.lora_A": A for name, A in self.A.items()}

    def load_state_tensors(self, tensors: dict[str, Tensor], step_count: int) -> None:
        self.A = {name: tensors[f"shared.{name}.lora_A"] for name in self.shapes}
        self.step_count = step_count

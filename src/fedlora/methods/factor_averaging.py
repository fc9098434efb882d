"""FSLoRA (sketched) and FedIT (full rank): one global rank-r pair per module, averaged update on the factors.

FSLoRA (arXiv 2501.19389): client i with budget k_i receives, per module, B[:, I] and A[I, :] for one uniform
index set I (|I| = k_i) shared by B's columns and A's rows, and trains them at scale s·(r/k_i), s the global
rank-r adapter's scale (:class:`fedlora.lora.scaling.ScaleRule`): its model is W0 + s·B S A with
E[S] = Identity. It returns the trained blocks; the server scatters each block update Δ_i = (trained − sent)
back to the columns/rows it came from (zeros elsewhere) and forms Δ = Σ_i a_i · scatter(Δ_i) with the round's
aggregation weights a_i (Σ a_i = 1 under uniform sampling).
Columns no participant touched get zero update: this is the unbiased FSLoRA estimator, not a per-column average.

FedIT is the same code with k_i = r for every client and no sketch: Δ = Σ a_i (B_i − B, A_i − A), so with
Σ a_i = 1 and the "avg" server optimizer at lr 1 the new factors are Σ a_i B_i and Σ a_i A_i.

FFA-LoRA (Sun et al. 2024) is FedIT with A frozen at its shared random init: clients train and upload only B,
and the server averages B (A's update is zero), so Σ a_i B_i A is exactly the average of the clients' ΔW.

Weighting rule: all three combine DELTAS, Δ = Σ_i w_i scatter(Δ_i), with the round's weights used as given. Under
uniform sampling Σ w_i = 1 over the participants; under independent sampling w_i = a_i / q_i (a_i population
weights summing to 1 over all clients, q_i the participation probability), which need not sum to 1 in a round,
and Δ is then unbiased for Σ_i a_i scatter(Δ_i) with no correction (an affine term would be zero: a delta's
"old" value is 0). The new factors are linear in Δ only for the "avg" server optimizer; Adam is not. An empty
round is skipped: no factor changes and no optimizer step (a zero pseudo-gradient would still move Adam).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedlora import aggregation, sketch
from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import Factors, ModuleShape, flatten_factors, init_factors
from fedlora.methods.base import ClientPlan
from fedlora.methods.common import GlobalAdapterState, restore_factors
from fedlora.privacy import GaussianNoise
from fedlora.server_optimizer import ServerOptimizer


def server_optimizer(server) -> ServerOptimizer:
    """The server step of the ``[server]`` config section (optimizer, lr, betas, eps, weight_decay)."""
    return ServerOptimizer(server.optimizer, server.lr, tuple(server.betas), server.eps, server.weight_decay)


class FactorAveraging(GlobalAdapterState):
    """The global rank-r adapter and its update rule.

    ``budgets=None``: every client trains the full rank (FedIT, FFA-LoRA); ``freeze_A``: A never trains (FFA-LoRA).
    """

    def __init__(
        self,
        name: str,
        shapes: Mapping[str, ModuleShape],
        rank: int,
        scale: ScaleRule,
        budgets: Sequence[int] | None,
        optimizer: ServerOptimizer,
        init_generator: torch.Generator,
        freeze_A: bool = False,
    ) -> None:
        self.name = name
        self.rank = rank
        self.global_scale = scale(rank)
        self.budgets = list(budgets) if budgets is not None else None
        self.optimizer = optimizer
        self.freeze_A = freeze_A
        self.factors: Factors = init_factors(shapes, rank, init_generator)

    # ------------------------------------------------------------------ plan
    @property
    def step_count(self) -> int:
        return self.optimizer.step_count

    def plan(self, client_id: int, round_idx: int, generator: torch.Generator) -> ClientPlan:
        if self.budgets is None:
            full = torch.arange(self.rank)
            factors = {name: (B.clone(), A.clone()) for name, (B, A) in self.factors.items()}
            return ClientPlan(
                client_id,
                self.rank,
                self.global_scale,
                factors,
                train_A=not self.freeze_A,
                context={n: full for n in factors},
            )
        k = self.budgets[client_id]
        factors, context = {}, {}
        for name, (B, A) in self.factors.items():
            indices = sketch.sample_indices(self.rank, k, generator)
            factors[name] = sketch.extract_block(B, A, indices)
            context[name] = indices
        return ClientPlan(client_id, k, self.global_scale * sketch.sketch_scale(self.rank, k), factors, context=context)

    # ------------------------------------------------------------- aggregate
    def aggregate(
        self, plans: list[ClientPlan], uploads: list[Factors], weights: list[float], noise: GaussianNoise | None = None
    ) -> dict:
        """Apply Δ = Σ w_i scatter(Δ_i) with the server optimizer; returns no facts (``{}``).

        ``noise`` (client-level DP, uploads already clipped): Gaussian noise added to Δ before the optimizer step, on
        every coordinate of the factors the round trained (B only for FFA-LoRA; the round's factor for RoLoRA). An
        empty round (no plans) changes nothing: no optimizer step, so ``step_count`` does not advance.
        """
        if not plans:
            return {}
        delta: Factors = {}
        for name in self.factors:
            scattered_B, scattered_A = [], []
            for plan, upload in zip(plans, uploads, strict=True):
                sent_B, sent_A = plan.factors[name]
                new_B, new_A = upload[name]
                dB, dA = sketch.scatter_block(new_B - sent_B, new_A - sent_A, plan.context[name], self.rank)
                scattered_B.append(dB)
                scattered_A.append(dA)
            delta[name] = aggregation.fedit(scattered_B, scattered_A, weights)
        if noise is not None:  # on the factors this round trained (every plan trains the same ones)
            delta = noise.perturb(delta, B=plans[0].train_B, A=plans[0].train_A)
        self.factors = self.optimizer.step(self.factors, delta)
        return {}

    # ---------------------------------------------------------------- views
    def options(self) -> dict:
        options: dict = {"server_optimizer": self.optimizer.kind, "server_lr": self.optimizer.lr}
        if self.budgets is not None:
            options["budgets"] = self.budgets
            options["normalisation"] = "sum_i w_i * scatter(delta_i), the round's weights as given (not renormalised)"
        if self.freeze_A:
            options["frozen"] = "A (shared random init)"
        return options

    def state_tensors(self) -> dict[str, Tensor]:
        state = flatten_factors(self.factors, prefix="global.")
        state.update({f"opt.{k}": v for k, v in self.optimizer.state_tensors().items()})
        return state

    def load_state_tensors(self, tensors: dict[str, Tensor], step_count: int) -> None:
        self.factors = restore_factors(tensors, "global.", self.factors)
        opt = {k[len("opt.") :]: v for k, v in tensors.items() if k.startswith("opt.")}
        self.optimizer.load_state_tensors(opt, step_count)

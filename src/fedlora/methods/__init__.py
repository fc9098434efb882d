"""Federated methods: what each client receives and how the server aggregates.

| method   | clients train                      | server                                         |
|----------|------------------------------------|------------------------------------------------|
| fslora   | a random rank-k_i block of global  | scatter block updates, weighted sum (unbiased) |
| fedit    | the full rank-r pair               | average B and A separately                     |
| ffa      | B only (A frozen, shared init)     | average B                                      |
| flora    | fresh rank-r_k adapters            | stack (exact), merge into base                 |
| florist  | fresh rank-r_k adapters (v1)       | exact SVD from stacks, energy τ, merge         |
| flexlora | rank-r_k cut of the global ΔW      | Σ ΔW_k kept whole (SVD), cut per client        |
| hetlora  | rank-r_k cut of the global pair    | zero-pad, average, keep largest rank           |
"""

from __future__ import annotations

from functools import partial

from fedlora import aggregation, seeding
from fedlora.methods.base import ClientPlan, Method
from fedlora.methods.factor_averaging import FactorAveraging
from fedlora.methods.hetlora import HetLoRA
from fedlora.methods.merging import MergeIntoBase
from fedlora.methods.truncation import TruncatedGlobal
from fedlora.server_optimizer import ServerOptimizer

METHODS = ("fslora", "fedit", "ffa", "flora", "florist", "flexlora", "hetlora")


def build_method(config, setup) -> Method:
    """The method named by ``config.method`` over the model's LoRA target modules."""
    name, shapes, budgets = config.method, setup.shapes, setup.budgets
    scale = config.scale_rule
    init = seeding.generator(config.seed, "init")
    if name in ("fslora", "fedit", "ffa"):
        s = config.server
        optimizer = ServerOptimizer(s.optimizer, s.lr, tuple(s.betas), s.eps, s.weight_decay)
        sketched = budgets if name == "fslora" else None
        return FactorAveraging(name, shapes, config.lora.rank, scale, sketched, optimizer, init, freeze_A=name == "ffa")
    if name == "flora":
        return MergeIntoBase(name, shapes, scale, budgets, aggregation.flora, {})
    if name == "florist" and config.florist.handoff == "merge":
        combine = partial(aggregation.florist, tau=config.florist.tau)
        return MergeIntoBase(name, shapes, scale, budgets, combine, {"tau": config.florist.tau})
    if name == "florist":
        combine = partial(aggregation.florist, tau=config.florist.tau)
        options = {"tau": config.florist.tau, "handoff": "pad/truncate the global factors (MLSys code)"}
        return TruncatedGlobal(name, shapes, scale, budgets, combine, init, options)
    if name == "flexlora" and config.flexlora.server_rank == "full":
        # the exact SVD of Σ w_k ΔW_k from the stacked factors: FlexLoRA's dense SVD without forming m×n
        combine = partial(aggregation.florist, tau=1.0)
        options = {"server_rank": "full", "handoff": "rank-r_k SVD cut of the whole aggregated update"}
        return TruncatedGlobal(name, shapes, scale, budgets, combine, init, options)
    if name == "flexlora":
        combine = partial(aggregation.flexlora, rank=max(budgets))
        options = {"server_rank": "max_client", "handoff": "rank-r_k SVD cut of the global truncated at max r_k"}
        return TruncatedGlobal(name, shapes, scale, budgets, combine, init, options)
    if name == "hetlora":
        return HetLoRA(shapes, scale, budgets, init)
    raise ValueError(f"method: unknown method {name!r}")


__all__ = ["METHODS", "ClientPlan", "Method", "build_method"]

"""Federated methods: what each client receives and how the server aggregates.

| method   | clients train                      | server                                         |
|----------|------------------------------------|------------------------------------------------|
| fslora   | a random rank-k_i block of global  | scatter block updates, weighted sum (unbiased) |
| fedit    | the full rank-r pair               | average B and A separately                     |
| ffa      | B only (A frozen, shared init)     | average B                                      |
| flora    | fresh rank-r_k adapters            | stack (exact), merge into base                 |
| florist  | fresh rank-r_k adapters (v1)       | exact SVD from stacks, energy τ, merge         |
| flexlora | rank-r_k cut of the global ΔW      | dense Σ ΔW_k, truncated SVD                    |
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
    name, shapes, alpha, budgets = config.method, setup.shapes, config.lora.alpha, setup.budgets
    init = seeding.generator(config.seed, "init")
    if name in ("fslora", "fedit", "ffa"):
        s = config.server
        optimizer = ServerOptimizer(kind=s.optimizer, lr=s.lr, betas=tuple(s.betas), eps=s.eps)
        sketched = budgets if name == "fslora" else None
        return FactorAveraging(name, shapes, config.lora.rank, alpha, sketched, optimizer, init, freeze_A=name == "ffa")
    if name == "flora":
        return MergeIntoBase(name, shapes, alpha, budgets, aggregation.flora, {})
    if name == "florist" and config.florist.handoff == "merge":
        combine = partial(aggregation.florist, tau=config.florist.tau)
        return MergeIntoBase(name, shapes, alpha, budgets, combine, {"tau": config.florist.tau})
    if name == "florist":
        combine = partial(aggregation.florist, tau=config.florist.tau)
        options = {"tau": config.florist.tau, "handoff": "pad/truncate the global factors (MLSys code)"}
        return TruncatedGlobal(name, shapes, alpha, budgets, combine, init, options)
    if name == "flexlora":
        combine = partial(aggregation.flexlora, rank=max(budgets))
        return TruncatedGlobal(name, shapes, alpha, budgets, combine, init, {"handoff": "rank-r_k SVD truncation"})
    if name == "hetlora":
        return HetLoRA(shapes, alpha, budgets, init)
    raise ValueError(f"method: unknown method {name!r}")


__all__ = ["METHODS", "ClientPlan", "Method", "build_method"]

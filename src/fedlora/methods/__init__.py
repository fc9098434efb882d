"""Federated methods: what each client receives and how the server aggregates."""

from __future__ import annotations

from fedlora import seeding
from fedlora.methods.base import ClientPlan, Method
from fedlora.methods.factor_averaging import FactorAveraging
from fedlora.server_optimizer import ServerOptimizer


def build_method(config, setup) -> Method:
    """The method named by ``config.method`` over the model's LoRA target modules."""
    s = config.server
    optimizer = ServerOptimizer(kind=s.optimizer, lr=s.lr, betas=tuple(s.betas), eps=s.eps)
    init = seeding.generator(config.seed, "init")
    if config.method in ("fslora", "fedit"):
        budgets = None if config.method == "fedit" else setup.budgets
        return FactorAveraging(
            config.method, setup.shapes, config.lora.rank, config.lora.alpha, budgets, optimizer, init
        )
    raise ValueError(f"method: unknown method {config.method!r}")


__all__ = ["ClientPlan", "Method", "FactorAveraging", "build_method"]

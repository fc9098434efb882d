"""Federated methods: what each client receives and how the server aggregates, one module per method.

| method   | clients train                      | server                                         |
|----------|------------------------------------|------------------------------------------------|
| fslora   | a random rank-k_i block of global  | scatter block updates, weighted sum (unbiased) |
| fedit    | the full rank-r pair               | average B and A separately                     |
| ffa      | B only (A frozen, shared init)     | average B                                      |
| flora    | fresh rank-r_k adapters            | stack (exact), merge into base                 |
| florist  | fresh rank-r_k adapters (v1)       | exact SVD from stacks, energy τ, merge         |
| flexlora | rank-r_k cut of the global ΔW      | Σ ΔW_k kept whole (SVD), cut per client        |
| hetlora  | rank-r_k cut of the global pair    | zero-pad, average, keep largest rank           |
| rolora   | B (odd rounds) or A (even rounds)  | average the trained factor (exact product)     |
| fedsa    | A and its own B (kept on client)   | average A; B never leaves the client           |
| fedex    | the full rank-r pair               | average B, A; merge residual Σ w B_k A_k − B̄Ā |
| fedsb    | R (r×r) between fixed B, A         | average R (exact)                              |

Each method module (``fedlora.methods.<name>``) registers a :class:`MethodSpec` (``fedlora.methods.registry``,
whose docstring describes the interface). Importing this package registers the built-in methods listed in
``BUILTIN_MODULES`` (a new built-in method adds its module there); a user's own method registers itself from its
own package (config ``plugins = ["mypkg.mymethod"]``; docs/methods.md). The state classes (``factor_averaging``,
``merging``, ``truncation``, ``zero_padding``) import torch; this package and the method modules do not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedlora.methods.registry import (
    BuildContext,
    Convention,
    Fit,
    MethodSpec,
    Options,
    PayloadContext,
    PayloadSizes,
    factor_payload,
    factor_tensors,
    get,
    import_plugins,
    known,
    names,
    register,
    specs,
    unregister,
)

if TYPE_CHECKING:
    from fedlora.methods.base import ClientPlan, Method

BUILTIN_MODULES = (
    "fslora",
    "florist",
    "flora",
    "flexlora",
    "hetlora",
    "fedit",
    "ffa",
    "rolora",
    "fedsa",
    "fedex",
    "fedsb",
)
"""The built-in method modules, imported (and so registered) in this order: the report's order."""

for _module in BUILTIN_MODULES:
    importlib.import_module(f"fedlora.methods.{_module}")

METHODS: tuple[str, ...] = names()
"""The built-in methods (a user's registered methods are in :func:`names`)."""


def build_context(config, shapes, budgets, client_states=None, setup=None) -> BuildContext:
    """What ``config.method``'s builder receives, over the model's LoRA modules and the clients' budgets."""
    return BuildContext(
        name=config.method,
        shapes=shapes,
        budgets=list(budgets),
        rank=config.lora.rank,
        scale=config.scale_rule,
        seed=config.seed,
        options=config.method_options(),
        server=config.server,
        config=config,
        client_states=client_states,
        setup=setup,
    )


def build_method(config, setup, client_states=None) -> Method:
    """The server state of the method named by ``config.method`` over the model's LoRA target modules
    (``setup.shapes``) and the clients' budgets (``setup.budgets``); ``client_states``: the folder of the clients'
    state stores when the server can read them (in-process runs), else None."""
    return get(config.method).build(build_context(config, setup.shapes, setup.budgets, client_states, setup))


def __getattr__(name: str) -> Any:  # the torch-heavy protocol types, imported on first use
    if name in ("ClientPlan", "Method"):
        from fedlora.methods import base

        return getattr(base, name)
    raise AttributeError(f"module 'fedlora.methods' has no attribute {name!r}")


__all__ = [
    "BUILTIN_MODULES",
    "METHODS",
    "BuildContext",
    "ClientPlan",
    "Convention",
    "Fit",
    "Method",
    "MethodSpec",
    "Options",
    "PayloadContext",
    "PayloadSizes",
    "build_context",
    "build_method",
    "factor_payload",
    "factor_tensors",
    "get",
    "import_plugins",
    "known",
    "names",
    "register",
    "specs",
    "unregister",
]

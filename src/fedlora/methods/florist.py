"""FLoRIST (arXiv 2506.09199, MLSys 2026): the method's registry entry and its options (``[florist]``).

The server takes the exact SVD of Σ a_k ΔW_k from the stacked factors (never m×n) and keeps the smallest rank
holding a share τ of the energy. ``handoff = "merge"`` (the paper's Algorithm 1) folds it into the base and clients
start fresh adapters (``fedlora.methods.merging``); ``"pad"`` (the MLSys code) sends each client the global factors
padded/truncated to its rank (``fedlora.methods.truncation``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedlora.methods.registry import (
    BuildContext,
    Convention,
    Fit,
    MethodSpec,
    Options,
    PayloadContext,
    PayloadSizes,
    base_update_payload,
    factor_payload,
    register,
)


class FloristConfig(Options):
    """FLoRIST's options."""

    tau: float = Field(0.9, gt=0, le=1)
    """Energy share kept per module: the smallest rank p with Σ_{i≤p} σ_i² ≥ τ Σ σ_i²; τ = 1 keeps all (FLoRA)."""
    handoff: Literal["merge", "pad"] = "merge"
    """"merge": fold the global update into the base, fresh adapters each round (the paper's v1).
    "pad": send each client the global factors padded/truncated to its rank (the MLSys code)."""


def build(ctx: BuildContext):
    """Merge-into-base (``handoff = "merge"``) or truncated-global (``"pad"``) state combining by FLoRIST's SVD."""
    from functools import partial

    from fedlora import aggregation
    from fedlora.methods.merging import MergeIntoBase
    from fedlora.methods.truncation import TruncatedGlobal

    tau = ctx.options.tau
    combine = partial(aggregation.florist, tau=tau)
    if ctx.options.handoff == "merge":
        return MergeIntoBase(ctx.name, ctx.shapes, ctx.scale, ctx.budgets, combine, {"tau": tau})
    options = {"tau": tau, "handoff": "pad/truncate the global factors (MLSys code)"}
    return TruncatedGlobal(ctx.name, ctx.shapes, ctx.scale, ctx.budgets, combine, ctx.init_generator(), options)


def payload(ctx: PayloadContext) -> PayloadSizes:
    """merge: the previous round's update, rank ≤ min(Σ r_k, m, n) per module; pad: the client's factors."""
    if ctx.options.handoff == "merge":
        return base_update_payload(ctx, lambda stacked, m, n: min(stacked, m, n))
    return factor_payload(ctx)


SPEC = register(
    MethodSpec(
        name="florist",
        summary="fresh rank-r_k adapters (v1) | exact SVD from stacks, energy τ, merge",
        build=build,
        convention=Convention("constant", 2.0, "hari1016/FLoRIST main.py (lora_alpha = 2 * local_ranks[k])"),
        ranks="per_client",
        payload=payload,
        dp=Fit(False, "takes an SVD of the stack of individual factors (DP would need dense m×n noise on their sum)"),
        secure_aggregation=Fit(
            False, "the SVD of the stacks needs the individual factors (cross-client products B_iᵀ B_j)"
        ),
        options=FloristConfig,
        merges_into_base=lambda options: options.handoff == "merge",
        source="arXiv 2506.09199; hari1016/FLoRIST",
    )
)

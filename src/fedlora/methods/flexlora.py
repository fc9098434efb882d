"""FlexLoRA (arXiv 2402.11505): the method's registry entry and its options (``[flexlora]``).

The server keeps the aggregated ΔW = Σ p_k B_k A_k (as factors, never m×n) and gives each client its SVD cut at the
client's rank (``fedlora.methods.truncation``).
"""

from __future__ import annotations

from typing import Literal

from fedlora.methods.registry import BuildContext, Convention, Fit, MethodSpec, Options, factor_payload, register


class FlexLoRAConfig(Options):
    """FlexLoRA's options."""

    server_rank: Literal["full", "max_client"] = "full"
    """"full": the server keeps the whole aggregated ΔW = Σ p_k B_k A_k and each client gets its SVD cut at its own
    rank (the paper's form; held exactly as factors of rank ≤ Σ r_k, from the SVD of the stacked factors, never
    as m×n). "max_client": the global is truncated at the largest client rank after each round."""


def build(ctx: BuildContext):
    """Truncated-global state: the exact SVD of Σ w_k ΔW_k (``server_rank = "full"``) or its cut at max r_k."""
    from functools import partial

    from fedlora import aggregation
    from fedlora.methods.truncation import TruncatedGlobal

    if ctx.options.server_rank == "full":
        # the exact SVD of Σ w_k ΔW_k from the stacked factors: FlexLoRA's dense SVD without forming m×n
        combine = partial(aggregation.florist, tau=1.0)
        options = {"server_rank": "full", "handoff": "rank-r_k SVD cut of the whole aggregated update"}
    else:
        combine = partial(aggregation.flexlora, rank=max(ctx.budgets))
        options = {"server_rank": "max_client", "handoff": "rank-r_k SVD cut of the global truncated at max r_k"}
    return TruncatedGlobal(ctx.name, ctx.shapes, ctx.scale, ctx.budgets, combine, ctx.init_generator(), options)


SPEC = register(
    MethodSpec(
        name="flexlora",
        summary="rank-r_k cut of the global ΔW | Σ ΔW_k kept whole (SVD), cut per client",
        build=build,
        convention=Convention(
            "alpha_over_rank",
            16.0,
            "alibaba/FederatedScope branch FlexLoRA main.py get_peft (lora_alpha 16 at every rank)",
        ),
        ranks="per_client",
        payload=factor_payload,
        dp=Fit(
            False, "truncates an SVD of the summed products (DP would need each B_k A_k clipped and dense m×n noise)"
        ),
        secure_aggregation=Fit(
            False, "the server forms Σ w_k B_k A_k from the individual factors (sum-only: dense m×n products)"
        ),
        options=FlexLoRAConfig,
        source="arXiv 2402.11505; alibaba/FederatedScope branch FlexLoRA",
    )
)

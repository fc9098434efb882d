"""FLoRA (arXiv 2409.05976): the method's registry entry. Clients train fresh rank-r_k adapters; the server stacks
them (exact: B A = Σ a_k ΔW_k) and merges the result into the base (``fedlora.methods.merging``)."""

from __future__ import annotations

from fedlora.methods.registry import (
    BuildContext,
    Convention,
    Fit,
    MethodSpec,
    PayloadContext,
    PayloadSizes,
    base_update_payload,
    register,
)


def build(ctx: BuildContext):
    """Merge-into-base state combining the clients' products by stacking."""
    from fedlora import aggregation
    from fedlora.methods.merging import MergeIntoBase

    return MergeIntoBase(ctx.name, ctx.shapes, ctx.scale, ctx.budgets, aggregation.flora, {})


def payload(ctx: PayloadContext) -> PayloadSizes:
    """The base update FLoRA sends is the whole stack: rank Σ r_k of the round's participants."""
    return base_update_payload(ctx, lambda stacked, m, n: stacked)


SPEC = register(
    MethodSpec(
        name="flora",
        summary="fresh rank-r_k adapters | stack (exact), merge into base",
        build=build,
        convention=Convention("constant", 2.0, "ATP-1010/FederatedLLM main.py (lora_alpha = 2 * local_ranks[client])"),
        ranks="per_client",
        payload=payload,
        dp=Fit(False, "merges the stack of every client's own factors (each is released as is)"),
        secure_aggregation=Fit(
            False, "the global update is the stack of every client's factors; Σ B_k and Σ A_k lose the cross terms"
        ),
        merges_into_base=True,
        source="arXiv 2409.05976; ATP-1010/FederatedLLM",
    )
)

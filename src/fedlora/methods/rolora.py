"""RoLoRA (arXiv 2502.01755, NeurIPS 2025): the method's registry entry. Every client trains the full rank-r pair's
B in odd rounds (A frozen) and its A in even rounds (B frozen); the server averages the trained factor, so the
product of the global pair is exactly Σ w_k B_k A_k (``fedlora.methods.alternating``, ``aggregation.rolora``)."""

from __future__ import annotations

from fedlora.methods.fslora import AVERAGES_DELTAS
from fedlora.methods.registry import (
    BuildContext,
    Convention,
    Fit,
    MethodSpec,
    PayloadContext,
    PayloadSizes,
    factor_tensors,
    register,
)


def build(ctx: BuildContext):
    """The rank-r global pair, the round's factor trained by every client, and the ``[server]`` step."""
    from fedlora.methods.alternating import RoLoRA
    from fedlora.methods.factor_averaging import server_optimizer

    return RoLoRA(ctx.shapes, ctx.rank, ctx.scale, server_optimizer(ctx.server), ctx.init_generator())


def payload(ctx: PayloadContext) -> PayloadSizes:
    """Down: the whole rank-r pair (the client needs both factors); up: the larger of B (odd rounds) and A (even)."""
    tensors = factor_tensors(ctx.shapes, {name: ctx.rank for name in ctx.shapes}, "")
    B = {k: v for k, v in tensors.items() if k.endswith("lora_B")}
    A = {k: v for k, v in tensors.items() if k.endswith("lora_A")}
    size = lambda ts: sum(a * b for a, b in ts.values())  # noqa: E731
    up, which = (B, "B") if size(B) >= size(A) else (A, "A")
    down = factor_tensors(ctx.shapes, {name: ctx.rank for name in ctx.shapes}, "adapter.")
    return PayloadSizes(down, up, f"rank-{ctx.rank} factors of {len(ctx.shapes)} modules", f"rank-{ctx.rank} {which}")


SPEC = register(
    MethodSpec(
        name="rolora",
        summary="B (odd rounds) or A (even rounds) of the full pair | average the trained factor (exact)",
        build=build,
        convention=Convention(
            "constant", 2.0, "fedlora's choice: FedIT's scale (no public RoLoRA code found; arXiv 2502.01755 read)"
        ),
        ranks="full",
        payload=payload,
        dp=AVERAGES_DELTAS,
        secure_aggregation=Fit(True, "sums the one factor the round trained (the other is the common global one)"),
        update_space="factors",
        source="arXiv 2502.01755 (NeurIPS 2025)",
    )
)

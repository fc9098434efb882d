"""HetLoRA (arXiv 2401.06432) as a baseline: the method's registry entry. One global pair at the largest rank;
clients get it truncated to their rank; the server zero-pads, averages and keeps r_max
(``fedlora.methods.zero_padding``)."""

from __future__ import annotations

from fedlora.methods.registry import BuildContext, Convention, Fit, MethodSpec, factor_payload, register


def build(ctx: BuildContext):
    """The zero-padding state at the largest client rank."""
    from fedlora.methods.zero_padding import HetLoRA

    return HetLoRA(ctx.shapes, ctx.scale, ctx.budgets, ctx.init_generator())


SPEC = register(
    MethodSpec(
        name="hetlora",
        summary="rank-r_k cut of the global pair | zero-pad, average, keep largest rank",
        build=build,
        convention=Convention(
            "constant",
            2.0,
            "no public HetLoRA code; the zero-padding baselines of ATP-1010/FederatedLLM and "
            "hari1016/FLoRIST train at lora_alpha = 2 r_k",
        ),
        ranks="per_client",
        payload=factor_payload,
        dp=Fit(False, "averages zero-padded client states, so a client's influence is not bounded by the clip norm"),
        secure_aggregation=Fit(
            True, "sums zero-padded factors, at a cost: small clients upload r_max-sized (mostly zero) factors"
        ),
        source="arXiv 2401.06432 (no public code)",
    )
)

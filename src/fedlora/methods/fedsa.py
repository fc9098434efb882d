"""FedSA-LoRA (Guo et al., ICLR 2025): the method's registry entry. Every client trains its own B with the shared A
at the full rank; only A travels up and is averaged; each client's B stays with it as client state
(``fedlora.methods.shared_a``, ``fedlora.client.state``)."""

from __future__ import annotations

from fedlora.methods.registry import BuildContext, Convention, Fit, MethodSpec, PayloadContext, PayloadSizes, register


def build(ctx: BuildContext):
    """The shared rank-r A; the clients' B live in their stores (``ctx.client_states`` in-process)."""
    from fedlora.methods.shared_a import SharedA

    config = ctx.config
    return SharedA(
        ctx.shapes,
        ctx.rank,
        ctx.scale,
        ctx.init_generator(),
        config.partition.num_clients,
        config.weighting,
        ctx.client_states,
    )


def payload(ctx: PayloadContext) -> PayloadSizes:
    """A only, both ways: the client's B never travels."""
    down = {f"adapter.{name}.lora_A": (ctx.rank, n) for name, (_, n) in ctx.shapes.items()}
    up = {f"{name}.lora_A": (ctx.rank, n) for name, (_, n) in ctx.shapes.items()}
    what = f"the shared rank-{ctx.rank} A of {len(ctx.shapes)} modules"
    return PayloadSizes(down, up, what, what)


SPEC = register(
    MethodSpec(
        name="fedsa",
        summary="its own B (kept) with the shared A | average A only; B never leaves the client",
        build=build,
        convention=Convention(
            "alpha_over_rank",
            16.0,
            "Pengxin-Guo/FedSA-LoRA federatedscope/glue/yamls/fedsa-lora.yaml (peft lora r 8, lora_alpha 16, "
            "local_param lora_B); federatedscope/core/aggregators/clients_avg_aggregator.py (weights n_k / sum n)",
        ),
        ranks="full",
        payload=payload,
        dp=Fit(True, "averages the clients' A deltas (B is never released), so clipping + Gaussian noise on A is DP"),
        secure_aggregation=Fit(True, "sums the clients' A (B stays on the client)"),
        update_space="factors",
        source="ICLR 2025 (arXiv 2410.01463); Pengxin-Guo/FedSA-LoRA",
    )
)

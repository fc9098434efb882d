"""FedIT (arXiv 2305.05644): the method's registry entry. Every client trains the full rank-r pair; the server
averages B and A separately (``fedlora.methods.factor_averaging``)."""

from __future__ import annotations

from fedlora.methods.fslora import AVERAGES_DELTAS
from fedlora.methods.registry import BuildContext, Convention, Fit, MethodSpec, factor_payload, register


def build(ctx: BuildContext):
    """The rank-r global pair, every client training all of it, and the ``[server]`` step."""
    from fedlora.methods.factor_averaging import FactorAveraging, server_optimizer

    optimizer = server_optimizer(ctx.server)
    return FactorAveraging(ctx.name, ctx.shapes, ctx.rank, ctx.scale, None, optimizer, ctx.init_generator())


SPEC = register(
    MethodSpec(
        name="fedit",
        summary="the full rank-r pair | average B and A separately",
        build=build,
        # as the FLoRA / FLoRIST code runs it (homogeneous r = 16, lora_alpha = 32: s = 2)
        convention=Convention("constant", 2.0, "ATP-1010/FederatedLLM main.py (lora_r 16, lora_alpha 32)"),
        ranks="full",
        payload=factor_payload,
        dp=AVERAGES_DELTAS,
        secure_aggregation=Fit(True, "averages B and A separately: two sums of per-client factors"),
        update_space="factors",
        source="arXiv 2305.05644",
    )
)

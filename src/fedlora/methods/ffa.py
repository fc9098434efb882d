"""FFA-LoRA (arXiv 2403.12313): the method's registry entry. A stays frozen at a shared random init; every client
trains B at the full rank and the server averages B (``fedlora.methods.factor_averaging``)."""

from __future__ import annotations

from fedlora.methods.fslora import AVERAGES_DELTAS
from fedlora.methods.registry import BuildContext, Convention, Fit, MethodSpec, factor_payload, register


def build(ctx: BuildContext):
    """The rank-r global pair with A frozen, and the ``[server]`` step."""
    from fedlora.methods.factor_averaging import FactorAveraging, server_optimizer

    optimizer = server_optimizer(ctx.server)
    init = ctx.init_generator()
    return FactorAveraging(ctx.name, ctx.shapes, ctx.rank, ctx.scale, None, optimizer, init, freeze_A=True)


SPEC = register(
    MethodSpec(
        name="ffa",
        summary="B only (A frozen at a shared init) | average B",
        build=build,
        convention=Convention("constant", 2.0, "fedlora's choice: FedIT's scale (FFA-LoRA's own code not checked)"),
        ranks="full",
        payload=factor_payload,
        dp=AVERAGES_DELTAS,
        secure_aggregation=Fit(True, "sums B (A is a shared public init, so Σ w_i B_i A is the average ΔW)"),
        update_space="factors",
        source="arXiv 2403.12313",
    )
)

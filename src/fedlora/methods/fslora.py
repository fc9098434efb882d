"""FSLoRA — federated sketching LoRA (arXiv 2501.19389): the method's registry entry.

Clients train a random rank-k_i block of the rank-r global pair (one index set per module shared by B's columns
and A's rows, scaled r/k_i); the server scatters the block updates back and takes their weighted sum (unbiased),
applied directly or through a server optimizer (``fedlora.methods.factor_averaging``, docs/methods.md).
"""

from __future__ import annotations

from fedlora.methods.registry import BuildContext, Convention, Fit, MethodSpec, factor_payload, register

AVERAGES_DELTAS = Fit(True, "averages client update deltas (a weighted sum), so clipping + Gaussian noise makes it DP")


def build(ctx: BuildContext):
    """The rank-r global pair with FSLoRA's sketched client blocks (budgets k_i) and the ``[server]`` step."""
    from fedlora.methods.factor_averaging import FactorAveraging, server_optimizer

    optimizer = server_optimizer(ctx.server)
    return FactorAveraging(ctx.name, ctx.shapes, ctx.rank, ctx.scale, ctx.budgets, optimizer, ctx.init_generator())


SPEC = register(
    MethodSpec(
        name="fslora",
        summary="a random rank-k_i block of the global pair | scatter block updates, weighted sum (unbiased)",
        build=build,
        convention=Convention(
            "rslora",
            1.0,
            "wenzhifang/Federated-Sketching-LoRA-Implementation src/models.py add_adapter (use_rslora=True), "
            "src/arg.py --lora-alpha 1; src/LoRA_Sketching.py divides the summed update by the sampled clients' "
            "number",
            weighting="uniform",
        ),
        ranks="per_client",
        payload=factor_payload,
        dp=AVERAGES_DELTAS,
        secure_aggregation=Fit(
            True,
            "sums the clients' scattered rank-r updates, at a cost: each client uploads r/k_i times its block, "
            "losing the upload saving",
        ),
        update_space="factors",
        sketched=True,
        source="arXiv 2501.19389; wenzhifang/Federated-Sketching-LoRA-Implementation",
    )
)

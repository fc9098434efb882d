"""A user's own method, registered from outside fedlora (docs/methods.md, "Adding your own method").

``toy_mix``: every client trains the full rank-r pair (as in FedIT); the server moves the global pair a share
``mix`` of the way to the clients' weighted average, θ ← θ + mix · Σ_k w_k (θ_k − θ). ``mix = 1`` is FedIT.
It reuses fedlora's factor-averaging state with a plain averaging step of rate ``mix``.
"""

from __future__ import annotations

from pydantic import Field

from fedlora import methods


class ToyMixOptions(methods.Options):
    mix: float = Field(0.5, gt=0, le=1)
    """Share of the way from the current global pair to the clients' average taken each round."""


def build(ctx: methods.BuildContext):
    from fedlora.methods.factor_averaging import FactorAveraging
    from fedlora.server_optimizer import ServerOptimizer

    step = ServerOptimizer("avg", ctx.options.mix)
    return FactorAveraging(ctx.name, ctx.shapes, ctx.rank, ctx.scale, None, step, ctx.init_generator())


methods.register(
    methods.MethodSpec(
        name="toy_mix",
        summary="the full rank-r pair | move the global a share `mix` towards the clients' average",
        build=build,
        convention=methods.Convention("constant", 2.0, "a test's choice (FedIT's)"),
        ranks="full",
        payload=methods.factor_payload,
        dp=methods.Fit(True, "takes a weighted sum of client update deltas"),
        secure_aggregation=methods.Fit(True, "sums B and A separately"),
        options=ToyMixOptions,
    ),
    replace=True,
)

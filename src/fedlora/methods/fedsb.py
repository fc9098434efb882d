"""Fed-SB (arXiv 2502.15436): the method's registry entry. B and A are fixed (LoRA-SB's initialisation from the
truncated SVD of a sign gradient); every client trains only R (r×r) between them and uploads it; the server
averages R, which is exact (``fedlora.methods.fixed_frame``)."""

from __future__ import annotations

from pydantic import Field

from fedlora.methods.fedex import refuse_mixed_budgets
from fedlora.methods.registry import (
    BuildContext,
    Convention,
    Fit,
    MethodSpec,
    Options,
    PayloadContext,
    PayloadSizes,
    factor_tensors,
    register,
)


class FedSBOptions(Options):
    """Fed-SB's LoRA-SB initialisation (``fedlora.lora.sb_init``; docs/methods.md), config section ``[fedsb]``."""

    init_samples: int = Field(170, ge=1)
    """Training examples whose summed gradient initialises B, R, A (the authors' ``num_samples`` default, 170),
    drawn with the run's seed from the pooled client shards (the authors take them from the pooled training set)."""
    init_step: float | None = Field(None, gt=0)
    """η in G = −η·sign(∇W); unset: ``train.lr``. (The authors' code uses lr / (warmup_ratio · total steps).)"""


def build(ctx: BuildContext):
    """The fixed frame and R from LoRA-SB's initialisation on the run's model and data; without them (a state
    rebuilt to load a checkpoint) empty, filled by ``load_state_tensors``."""
    from fedlora.methods.fixed_frame import FedSB, lora_sb_state

    refuse_mixed_budgets(ctx)
    setup = ctx.setup
    if getattr(setup, "model", None) is None:
        return FedSB(ctx.shapes, ctx.rank, ctx.scale, None, None)
    options = ctx.options or FedSBOptions()
    step = options.init_step or ctx.config.train.lr
    frame, R, facts = lora_sb_state(setup, ctx.rank, options.init_samples, step, ctx.seed, ctx.config.train.batch_size)
    return FedSB(ctx.shapes, ctx.rank, ctx.scale, frame, R, facts)


def payload(ctx: PayloadContext) -> PayloadSizes:
    """Down: the fixed frame ("frame.", B m×r and A r×n) and R ("adapter.<module>.lora_B", r×r); up: R alone."""
    r = ctx.rank
    download = factor_tensors(ctx.shapes, {name: r for name in ctx.shapes}, "frame.")
    download.update({f"adapter.{name}.lora_B": (r, r) for name in ctx.shapes})
    upload = {f"{name}.lora_B": (r, r) for name in ctx.shapes}
    upload_what = f"R ({r}×{r}) of {len(ctx.shapes)} modules"
    return PayloadSizes(download, upload, f"the fixed rank-{r} frame and R", upload_what)


SPEC = register(
    MethodSpec(
        name="fedsb",
        summary="R (r×r) between fixed B, A | average R (exact; upload r² per module)",
        build=build,
        convention=Convention(
            "constant",
            1.0,
            "CERT-Lab/fed-sb (read in its public copy putssander/fed-sb) fed_sb/fed/CR/multiround_train_cr_fed.py "
            "(args.lora_alpha = args.lora_r for fed-sb: s = 1; R averaged by a plain mean)",
            weighting="uniform",
        ),
        ranks="full",
        payload=payload,
        dp=Fit(
            True,
            "averages client deltas of R (a weighted sum of r×r matrices), so clipping + Gaussian noise makes it DP",
        ),
        secure_aggregation=Fit(True, "the global R is Σ w_k R_k: one sum of r×r matrices, what clients upload anyway"),
        options=FedSBOptions,
        # s·(B'A' − BA) of the inner pair is s·(R' − R); B and A from an SVD have orthonormal columns / rows, so
        # this r×r view has the norms and inner products of the model-space update s·B(R' − R)A
        update_space="product",
        source="arXiv 2502.15436; CERT-Lab/fed-sb; LoRA-SB arXiv 2411.19557, RaghavSinghal10/lora-sb",
    )
)

"""FedEx-LoRA (arXiv 2410.09432, ACL 2025): the method's registry entry. Every client trains the full rank-r pair;
the server averages B and A separately and folds the averaging error s·(Σ w_k B_k A_k − B̄Ā) into the frozen base,
so the global model is exact (``fedlora.methods.residual_merging``)."""

from __future__ import annotations

from fedlora.errors import ConfigError
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


def refuse_mixed_budgets(ctx: BuildContext) -> None:
    """ConfigError naming ``budgets.per_client`` when the config gives clients different ranks: FedEx-LoRA and
    Fed-SB train one shared rank (``lora.rank``); their papers have no heterogeneous ranks."""
    budgets = getattr(getattr(ctx.config, "budgets", None), "per_client", None)
    if budgets is not None and len(set(budgets)) > 1:
        raise ConfigError(
            f"budgets.per_client: {ctx.name} trains every client at lora.rank={ctx.rank} (its paper has no "
            f"heterogeneous ranks), but the budgets differ ({min(budgets)}..{max(budgets)}); drop them or use a "
            "per-client-rank method"
        )


def build(ctx: BuildContext):
    """The rank-r global pair and the history of merged residuals."""
    from fedlora.methods.residual_merging import FedExLoRA

    refuse_mixed_budgets(ctx)
    return FedExLoRA(ctx.shapes, ctx.rank, ctx.scale, ctx.init_generator())


def payload(ctx: PayloadContext) -> PayloadSizes:
    """Down: the global pair ("adapter.", rank r) and the previous round's residual ("sync.", rank (K+1)·r for K
    participants); up: the client's rank-r pair."""
    r = ctx.rank
    residual = (ctx.per_round + 1) * r
    download = factor_tensors(ctx.shapes, {name: r for name in ctx.shapes}, "adapter.")
    download.update(factor_tensors(ctx.shapes, {name: residual for name in ctx.shapes}, "sync."))
    upload = factor_tensors(ctx.shapes, {name: r for name in ctx.shapes}, "")
    what = f"rank-{r} factors of {len(ctx.shapes)} modules"
    return PayloadSizes(download, upload, f"the global pair and a rank-{residual} residual", what)


SPEC = register(
    MethodSpec(
        name="fedex",
        summary="the full rank-r pair | average B and A, merge the residual Σ w_k B_k A_k − B̄Ā into the base (exact)",
        build=build,
        convention=Convention(
            "alpha_over_rank",
            8.0,
            "RaghavSinghal10/fedex-lora fed_train_glue.py (--lora_r 4, --lora_alpha 8: s = 2) and fed_agg.py "
            "aggregate_models_ours (scaling alpha / r; a plain mean over the clients)",
            weighting="uniform",
        ),
        ranks="full",
        payload=payload,
        dp=Fit(
            False,
            "folds the residual of every client's own product B_k A_k into the base (DP would need each product "
            "clipped and dense m×n noise)",
        ),
        secure_aggregation=Fit(
            False,
            "its residual needs Σ w_k B_k A_k, i.e. each client's own product (Σ B_k and Σ A_k lose the cross terms); "
            "a sum-only variant would have clients upload dense m×n products",
        ),
        merges_into_base=True,
        source="arXiv 2410.09432 (ACL 2025); RaghavSinghal10/fedex-lora fed_agg.py",
    )
)

"""FlexLoRA's server (flexlora.server_rank = "full", the paper's code: the whole aggregated ΔW kept, each client
given its SVD cut) against dense references built with torch.linalg.svd of the explicit ΔW."""

from functools import partial

import pytest
import torch

from fedlora import aggregation
from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import ModuleShape
from fedlora.methods.truncation import TruncatedGlobal

SHAPES = {"q": ModuleShape(12, 10), "v": ModuleShape(8, 10)}
BUDGETS = [1, 2, 3, 5]
SCALE = ScaleRule("alpha_over_rank", 16.0)  # FlexLoRA's own: s_k = 16 / r_k


def _method(server_rank: str) -> TruncatedGlobal:
    combine = (
        partial(aggregation.florist, tau=1.0)
        if server_rank == "full"
        else partial(aggregation.flexlora, rank=max(BUDGETS))
    )
    return TruncatedGlobal("flexlora", SHAPES, SCALE, BUDGETS, combine, torch.Generator().manual_seed(0), {})


def _round(method, clients, weights, seed):
    """Plan ``clients``, give each a random trained pair of its rank (float64), aggregate; returns the dense
    Σ w_k s_k B_k A_k per module that the round should produce."""
    g = torch.Generator().manual_seed(seed)
    plans = [method.plan(c, 0, g) for c in clients]
    uploads = []
    for plan in plans:
        upload = {}
        for name, (B, A) in plan.factors.items():
            upload[name] = (
                (B + torch.randn(B.shape, generator=g)).double(),
                (A + 0.3 * torch.randn(A.shape, generator=g)).double(),
            )
        uploads.append(upload)
    expected = {
        name: sum(w * p.scale * u[name][0] @ u[name][1] for w, p, u in zip(weights, plans, uploads, strict=True))
        for name in SHAPES
    }
    method.factors = {name: (B.double(), A.double()) for name, (B, A) in method.factors.items()}
    method.aggregate(plans, uploads, weights)
    return expected


def _best_rank(dense: torch.Tensor, rank: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(dense, full_matrices=False)
    return U[:, :rank] @ torch.diag(S[:rank]) @ Vh[:rank]


def test_full_server_keeps_the_whole_aggregate_and_cuts_per_client():
    method = _method("full")
    expected = _round(method, [0, 1, 2, 3], [0.1, 0.2, 0.3, 0.4], seed=1)
    for name, (B, A) in method.factors.items():
        dense = expected[name]
        # the global is the whole ΔW (rank Σ r_k = 11 > min(m, n) here is capped by the shapes), exactly
        torch.testing.assert_close(B @ A, dense, rtol=0, atol=1e-10 * dense.norm())
    # next round: each client starts at the best rank-r_k approximation of the whole ΔW (Eckart–Young)
    g = torch.Generator().manual_seed(2)
    for client, rank in enumerate(BUDGETS):
        plan = method.plan(client, 1, g)
        assert plan.scale == SCALE(rank)
        for name, (B, A) in plan.factors.items():
            torch.testing.assert_close(
                plan.scale * B @ A, _best_rank(expected[name], rank), rtol=0, atol=1e-9 * expected[name].norm()
            )


def test_max_client_server_truncates_the_global():
    method = _method("max_client")
    expected = _round(method, [0, 1, 2, 3], [0.25] * 4, seed=3)
    for name, (B, A) in method.factors.items():
        truncated = _best_rank(expected[name], max(BUDGETS))
        torch.testing.assert_close(B @ A, truncated, rtol=0, atol=1e-9 * expected[name].norm())
        # and this differs from the whole update: the tail it drops is far above the tolerance
        assert (truncated - expected[name]).norm() > 1e-3 * expected[name].norm()


@pytest.mark.parametrize("server_rank", ["full", "max_client"])
def test_an_unchanged_client_returns_its_cut(server_rank):
    """A client that trains nothing hands back exactly its cut: s_k B A of the upload equals its starting model."""
    method = _method(server_rank)
    _round(method, [1, 3], [0.5, 0.5], seed=4)
    plan = method.plan(2, 1, torch.Generator().manual_seed(5))
    for name, (B, A) in plan.factors.items():
        cut = _best_rank(method.factors[name][0] @ method.factors[name][1], BUDGETS[2])
        torch.testing.assert_close(plan.scale * B @ A, cut, rtol=0, atol=1e-9)


def test_the_default_flexlora_is_the_papers_full_server():
    from pathlib import Path
    from types import SimpleNamespace

    from fedlora.config import load_config
    from fedlora.methods import build_method

    tiny = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"
    setup = SimpleNamespace(shapes=SHAPES, budgets=BUDGETS)
    full = build_method(load_config(tiny, ["method=flexlora"]), setup)
    assert full.combine.func is aggregation.florist and full.combine.keywords == {"tau": 1.0}
    assert full.options()["server_rank"] == "full"
    cut = build_method(load_config(tiny, ["method=flexlora", "flexlora.server_rank=max_client"]), setup)
    assert cut.combine.func is aggregation.flexlora and cut.combine.keywords == {"rank": max(BUDGETS)}

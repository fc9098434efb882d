"""FedEx-LoRA and Fed-SB aggregation math against dense references (explicit ΔW in float64)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.aggregation import fedex, fedex_parts, fedit, fedsb

F64 = torch.float64
FAST = settings(max_examples=40, deadline=None)


@st.composite
def same_rank_clients(draw):
    """m, n in 1..24, 1..5 clients sharing a rank r in 1..8, weights in [0, 1] (a zero weight included)."""
    m, n, k, r = draw(st.integers(1, 24)), draw(st.integers(1, 24)), draw(st.integers(1, 5)), draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    weights = draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k))
    g = torch.Generator().manual_seed(seed)
    Bs = [torch.randn(m, r, generator=g, dtype=F64) for _ in range(k)]
    As = [torch.randn(r, n, generator=g, dtype=F64) for _ in range(k)]
    return Bs, As, weights


def dense_sum(Bs, As, weights):
    return sum(w * (B @ A) for B, A, w in zip(Bs, As, weights, strict=True))


@FAST
@given(same_rank_clients())
def test_fedex_is_the_exact_weighted_sum_of_client_products(case):
    Bs, As, weights = case
    B, A = fedex(Bs, As, weights)
    torch.testing.assert_close(B @ A, dense_sum(Bs, As, weights), rtol=1e-10, atol=1e-10)


@FAST
@given(same_rank_clients())
def test_fedex_parts_average_the_factors_and_the_residual_is_the_averaging_error(case):
    Bs, As, weights = case
    p = fedex_parts(Bs, As, weights)
    r = Bs[0].shape[1]
    B_ref = sum(w * B for B, w in zip(Bs, weights, strict=True))
    A_ref = sum(w * A for A, w in zip(As, weights, strict=True))
    torch.testing.assert_close(p.B_avg, B_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.A_avg, A_ref, rtol=1e-12, atol=1e-12)
    assert p.B_res.shape[1] == p.A_res.shape[0] == (len(Bs) + 1) * r
    residual = dense_sum(Bs, As, weights) - B_ref @ A_ref  # the paper's ΔW_res, dense
    torch.testing.assert_close(p.B_res @ p.A_res, residual, rtol=1e-10, atol=1e-10)


def test_fedex_residual_is_what_fedit_gets_wrong():
    """A case where FedIT's product is far from the mean of the products and FedEx's global is exact."""
    g = torch.Generator().manual_seed(0)
    Bs = [torch.randn(6, 2, generator=g, dtype=F64) for _ in range(3)]
    As = [torch.randn(2, 5, generator=g, dtype=F64) for _ in range(3)]
    w = [0.5, 0.3, 0.2]
    exact = dense_sum(Bs, As, w)
    B_it, A_it = fedit(Bs, As, w)
    assert (B_it @ A_it - exact).norm() > 0.3 * exact.norm()  # FedIT's error is large here
    p = fedex_parts(Bs, As, w)
    torch.testing.assert_close(p.B_avg @ p.A_avg + p.B_res @ p.A_res, exact, rtol=1e-12, atol=1e-12)


def test_fedex_refuses_mixed_ranks_naming_the_client():
    Bs = [torch.zeros(4, 2), torch.zeros(4, 3)]
    As = [torch.zeros(2, 5), torch.zeros(3, 5)]
    with pytest.raises(ValueError, match=r"^Bs\[1\]: rank 3 differs"):
        fedex(Bs, As, [0.5, 0.5])


@FAST
@given(st.integers(1, 8), st.integers(1, 5), st.integers(0, 2**31 - 1), st.data())
def test_fedsb_average_of_R_is_the_exact_average_of_client_updates(r, k, seed, data):
    m, n = data.draw(st.integers(1, 24)), data.draw(st.integers(1, 24))
    weights = data.draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k))
    g = torch.Generator().manual_seed(seed)
    B, A = torch.randn(m, r, generator=g, dtype=F64), torch.randn(r, n, generator=g, dtype=F64)
    Rs = [torch.randn(r, r, generator=g, dtype=F64) for _ in range(k)]
    R = fedsb(Rs, weights)
    torch.testing.assert_close(R, sum(w * Ri for Ri, w in zip(Rs, weights, strict=True)), rtol=1e-12, atol=1e-12)
    # exactness: the global ΔW is the weighted sum of the clients' ΔW_k = B R_k A (dense reference)
    dense = sum(w * (B @ Ri @ A) for Ri, w in zip(Rs, weights, strict=True))
    torch.testing.assert_close(B @ R @ A, dense, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("Rs", "message"),
    [
        ([torch.zeros(3, 2)], r"^Rs\[0\]: shape 3×2 is not square"),
        ([torch.zeros(3, 3), torch.zeros(2, 2)], r"^Rs\[1\]"),
        ([torch.zeros(3, 3), torch.zeros(3, 3, dtype=F64)], r"^Rs\[1\]: dtype"),
    ],
)
def test_fedsb_bad_input_names_the_client(Rs, message):
    with pytest.raises(ValueError, match=message):
        fedsb(Rs, [1.0] * len(Rs))


def test_fedsb_does_not_modify_its_inputs():
    Rs = [torch.ones(2, 2), 2 * torch.ones(2, 2)]
    before = [R.clone() for R in Rs]
    fedsb(Rs, [0.25, 0.75])
    for R, b in zip(Rs, before, strict=True):
        assert torch.equal(R, b)


@FAST
@given(same_rank_clients(), st.floats(-1.0, 1.0))
def test_fedex_with_the_old_global_as_an_affine_term_of_any_sign(case, c):
    Bs, As, weights = case
    g = torch.Generator().manual_seed(1)
    B_o, A_o = torch.randn(Bs[0].shape, generator=g, dtype=F64), torch.randn(As[0].shape, generator=g, dtype=F64)
    p = fedex_parts(Bs, As, weights, old=(B_o, A_o), old_weight=c)
    B_ref = sum(w * B for B, w in zip(Bs, weights, strict=True)) + c * B_o
    A_ref = sum(w * A for A, w in zip(As, weights, strict=True)) + c * A_o
    torch.testing.assert_close(p.B_avg, B_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.A_avg, A_ref, rtol=1e-12, atol=1e-12)
    exact = dense_sum(Bs, As, weights) + c * (B_o @ A_o)
    torch.testing.assert_close(p.B_avg @ p.A_avg + p.B_res @ p.A_res, exact, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------- the methods' global model, dense, on real layers
from torch import nn  # noqa: E402

from fedlora.client.app import install_adapter  # noqa: E402
from fedlora.lora.layer import LoRALinear, merge_update  # noqa: E402
from fedlora.lora.scaling import ScaleRule  # noqa: E402
from fedlora.lora.state import ModuleShape  # noqa: E402
from fedlora.methods.fixed_frame import FedSB  # noqa: E402
from fedlora.methods.residual_merging import FedExLoRA  # noqa: E402

SHAPES = {"q": ModuleShape(12, 10), "v": ModuleShape(6, 10)}
RULE = ScaleRule("alpha_over_rank", 8.0)  # s = 2 at rank 4 (the FedEx-LoRA code's r = 4, alpha = 8)


def _layers(seed: int) -> dict[str, LoRALinear]:
    torch.manual_seed(seed)
    return {name: LoRALinear(nn.Linear(s.in_features, s.out_features, bias=False)) for name, s in SHAPES.items()}


def _weight(layer: LoRALinear) -> torch.Tensor:
    """The layer's effective m×n weight, read through its forward (base + adapter, framed or not)."""
    with torch.no_grad():
        return layer(torch.eye(layer.in_features)).t().double()


def _uploads(plans, g, train_A=True):
    return [
        {
            n: (B + torch.randn(B.shape, generator=g), A + torch.randn(A.shape, generator=g) if train_A else A)
            for n, (B, A) in p.factors.items()
        }
        for p in plans
    ]


def _base(layer: LoRALinear) -> torch.Tensor:
    layer.clear_adapter()
    return _weight(layer)


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [0.7, 0.6, 0.1]])  # the second: Σ w = 1.4 (affine term)
def test_fedex_global_model_is_the_base_plus_the_weighted_client_updates(weights):
    """Two rounds on real layers: after the loop merges the residual and installs the global pair, the model is
    W + Σ w_k s B_k A_k + (1 − Σ w) s B̄Ā with W the base the clients trained on (dense float64 reference)."""
    layers = _layers(0)
    method = FedExLoRA(SHAPES, 4, RULE, torch.Generator().manual_seed(1))
    s, c = RULE(4), 1 - sum(weights)
    g = torch.Generator().manual_seed(2)
    for round_idx in (1, 2):
        base = {n: _base(layer) for n, layer in layers.items()}
        old = {n: s * B.double() @ A.double() for n, (B, A) in method.factors.items()}
        plans = [method.plan(cid, round_idx, g) for cid in range(3)]
        uploads = _uploads(plans, g)
        method.aggregate(plans, uploads, weights)
        merge_update(layers, method.pending_base_update())  # what the round loop does
        install_adapter(layers, *method.eval_adapter())
        for n, layer in layers.items():
            clients = sum(w * s * (u[n][0].double() @ u[n][1].double()) for u, w in zip(uploads, weights, strict=True))
            torch.testing.assert_close(_weight(layer), base[n] + clients + c * old[n], rtol=0, atol=1e-5)
            assert (clients - s * method.factors[n][0].double() @ method.factors[n][1].double()).norm() > 0.1


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [0.7, 0.6, 0.1]])
def test_fedsb_global_model_is_w0_plus_the_weighted_client_updates(weights):
    """Each client's framed layer is W0 + s B R_k A; after aggregation the global model (R folded into B, as
    evaluated and exported) is W0 + Σ w_k s B R_k A + (1 − Σ w) s B R A (dense float64 reference)."""
    layers = _layers(0)
    g = torch.Generator().manual_seed(3)
    frame = {
        n: (torch.randn(sh.out_features, 4, generator=g), torch.randn(4, sh.in_features, generator=g))
        for n, sh in SHAPES.items()
    }
    method = FedSB(SHAPES, 4, RULE, frame, {n: torch.randn(4, 4, generator=g) for n in SHAPES})
    s, c = RULE(4), 1 - sum(weights)
    W0 = {n: _base(layer) for n, layer in layers.items()}
    old = {n: s * frame[n][0].double() @ R.double() @ frame[n][1].double() for n, R in method.R.items()}
    plans = [method.plan(cid, 1, g) for cid in range(3)]
    uploads = _uploads(plans, g, train_A=False)
    client_dw = []
    for plan, upload in zip(plans, uploads, strict=True):  # the client's own model through the framed layer
        install_adapter(layers, upload, plan.scale, train_A=False, frame=plan.frame)
        dw = {n: _weight(layer) - W0[n] for n, layer in layers.items()}
        for n in SHAPES:
            torch.testing.assert_close(
                dw[n], s * frame[n][0].double() @ upload[n][0].double() @ frame[n][1].double(), rtol=0, atol=1e-5
            )
        client_dw.append(dw)
    method.aggregate(plans, uploads, weights)
    install_adapter(layers, *method.eval_adapter())
    for n, layer in layers.items():
        expected = W0[n] + sum(w * dw[n] for dw, w in zip(client_dw, weights, strict=True)) + c * old[n]
        torch.testing.assert_close(_weight(layer), expected, rtol=0, atol=1e-5)


def test_fedsb_upload_is_r_squared_and_only_R_trains():
    from fedlora.validation import expected_keys

    g = torch.Generator().manual_seed(0)
    frame = {
        n: (torch.randn(sh.out_features, 4, generator=g), torch.randn(4, sh.in_features, generator=g))
        for n, sh in SHAPES.items()
    }
    method = FedSB(SHAPES, 4, RULE, frame, {n: torch.zeros(4, 4) for n in SHAPES})
    plan = method.plan(0, 1, g)
    assert expected_keys(plan) == {f"{n}.lora_B" for n in SHAPES}
    assert all(B.shape == (4, 4) for B, _ in plan.factors.values()) and not plan.train_A
    layers = _layers(0)
    install_adapter(layers, plan.factors, plan.scale, train_A=False, frame=plan.frame)
    trainable = [p for layer in layers.values() for p in layer.parameters() if p.requires_grad]
    assert sorted(p.shape for p in trainable) == [(4, 4), (4, 4)]  # R of each module, nothing else


@pytest.mark.parametrize("method", ["fedex", "fedsb"])
def test_mixed_budgets_are_refused_in_one_line_naming_the_field(method):
    """Neither paper has heterogeneous ranks: examples/tiny.toml's budgets [2, 4, 6, 8] are refused."""
    from pathlib import Path
    from types import SimpleNamespace

    from fedlora.config import load_config
    from fedlora.errors import ConfigError
    from fedlora.methods import build_method

    tiny = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"
    config = load_config(tiny, [f"method={method}"])
    with pytest.raises(ConfigError) as err:
        build_method(config, SimpleNamespace(shapes=SHAPES, budgets=[8, 8, 8, 8]))
    text = str(err.value)
    assert text.startswith(f"budgets.per_client: {method} trains every client at lora.rank=8") and "\n" not in text
    same = load_config(tiny, [f"method={method}", "budgets.per_client=[8,8,8,8]"])
    build_method(same, SimpleNamespace(shapes=SHAPES, budgets=[8, 8, 8, 8]))  # one rank for all: accepted


def test_sign_svd_init_is_the_best_rank_r_approximation_of_the_sign_step():
    """LoRA-SB's init against a dense reference: B R A = [−η sign(G)]_r (Eckart–Young: the residual's norm is the
    tail of the singular values), B orthonormal columns, A orthonormal rows, R diagonal and non-negative."""
    from fedlora.lora.sb_init import sign_svd_init

    g = torch.Generator().manual_seed(0)
    G = torch.randn(12, 9, generator=g)
    B, R, A = sign_svd_init(G, 3, 0.01)
    target = -0.01 * torch.sign(G.double())
    sv = torch.linalg.svdvals(target)
    err = (B.double() @ R.double() @ A.double() - target).norm()
    assert float(err) == pytest.approx(float(sv[3:].norm()), rel=1e-5)
    torch.testing.assert_close(B.t() @ B, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(A @ A.t(), torch.eye(3), atol=1e-5, rtol=0)
    assert torch.equal(R, torch.diag(torch.diagonal(R))) and bool((torch.diagonal(R) >= 0).all())
    with pytest.raises(ValueError, match=r"^lora.rank: 10 must be in \[1, min\(m, n\) = 9\]"):
        sign_svd_init(G, 10, 0.01)

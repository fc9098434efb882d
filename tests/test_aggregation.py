"""Aggregation math against dense references: FedIT, HetLoRA, FLoRA, FlexLoRA, FLoRIST (+ energy rank)."""

import math
import os

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedlora.aggregation import (
    energy_rank,
    fedit,
    flexlora,
    flora,
    florist,
    florist_decompose,
    hetlora,
)

F64, F32 = torch.float64, torch.float32
# FEDLORA_AGG_EXAMPLES=2000 runs a stress sweep; the default keeps the file at a few seconds.
FAST = settings(max_examples=int(os.environ.get("FEDLORA_AGG_EXAMPLES", "40")), deadline=None)


@st.composite
def factor_sets(draw, dtype=F64, max_rank=64, gram_path=False, structure=True):
    """Random client factors: m, n in 1..48, 1..6 clients, ranks 1..max_rank, weights in (0, 1].

    ``gram_path`` keeps R = Σ r_k < min(m, n) (FLoRIST's Gram route); otherwise R may exceed m or n.
    ``structure`` sometimes makes a client repeat another's terms (rank-deficient stacks), zeroes a client's B
    (as at LoRA init) or rescales a client's pair (B_k·c, A_k/c), which leaves the product unchanged.
    """
    if gram_path:
        m, n = draw(st.integers(2, 48)), draw(st.integers(2, 48))
        budget = min(m, n) - 1
        k = draw(st.integers(1, min(6, budget)))
        ranks = []
        for i in range(k):
            left = budget - sum(ranks) - (k - i - 1)
            ranks.append(draw(st.integers(1, min(max_rank, left))))
    else:
        m, n = draw(st.integers(1, 48)), draw(st.integers(1, 48))
        ranks = draw(st.lists(st.integers(1, max_rank), min_size=1, max_size=6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    Bs = [torch.randn(m, r, generator=g, dtype=F64) for r in ranks]
    As = [torch.randn(r, n, generator=g, dtype=F64) for r in ranks]
    weights = [draw(st.floats(1e-3, 1.0)) for _ in ranks]
    if structure and len(ranks) > 1:
        kind = draw(st.sampled_from(["none", "none", "copy", "zero_b", "scale"]))
        i, j = draw(st.integers(0, len(ranks) - 1)), draw(st.integers(0, len(ranks) - 1))
        if kind == "copy" and i != j:  # client j repeats client i's leading rank-1 terms
            q = min(ranks[i], ranks[j])
            Bs[j][:, :q], As[j][:q] = Bs[i][:, :q], As[i][:q]
        elif kind == "zero_b" and i != j:  # keep at least one live client
            Bs[i] = torch.zeros_like(Bs[i])
        elif kind == "scale":
            c = draw(st.sampled_from([1e-3, 1e3]))
            Bs[i], As[i] = Bs[i] * c, As[i] / c
    return [b.to(dtype) for b in Bs], [a.to(dtype) for a in As], weights


def dense(Bs, As, weights):
    """Σ w_k B_k A_k in float64, the reference every method is checked against."""
    return sum(w * b.to(F64) @ a.to(F64) for w, b, a in zip(weights, Bs, As, strict=True))


def rel_err(X, Y):
    denom = Y.norm()
    return float((X.to(F64) - Y).norm() / denom) if denom > 0 else float(X.to(F64).norm())


def update_err(B, A, case):
    """‖B A − ΔW‖_F relative to ‖ΔW‖_F, or to 1% of Σ w_k ‖B_k A_k‖_F when the clients' updates cancel
    below that (then the float rounding of the terms, not of ΔW, sets the attainable accuracy)."""
    D = dense(*case)
    terms = sum(w * float((b.to(F64) @ a.to(F64)).norm()) for b, a, w in zip(*case, strict=True))
    denom = max(float(D.norm()), 0.01 * terms)
    return float((B.to(F64) @ A.to(F64) - D).norm()) / denom if denom > 0 else float((B @ A).norm())


def tail_norm(sv, r):
    return float(sv[r:].square().sum().sqrt())


# --- FLoRA and FLoRIST reproduce the weighted sum of client products ------------------------------


@FAST
@given(factor_sets(dtype=F64))
def test_flora_is_exact_float64(case):
    B, A = flora(*case)
    assert B.shape[1] == A.shape[0] == sum(b.shape[1] for b in case[0])
    assert update_err(B, A, case) <= 1e-12


@FAST
@given(factor_sets(dtype=F32))
def test_flora_is_exact_float32(case):
    B, A = flora(*case)
    assert update_err(B, A, case) <= 1e-5


@FAST
@given(factor_sets(dtype=F64))
def test_florist_tau_one_reproduces_flora_float64(case):
    """As tight as FLoRA's check: the largest error over 3 000 examples of this strategy was 3.8e-14 (1e-12 leaves
    a 25× margin; a scale off by 1e-10 fails)."""
    B, A = florist(*case, tau=1.0)
    Bf, Af = flora(*case)
    assert update_err(B, A, case) <= 1e-12
    assert rel_err(B @ A, (Bf @ Af).to(F64)) <= 1e-12


@FAST
@given(factor_sets(dtype=F64, gram_path=True))
def test_florist_tau_one_reproduces_flora_float64_gram_path(case):
    """The Gram route (R < min(m, n)): at most 2.1e-12 over 3 000 examples; 1e-10 leaves a 50× margin."""
    B, A = florist(*case, tau=1.0)
    assert update_err(B, A, case) <= 1e-10


@FAST
@given(factor_sets(dtype=F32))
def test_florist_tau_one_reproduces_flora_float32(case):
    B, A = florist(*case, tau=1.0)
    assert B.dtype == A.dtype == F32
    assert update_err(B, A, case) <= 1e-4


@FAST
@given(factor_sets(dtype=F32, gram_path=True))
def test_florist_tau_one_reproduces_flora_float32_gram_path(case):
    B, A = florist(*case, tau=1.0)
    assert update_err(B, A, case) <= 1e-4


# --- FLoRIST's spectrum, rank rule and factors ----------------------------------------------------


@FAST
@given(factor_sets(dtype=F64))
def test_florist_singular_values_match_dense_svd(case):
    res = florist_decompose(*case)
    ref = torch.linalg.svdvals(dense(*case))
    R = sum(b.shape[1] for b in case[0])
    assert res.singular_values.dtype == F64
    assert res.singular_values.shape == (min(ref.numel(), R),)
    k = res.singular_values.numel()
    assert (res.singular_values[:k] - ref[:k]).abs().max() <= 1e-6 * ref[0] + 1e-300
    assert float(ref[k:].sum()) <= 1e-6 * float(ref[0]) * max(1, ref.numel() - k) + 1e-300


@FAST
@given(factor_sets(dtype=F64, gram_path=True))
def test_florist_singular_values_match_dense_svd_gram_path(case):
    res = florist_decompose(*case)
    ref = torch.linalg.svdvals(dense(*case))[: res.singular_values.numel()]
    assert (res.singular_values - ref).abs().max() <= 1e-6 * ref[0]


@FAST
@given(factor_sets(dtype=F64), st.floats(0.05, 1.0))
def test_florist_rank_is_smallest_meeting_energy_rule(case, tau):
    res = florist_decompose(*case, tau=tau)
    ref = torch.linalg.svdvals(dense(*case))
    frac = ref.square().cumsum(0) / ref.square().sum()
    assume(((frac - tau).abs() > 1e-9).all() or tau == 1.0)  # a tie within rounding has two right answers
    p = res.rank
    assert frac[p - 1] >= tau - 1e-9
    assert p == 1 or frac[p - 2] < tau
    assert res.B.shape[1] == res.A.shape[0] == p
    assert math.isclose(res.energy, float(frac[p - 1]), rel_tol=1e-9, abs_tol=1e-12)
    # The factors are the top-p SVD of ΔW: B = U_p S_p, A = V_pᵀ, and the error is the Eckart–Young tail.
    assert torch.allclose(res.B.norm(dim=0), ref[:p], rtol=1e-6, atol=1e-9 * float(ref[0]))
    assert torch.allclose(res.A @ res.A.T, torch.eye(p, dtype=F64), atol=1e-6)
    err = float((dense(*case) - res.B @ res.A).norm())
    assert math.isclose(err, tail_norm(ref, p), rel_tol=1e-6, abs_tol=1e-6 * float(ref[0]))


def test_florist_float32_llama_like_module_matches_dense_svd():
    """Float32 factors of a 512×512 module with the benchmark's client ranks (R = 152)."""
    g = torch.Generator().manual_seed(7)
    ranks = [4, 4, 8, 8, 16, 16, 32, 64]
    Bs = [torch.randn(512, r, generator=g) for r in ranks]
    As = [torch.randn(r, 512, generator=g) for r in ranks]
    n_k = torch.randint(100, 1000, (len(ranks),), generator=g).double()
    weights = (n_k / n_k.sum()).tolist()
    ref = torch.linalg.svdvals(dense(Bs, As, weights))
    res = florist_decompose(Bs, As, weights, tau=1.0)
    assert res.rank == 152
    assert (res.singular_values - ref[:152]).abs().max() <= 1e-4 * ref[0]
    assert update_err(res.B, res.A, (Bs, As, weights)) <= 1e-4
    res = florist_decompose(Bs, As, weights, tau=0.9)
    assert res.rank == energy_rank(ref, 0.9)


def test_florist_zero_update_returns_rank_one_zeros():
    """B_k = 0 (LoRA init) or all-zero weights: ΔW = 0, documented as rank-1 zero factors."""
    Bs = [torch.zeros(6, 2), torch.zeros(6, 3)]
    As = [torch.randn(2, 5), torch.randn(3, 5)]
    for bs, w in ((Bs, [0.5, 0.5]), ([torch.randn(6, 2), torch.randn(6, 3)], [0.0, 0.0])):
        res = florist_decompose(bs, As, w, tau=0.9)
        assert res.rank == 1 and res.energy == 1.0
        assert res.B.shape == (6, 1) and res.A.shape == (1, 5)
        assert not res.B.any() and not res.A.any()
        assert not res.singular_values.any()
    B, A = florist([torch.zeros(64, 4)], [torch.randn(4, 64)], [1.0])  # Gram route
    assert B.shape == (64, 1) and not (B @ A).any()


def test_florist_cancelling_clients_give_zero_update():
    b, a = torch.randn(10, 2, dtype=F64), torch.randn(2, 12, dtype=F64)
    B, A = florist([b, -b], [a, a], [0.5, 0.5], tau=1.0)
    assert float((B @ A).norm()) <= 1e-12 * float(b.norm() * a.norm())


# --- FlexLoRA: best rank-r approximation ----------------------------------------------------------


@FAST
@given(factor_sets(dtype=F64), st.integers(1, 70))
def test_flexlora_is_best_rank_r_approximation(case, rank):
    B, A = flexlora(*case, rank=rank)
    D = dense(*case)
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    r = min(rank, *D.shape)
    assert B.shape == (D.shape[0], r) and A.shape == (r, D.shape[1])
    err = float((D - B @ A).norm())
    assert math.isclose(err, tail_norm(S, r), rel_tol=1e-6, abs_tol=1e-9 * float(S[0]))
    if r == S.numel() or S[r - 1] - S[r] > 1e-6 * S[0]:  # unique best approximation
        best = (U[:, :r] * S[:r]) @ Vh[:r]
        assert rel_err(B @ A, best) <= 1e-6 or float((B @ A - best).norm()) <= 1e-9 * float(S[0])


def test_flexlora_clamps_rank_to_min_dimension():
    B, A = flexlora([torch.randn(5, 4)], [torch.randn(4, 3)], [1.0], rank=10)
    assert B.shape == (5, 3) and A.shape == (3, 3)


# --- HetLoRA and FedIT: factors averaged separately -----------------------------------------------


def hetlora_reference(Bs, As, weights, rank):
    """Hand-written HetLoRA: pad every client to r_max, weighted average of B and of A, truncate."""
    r_max = max(b.shape[1] for b in Bs)
    width = max(r_max, rank)
    B = torch.zeros(Bs[0].shape[0], width, dtype=F64)
    A = torch.zeros(width, As[0].shape[1], dtype=F64)
    for b, a, w in zip(Bs, As, weights, strict=True):
        r = b.shape[1]
        padded_b = torch.cat([b.to(F64), torch.zeros(b.shape[0], width - r, dtype=F64)], dim=1)
        padded_a = torch.cat([a.to(F64), torch.zeros(width - r, a.shape[1], dtype=F64)], dim=0)
        B += w * padded_b
        A += w * padded_a
    return B[:, :rank], A[:rank]


@FAST
@given(factor_sets(dtype=F64, max_rank=16, structure=False), st.integers(1, 20))
def test_hetlora_matches_pad_average_truncate(case, rank):
    B, A = hetlora(*case, rank=rank)
    B_ref, A_ref = hetlora_reference(*case, rank=rank)
    assert B.shape == B_ref.shape and A.shape == A_ref.shape
    assert torch.allclose(B, B_ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(A, A_ref, rtol=1e-12, atol=1e-12)


def test_fedit_hand_example():
    Bs = [torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [-2.0]])]
    As = [torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.0, 4.0, -2.0]])]
    B, A = fedit(Bs, As, [0.25, 0.75])
    assert torch.equal(B, torch.tensor([[2.5], [-1.0]]))
    assert torch.equal(A, torch.tensor([[0.25, 3.0, -1.0]]))
    # Weights are used as given, not renormalised.
    B, A = fedit(Bs, As, [1.0, 1.0])
    assert torch.equal(B, torch.tensor([[4.0], [0.0]]))


def test_hetlora_hand_example():
    Bs = [torch.tensor([[1.0]]), torch.tensor([[2.0, 4.0]])]
    As = [torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0], [0.0, 8.0]])]
    B, A = hetlora(Bs, As, [0.5, 0.5], rank=2)
    assert torch.equal(B, torch.tensor([[1.5, 2.0]]))
    assert torch.equal(A, torch.tensor([[1.5, 0.5], [0.0, 4.0]]))
    B, A = hetlora(Bs, As, [0.5, 0.5], rank=1)
    assert torch.equal(B, torch.tensor([[1.5]])) and torch.equal(A, torch.tensor([[1.5, 0.5]]))


# --- energy_rank ----------------------------------------------------------------------------------


def test_energy_rank_hand_examples():
    assert energy_rank([3.0, 4.0], 0.64) == 1  # sorted to [4, 3]: 16/25 = 0.64
    assert energy_rank(torch.tensor([4.0, 3.0]), 0.65) == 2
    assert energy_rank([4.0, 3.0, 0.0], 1.0) == 2
    assert energy_rank([0.0, 0.0], 0.9) == 1
    assert energy_rank([2.0, 2.0, 2.0, 2.0], 0.5) == 2
    for tau in (0.0, -0.1, 1.5, float("nan"), True, "0.9"):
        with pytest.raises(ValueError, match="tau"):
            energy_rank([1.0], tau)
    for bad in ([], [1.0, -1.0], [float("inf")]):
        with pytest.raises(ValueError, match="singular_values"):
            energy_rank(bad, 0.9)


# --- contract: no mutation, dtype/device preserved, validation ------------------------------------

METHODS = {
    "fedit": lambda Bs, As, w: fedit(Bs, As, w),
    "hetlora": lambda Bs, As, w: hetlora(Bs, As, w, rank=3),
    "flora": lambda Bs, As, w: flora(Bs, As, w),
    "flexlora": lambda Bs, As, w: flexlora(Bs, As, w, rank=2),
    "florist": lambda Bs, As, w: florist(Bs, As, w, tau=0.9),
}


def small_case(dtype=F32, ranks=(3, 3, 3), m=20, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    Bs = [torch.randn(m, r, generator=g).to(dtype) for r in ranks]
    As = [torch.randn(r, n, generator=g).to(dtype) for r in ranks]
    return Bs, As, [0.2, 0.3, 0.5][: len(ranks)]


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("dtype", [F64, F32, torch.bfloat16, torch.float16])
def test_outputs_keep_dtype_and_inputs_are_not_mutated(name, dtype):
    Bs, As, w = small_case(dtype)
    before = ([b.clone() for b in Bs], [a.clone() for a in As], list(w))
    ids = [id(t) for t in Bs + As]
    B, A = METHODS[name](Bs, As, w)
    assert B.dtype == A.dtype == dtype and B.device == A.device == Bs[0].device
    assert B.dim() == A.dim() == 2 and B.shape[0] == 20 and A.shape[1] == 16 and B.shape[1] == A.shape[0]
    assert [id(t) for t in Bs + As] == ids and w == before[2]
    assert all(torch.equal(x, y) for x, y in zip(Bs + As, before[0] + before[1], strict=True))
    assert all(x.data_ptr() != y.data_ptr() for x in (B, A) for y in Bs + As)  # no aliasing of inputs


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"fedit"}))  # fedit needs one rank
def test_heterogeneous_ranks_not_mutated_gram_route(name):
    Bs, As, w = small_case(F32, ranks=(2, 4, 8), m=40, n=48)
    before = [t.clone() for t in Bs + As]
    METHODS[name](Bs, As, w)
    assert all(torch.equal(x, y) for x, y in zip(Bs + As, before, strict=True))


def _bad_inputs():
    Bs, As, w = small_case(F32)
    cases = [
        ("empty Bs", [], [], [], r"^Bs: empty"),
        ("Bs not a list", Bs[0], As, w, r"^Bs: expected a list"),
        ("fewer As", Bs, As[:2], w, r"^As: 2 factors but Bs has 3"),
        ("fewer weights", Bs, As, w[:2], r"^weights: 2 weights but 3 clients"),
        ("rank mismatch", Bs, [As[0], torch.randn(4, 16), As[2]], w, r"^As\[1\]: has 4 rows but Bs\[1\]"),
        ("m differs", [Bs[0], Bs[1], torch.randn(21, 3)], As, w, r"^Bs\[2\]: has 21 rows"),
        ("n differs", Bs, [As[0], torch.randn(3, 15), As[2]], w, r"^As\[1\]: has 15 columns"),
        ("1-D factor", [Bs[0], torch.randn(20), Bs[2]], As, w, r"^Bs\[1\]: expected a 2-D tensor"),
        ("not a tensor", Bs, [As[0], As[1], [[1.0]]], w, r"^As\[2\]: expected a torch.Tensor"),
        ("integer factor", [Bs[0], torch.ones(20, 3, dtype=torch.long), Bs[2]], As, w, r"^Bs\[1\]: .*float"),
        ("dtype differs", Bs, [As[0], As[1].double(), As[2]], w, r"^As\[1\]: dtype/device"),
        ("rank zero", [Bs[0], torch.randn(20, 0), Bs[2]], [As[0], torch.empty(0, 16), As[2]], w, r"^Bs\[1\]"),
        ("negative weight", Bs, As, [0.2, -0.3, 0.5], r"^weights\[1\]: must be finite and >= 0"),
        ("nan weight", Bs, As, [0.2, 0.3, float("nan")], r"^weights\[2\]: must be finite"),
        ("inf weight", Bs, As, [float("inf"), 0.3, 0.5], r"^weights\[0\]: must be finite"),
        ("text weight", Bs, As, [0.2, "x", 0.5], r"^weights\[1\]: expected a number"),
    ]
    return [pytest.param(*c[1:], id=c[0]) for c in cases]


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize(("Bs", "As", "w", "match"), _bad_inputs())
def test_bad_inputs_raise_value_error_naming_argument(name, Bs, As, w, match):
    with pytest.raises(ValueError, match=match):
        METHODS[name](Bs, As, w)


def test_bad_options_raise_value_error_naming_option():
    Bs, As, w = small_case(F32)
    for tau in (0.0, 1.0001, -1.0, float("nan"), None):
        with pytest.raises(ValueError, match=r"^tau: "):
            florist(Bs, As, w, tau=tau)
    for rank in (0, -2, 1.5, None, True):
        with pytest.raises(ValueError, match=r"^rank: "):
            flexlora(Bs, As, w, rank=rank)
        with pytest.raises(ValueError, match=r"^rank: "):
            hetlora(Bs, As, w, rank=rank)
    with pytest.raises(ValueError, match=r"^Bs\[1\]: rank 4 differs from rank 3 of Bs\[0\]"):
        fedit([Bs[0], torch.randn(20, 4)], [As[0], torch.randn(4, 16)], w[:2])


def test_weights_are_used_as_given():
    Bs, As, _ = small_case(F64)
    B1, A1 = flora(Bs, As, [1.0, 1.0, 1.0])
    B2, A2 = flora(Bs, As, [2.0, 2.0, 2.0])
    assert torch.allclose(B2 @ A2, 2 * (B1 @ A1))
    B1, A1 = florist(Bs, As, [1.0, 1.0, 1.0], tau=1.0)
    B2, A2 = florist(Bs, As, [2.0, 2.0, 2.0], tau=1.0)
    assert torch.allclose(B2 @ A2, 2 * (B1 @ A1))


# --- edges the mutation run found unguarded (docs/testing.md) ------------------------------------------------------


def test_bad_shapes_are_named_in_the_message():
    b, a = torch.zeros(4, 2), torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"^Bs\[1\]: expected a 2-D tensor, got shape 4×2×1$"):
        fedit([b, torch.zeros(4, 2, 1)], [a, a], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"^As\[0\]: expected a 2-D tensor, got shape scalar$"):
        fedit([b], [torch.tensor(1.0)], [1.0])


def test_energy_rank_edges():
    """All-zero spectra keep one direction; energies are summed in float64 (in float32 1 + 1e-10 == 1 and
    τ = 1 would drop the tail); a total energy below 1 is not special."""
    assert energy_rank([0.0], 0.5) == 1 and energy_rank([0.0, 0.0, 0.0], 1.0) == 1
    assert energy_rank([1.0, 1e-5], 1.0) == 2
    assert energy_rank([0.5, 0.5], 1.0) == 2 and energy_rank([0.3, 0.1], 0.95) == 2
    with pytest.raises(ValueError, match=r"^singular_values: empty; need at least one singular value$"):
        energy_rank([], 0.5)
    with pytest.raises(ValueError, match=r"^singular_values: must be finite and >= 0$"):
        energy_rank([1.0, -1.0], 0.5)


@pytest.mark.parametrize("m, n", [(40, 30), (6, 200)])  # Gram route (R = 2 < min) and dense route
def test_florist_of_a_zero_update_keeps_the_input_dtype(m, n):
    """ΔW = 0 (every B = 0, as at LoRA init): rank-1 zero factors in the input dtype, float64 singular values."""
    Bs = [torch.zeros(m, 1, dtype=F64), torch.zeros(m, 1, dtype=F64)]
    As = [torch.randn(1, n, dtype=F64), torch.randn(1, n, dtype=F64)]
    res = florist_decompose(Bs, As, [0.5, 0.5], tau=0.9)
    assert res.B.dtype == res.A.dtype == F64 and res.singular_values.dtype == F64
    assert res.rank == 1 and res.B.shape == (m, 1) and res.A.shape == (1, n)
    assert not res.B.any() and not res.A.any() and not res.singular_values.any()


def test_florist_of_cancelling_clients_is_zero_on_the_gram_route():
    """Two clients whose updates cancel (B and −B, same A and weight): every stacked column is live, yet
    ΔW = 0; FLoRIST returns a (numerically) zero update of rank 1, not NaNs."""
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(50, 3, generator=g, dtype=F64), torch.randn(3, 40, generator=g, dtype=F64)
    res = florist_decompose([B, -B], [A, A], [0.5, 0.5], tau=0.9)
    assert torch.isfinite(res.B).all() and torch.isfinite(res.A).all()
    assert float((res.B @ res.A).abs().max()) <= 1e-12 * float((B @ A).abs().max())


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-10), (F32, 1e-4)])
def test_florist_gram_route_with_a_wide_stack(dtype, tol):
    """R = 70 ≥ 64 stacked ranks take the split Gram product (each off-diagonal block once): still exact at τ = 1."""
    g = torch.Generator().manual_seed(1)
    Bs = [torch.randn(120, r, generator=g, dtype=F64) for r in (40, 30)]
    As = [torch.randn(r, 100, generator=g, dtype=F64) for r in (40, 30)]
    case = ([b.to(dtype) for b in Bs], [a.to(dtype) for a in As], [0.3, 0.7])
    B, A = florist(*case, tau=1.0)
    assert B.dtype == A.dtype == dtype
    assert update_err(B, A, case) <= tol

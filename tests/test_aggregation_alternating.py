"""RoLoRA and FedSA-LoRA aggregation against dense references (explicit m×n products, float64)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.aggregation import fedit, fedsa, rolora, shared_A

F64 = torch.float64


def clients(k, m, n, r, seed, frozen=None):
    """k client pairs (B_k m×r, A_k r×n); ``frozen`` = "A" or "B" makes that factor one common tensor."""
    g = torch.Generator().manual_seed(seed)
    common_B, common_A = torch.randn(m, r, generator=g, dtype=F64), torch.randn(r, n, generator=g, dtype=F64)
    Bs = [common_B.clone() if frozen == "B" else torch.randn(m, r, generator=g, dtype=F64) for _ in range(k)]
    As = [common_A.clone() if frozen == "A" else torch.randn(r, n, generator=g, dtype=F64) for _ in range(k)]
    return Bs, As


@given(
    k=st.integers(1, 6),
    m=st.integers(1, 24),
    n=st.integers(1, 24),
    r=st.integers(1, 8),
    trained=st.sampled_from(["A", "B"]),
    seed=st.integers(0, 2**16),
    weights=st.lists(st.floats(0.0, 3.0), min_size=6, max_size=6),
)
@settings(max_examples=60, deadline=None)
def test_rolora_product_is_exactly_the_weighted_sum_of_client_products(k, m, n, r, trained, seed, weights):
    """In a round where one factor is frozen, B @ A = Σ w_k B_k A_k (dense), for any non-negative weights."""
    frozen = "A" if trained == "B" else "B"
    Bs, As = clients(k, m, n, r, seed, frozen=frozen)
    w = weights[:k]
    B, A = rolora(Bs, As, w, trained=trained)
    dense = sum(wk * (Bk @ Ak) for wk, Bk, Ak in zip(w, Bs, As, strict=True))
    torch.testing.assert_close(B @ A, dense, rtol=1e-10, atol=1e-10)
    # the frozen factor is returned as it was, the trained one is the plain weighted average
    if trained == "B":
        torch.testing.assert_close(A, As[0], rtol=0, atol=0)
        torch.testing.assert_close(B, sum(wk * Bk for wk, Bk in zip(w, Bs, strict=True)), rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(B, Bs[0], rtol=0, atol=0)


def test_rolora_differs_from_fedit_when_both_factors_move():
    """The exactness is RoLoRA's, not a property of averaging: FedIT on clients that moved both factors is off."""
    Bs, As = clients(3, 12, 10, 4, seed=1)
    w = [0.2, 0.3, 0.5]
    dense = sum(wk * (Bk @ Ak) for wk, Bk, Ak in zip(w, Bs, As, strict=True))
    B, A = fedit(Bs, As, w)
    assert (B @ A - dense).norm() > 0.1 * dense.norm()


@pytest.mark.parametrize("trained", ["A", "B"])
def test_rolora_refuses_a_client_whose_frozen_factor_moved(trained):
    frozen = "A" if trained == "B" else "B"
    Bs, As = clients(3, 5, 6, 2, seed=2, frozen=frozen)
    moved = As if frozen == "A" else Bs
    moved[2] = moved[2] + 1e-3
    with pytest.raises(ValueError, match=rf"^{frozen}s\[2\]: differs from {frozen}s\[0\]"):
        rolora(Bs, As, [0.3, 0.3, 0.4], trained=trained)


def test_rolora_rejects_an_unknown_factor_and_mixed_ranks():
    Bs, As = clients(2, 5, 6, 2, seed=3, frozen="A")
    with pytest.raises(ValueError, match="^trained: expected 'A' or 'B'"):
        rolora(Bs, As, [0.5, 0.5], trained="both")
    Bs[1], As[1] = torch.zeros(5, 3, dtype=F64), torch.zeros(3, 6, dtype=F64)
    with pytest.raises(ValueError, match=r"^Bs\[1\]: rank 3 differs"):
        rolora(Bs, As, [0.5, 0.5], trained="B")


@given(
    k=st.integers(1, 6),
    m=st.integers(1, 24),
    n=st.integers(1, 24),
    r=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    weights=st.lists(st.floats(0.0, 3.0), min_size=6, max_size=6),
)
@settings(max_examples=60, deadline=None)
def test_fedsa_shared_A_and_the_shared_view_against_dense(k, m, n, r, seed, weights):
    """The server's A is Σ w_k A_k; each personalised model is B_k A; the shared view's product is their
    weighted sum Σ w_k B_k A (dense)."""
    Bs, As = clients(k, m, n, r, seed)
    w = weights[:k]
    A = shared_A(As, w)
    torch.testing.assert_close(A, sum(wk * Ak for wk, Ak in zip(w, As, strict=True)), rtol=1e-12, atol=1e-12)
    B_view, A_view = fedsa(Bs, [A] * k, w)
    torch.testing.assert_close(A_view, A * sum(w), rtol=1e-12, atol=1e-12)
    personalised = sum(wk * (Bk @ A) for wk, Bk in zip(w, Bs, strict=True))
    torch.testing.assert_close(B_view @ A, personalised, rtol=1e-10, atol=1e-10)


def test_shared_A_names_the_bad_client():
    As = [torch.zeros(2, 5), torch.zeros(3, 5)]
    with pytest.raises(ValueError, match=r"^As\[1\]: rank 3 differs"):
        shared_A(As, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"^As\[1\]: expected a 2-D tensor"):
        shared_A([torch.zeros(2, 5), torch.zeros(5)], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"^weights\[0\]: must be finite"):
        shared_A([torch.zeros(2, 5)], [float("nan")])

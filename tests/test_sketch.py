"""FSLoRA sketch: unbiasedness, shared index sets, scatter/extract, and exact byte counts."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora import payload, rundir, sketch
from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import ModuleShape, flatten_factors
from fedlora.methods.factor_averaging import FactorAveraging
from fedlora.server_optimizer import ServerOptimizer


@given(r=st.integers(1, 64), data=st.data())
@settings(max_examples=60, deadline=None)
def test_sample_indices_are_k_distinct_sorted_in_range(r, data):
    k = data.draw(st.integers(1, r))
    idx = sketch.sample_indices(r, k, torch.Generator().manual_seed(data.draw(st.integers(0, 2**31))))
    assert idx.dtype == torch.long and idx.shape == (k,)
    assert idx.unique().numel() == k
    assert torch.equal(idx, idx.sort().values)
    assert int(idx.min()) >= 0 and int(idx.max()) < r


def test_sample_indices_rejects_bad_k():
    g = torch.Generator().manual_seed(0)
    for r, k in [(4, 0), (4, 5), (0, 1)]:
        try:
            sketch.sample_indices(r, k, g)
        except ValueError as err:
            assert "k" in str(err) or "r" in str(err)
        else:
            raise AssertionError("expected ValueError")


def test_each_index_is_kept_with_probability_k_over_r():
    r, k, draws = 16, 5, 20000
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(r)
    for _ in range(draws):
        counts[sketch.sample_indices(r, k, g)] += 1
    freq = counts / draws
    # binomial std of each frequency ≈ sqrt(p(1-p)/draws) ≈ 0.0033; 5 sigma
    assert torch.allclose(freq, torch.full((r,), k / r), atol=0.017)


def test_sketched_product_is_unbiased():
    """E[B S A] = B A: the Monte Carlo mean over 20000 draws is within 2% (relative Frobenius) of B A."""
    g = torch.Generator().manual_seed(0)
    m, n, r, k, draws = 12, 10, 8, 3, 20000
    B = torch.randn(m, r, generator=g, dtype=torch.float64)
    A = torch.randn(r, n, generator=g, dtype=torch.float64)
    total = torch.zeros(m, n, dtype=torch.float64)
    for _ in range(draws):
        total += sketch.sketched_product(B, A, sketch.sample_indices(r, k, g))
    mean = total / draws
    rel = torch.linalg.norm(mean - B @ A) / torch.linalg.norm(B @ A)
    assert rel < 0.02, rel


def test_scatter_inverts_extract():
    g = torch.Generator().manual_seed(3)
    B, A = torch.randn(6, 8, generator=g), torch.randn(8, 5, generator=g)
    idx = sketch.sample_indices(8, 3, g)
    b, a = sketch.extract_block(B, A, idx)
    full_B, full_A = sketch.scatter_block(b, a, idx, 8)
    mask = torch.zeros(8, dtype=torch.bool)
    mask[idx] = True
    assert torch.equal(full_B[:, mask], B[:, mask]) and torch.equal(full_A[mask], A[mask])
    assert not full_B[:, ~mask].any() and not full_A[~mask].any()
    b.add_(1.0)  # extracted blocks are copies
    assert not torch.equal(b, B[:, idx])


def _method(budgets, rank=16, shapes=None):
    shapes = shapes or {"l0.q": ModuleShape(24, 20), "l0.v": ModuleShape(24, 20), "l1.q": ModuleShape(24, 20)}
    method = FactorAveraging(
        "fslora",
        shapes,
        rank,
        ScaleRule("alpha_over_rank", 32.0),
        budgets,
        ServerOptimizer(),
        torch.Generator().manual_seed(0),
    )
    # non-zero B so that blocks are informative
    method.factors = {n: (torch.randn_like(B), A) for n, (B, A) in method.factors.items()}
    return method


def test_plan_shares_one_index_set_between_B_and_A():
    method = _method([4])
    plan = method.plan(0, 1, torch.Generator().manual_seed(7))
    for name, (B, A) in method.factors.items():
        idx = plan.context[name]
        b, a = plan.factors[name]
        assert torch.equal(b, B[:, idx]) and torch.equal(a, A[idx, :])
    assert plan.scale == 32.0 / 16 * (16 / 4)
    # different modules draw independent index sets (with overwhelming probability for 3 modules of C(16,4))
    sets = {tuple(v.tolist()) for v in plan.context.values()}
    assert len(sets) > 1


def test_uploaded_bytes_are_k_over_r_of_full_rank_plus_header():
    """Tensor data is exactly k/r of the full-rank adapter's; the rest is the safetensors JSON header."""
    rank = 16
    for k in (1, 4, 8, 16):
        method = _method([k], rank=rank)
        plan = method.plan(0, 1, torch.Generator().manual_seed(k))
        sent = flatten_factors(plan.factors)
        full = flatten_factors(method.factors)
        assert payload.tensor_bytes(sent) * rank == payload.tensor_bytes(full) * k
        blob = payload.pack(sent)
        header = len(blob) - payload.tensor_bytes(sent)
        # 8-byte length + JSON header: ~80 bytes per tensor entry, independent of k
        assert 0 < header <= 8 + 100 * len(sent)


def test_fslora_aggregate_scatters_and_averages():
    """Server update = Σ a_i scatter(Δ_i); columns no one touched keep their value."""
    method = _method([4, 8], rank=16)
    before = {n: (B.clone(), A.clone()) for n, (B, A) in method.factors.items()}
    plans = [method.plan(i, 1, torch.Generator().manual_seed(10 + i)) for i in range(2)]
    uploads = [{n: (b + 1.0, a - 2.0) for n, (b, a) in p.factors.items()} for p in plans]
    method.aggregate(plans, uploads, [0.25, 0.75])
    for name in method.factors:
        B, A = method.factors[name]
        expect_B, expect_A = before[name][0].clone(), before[name][1].clone()
        for w, p in zip([0.25, 0.75], plans, strict=False):
            expect_B[:, p.context[name]] += w * 1.0
            expect_A[p.context[name], :] += w * -2.0
        assert torch.allclose(B, expect_B) and torch.allclose(A, expect_A)


def test_fedit_aggregate_equals_hand_computed_average():
    """FedIT: new B = Σ a_i B_i and new A = Σ a_i A_i (a_i summing to 1)."""
    shapes = {"m": ModuleShape(3, 2)}
    method = FactorAveraging(
        "fedit", shapes, 2, ScaleRule("alpha_over_rank", 2.0), None, ServerOptimizer(), torch.Generator().manual_seed(0)
    )
    plans = [method.plan(i, 1, torch.Generator()) for i in range(3)]
    B1, B2, B3 = (torch.full((3, 2), v) for v in (1.0, 2.0, 4.0))
    A1, A2, A3 = (torch.full((2, 2), v) for v in (-1.0, 0.0, 3.0))
    method.aggregate(plans, [{"m": (B1, A1)}, {"m": (B2, A2)}, {"m": (B3, A3)}], [0.5, 0.25, 0.25])
    B, A = method.factors["m"]
    assert torch.allclose(B, torch.full((3, 2), 0.5 * 1 + 0.25 * 2 + 0.25 * 4))
    assert torch.allclose(A, torch.full((2, 2), 0.5 * -1 + 0.25 * 0 + 0.25 * 3))


# --- through the method's real plan / aggregate path, with updates that differ column by column -------------------


def _random_global(method, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    method.factors = {
        n: (torch.randn(B.shape, generator=g), torch.randn(A.shape, generator=g))
        for n, (B, A) in method.factors.items()
    }


def test_clients_sketched_model_is_unbiased_through_plan():
    """E over plan draws of the client's adapter product, scale · B_I A_I, is the global model's
    (alpha/r) · B A: 6 000 draws of ``FactorAveraging.plan`` (k = 3 of r = 8), within 3 % relative Frobenius per
    module (the Monte Carlo error here is ≈ 0.8 %). Without the r/k scale the mean is 3/8 of it; index sets not
    shared by B and A give (3/8)² · (8/3) of the off-diagonal terms."""
    method = _method([3], rank=8)
    _random_global(method, 1)
    g = torch.Generator().manual_seed(2)
    draws = 6000
    total = {n: torch.zeros(B.shape[0], A.shape[1], dtype=torch.float64) for n, (B, A) in method.factors.items()}
    for _ in range(draws):
        plan = method.plan(0, 1, g)
        for name, (b, a) in plan.factors.items():
            total[name] += plan.scale * (b.double() @ a.double())
    for name, (B, A) in method.factors.items():
        target = method.global_scale * (B.double() @ A.double())
        rel = torch.linalg.norm(total[name] / draws - target) / torch.linalg.norm(target)
        assert rel < 0.03, (name, float(rel))


def _selection(indices, r: int) -> torch.Tensor:
    """The k×r matrix P with P[j, indices[j]] = 1: B_I P puts B_I's columns at I, Pᵀ A_I puts A_I's rows there."""
    P = torch.zeros(len(indices), r)
    P[torch.arange(len(indices)), indices] = 1.0
    return P


def test_fslora_aggregate_places_each_column_where_it_was_sampled():
    """Uploads = sent + (G_B[:, I], G_A[I, :]) with every column/row of G different: the new factors equal
    old + Σ w_i (ΔB_i P_i, P_iᵀ ΔA_i) with P_i the dense selection matrix of client i's index set (an independent
    construction of the scatter). A permuted or unsorted placement would move distinct columns and fail."""
    method = _method([3, 5, 8], rank=8)
    _random_global(method, 4)
    before = {n: (B.clone(), A.clone()) for n, (B, A) in method.factors.items()}
    plans = [method.plan(i, 1, torch.Generator().manual_seed(20 + i)) for i in range(3)]
    g = torch.Generator().manual_seed(5)
    grads = [
        {n: (torch.randn(B.shape, generator=g), torch.randn(A.shape, generator=g)) for n, (B, A) in before.items()}
        for _ in plans
    ]
    uploads = [
        {n: (b + G[n][0][:, p.context[n]], a + G[n][1][p.context[n], :]) for n, (b, a) in p.factors.items()}
        for p, G in zip(plans, grads, strict=True)
    ]
    weights = [0.5, 0.3, 0.2]
    method.aggregate(plans, uploads, weights)
    for name, (B, A) in method.factors.items():
        expect_B, expect_A = before[name][0].clone(), before[name][1].clone()
        for w, p, G in zip(weights, plans, grads, strict=True):
            P = _selection(p.context[name], 8)
            expect_B += w * G[name][0][:, p.context[name]] @ P
            expect_A += w * P.T @ G[name][1][p.context[name], :]
        torch.testing.assert_close(B, expect_B, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(A, expect_A, rtol=1e-6, atol=1e-6)
        assert (B - before[name][0]).abs().max() > 0.1  # the update is large next to the tolerance


def test_fslora_aggregate_expectation_over_sketches():
    """E[Δ] of one client of budget k whose upload is sent + G restricted to its index set is (k/r) · G (each
    column kept with probability k/r), through the real plan and aggregate, 3 000 rounds, within 5 standard
    errors per entry. A sampler favouring some indices, or a scatter to the wrong place, shifts whole columns."""
    r, k, rounds = 8, 3, 3000
    shapes = {"m": ModuleShape(5, 4)}
    method = FactorAveraging(
        "fslora",
        shapes,
        r,
        ScaleRule("alpha_over_rank", 16.0),
        [k],
        ServerOptimizer(),
        torch.Generator().manual_seed(0),
    )
    g = torch.Generator().manual_seed(6)
    G_B, G_A = torch.randn(5, r, generator=g, dtype=torch.float64), torch.randn(r, 4, generator=g, dtype=torch.float64)
    method.factors = {"m": (torch.zeros(5, r, dtype=torch.float64), torch.zeros(r, 4, dtype=torch.float64))}
    sampler = torch.Generator().manual_seed(7)
    for _ in range(rounds):
        plan = method.plan(0, 1, sampler)
        idx = plan.context["m"]
        b, a = plan.factors["m"]
        method.aggregate([plan], [{"m": (b + G_B[:, idx], a + G_A[idx, :])}], [1.0])
    B, A = method.factors["m"]  # the sum of the rounds' Δ ("avg" at lr 1)
    p = k / r
    for total, G in ((B, G_B), (A, G_A)):
        se = G.abs() * (p * (1 - p) / rounds) ** 0.5
        assert torch.all((total / rounds - p * G).abs() < 5 * se)


def test_fslora_resumed_from_its_checkpoint_sketches_the_same_columns(tmp_path):
    """A checkpoint's tensors come back in name order ("l0.key" before "l0.query"); the restored method must keep
    the model's module order, since ``plan`` draws each module's index set from one generator in that order. A
    method restored in name order sketched other columns per module after a resume (resumed FSLoRA runs on
    query/key/value left the uninterrupted run from the first round after the resume)."""
    shapes = {f"l0.{m}": ModuleShape(24, 20) for m in ("query", "key", "value")}  # model order, not name order
    method = _method([4], shapes=shapes)
    plan = method.plan(0, 1, torch.Generator().manual_seed(3))
    method.aggregate([plan], [{n: (b + 0.5, a - 0.25) for n, (b, a) in plan.factors.items()}], [1.0])
    rundir.save_checkpoint(tmp_path, 1, method.state_tensors(), {"method_steps": method.step_count})
    _, tensors, meta = rundir.load_checkpoint(tmp_path)
    assert list(tensors) != list(method.state_tensors())  # the file keeps another order than the model
    resumed = _method([4], shapes=shapes)
    resumed.load_state_tensors(tensors, meta["method_steps"])
    assert list(resumed.factors) == list(shapes)
    expected, got = (m.plan(0, 2, torch.Generator().manual_seed(5)) for m in (method, resumed))
    for name in shapes:
        assert torch.equal(expected.context[name], got.context[name]), name
        for sent, again in zip(expected.factors[name], got.factors[name], strict=True):
            assert torch.equal(sent, again), name

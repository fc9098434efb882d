"""Adaptive planner: hand values, constraints, optimality against candidates and brute force, errors."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.errors import ConfigError
from fedlora.network import planner
from fedlora.network.planner import (
    FleetModel,
    InfeasibleFleetError,
    Plan,
    brute_force,
    check_feasible,
    client_times,
    evaluate,
    expected_round_s,
    objective,
    plan_fleet,
    predicted_rounds,
    uniform_baseline,
)
from fedlora.network.wireless import NOISE_PSD_W_PER_HZ, Channel, _rate, channel_gain, expected_max_time

K_GRID = [1, 2, 4, 8, 16]
Q_GRID = [0.1, 0.25, 0.5, 0.75, 1.0]


def received(distance_m: float, power_w: float = 0.2) -> float:
    """p·g / N0 in Hz for a client at ``distance_m``."""
    return power_w * channel_gain(Channel(distance_m=distance_m, tx_power_w=power_w)) / NOISE_PSD_W_PER_HZ


def random_fleet(n: int, seed: int, wireless: bool = True, q_min: float = 0.05) -> FleetModel:
    """SmolLM2-like payloads, rank 16, random caps, speeds, links and spreads (reproducible)."""
    rng = np.random.default_rng(seed)
    kw = dict(
        rank=16,
        weights=rng.dirichlet(np.full(n, 2.0)).tolist(),
        spread=rng.uniform(0.5, 4.0, n).tolist(),
        k_min=rng.choice([1, 2], n).tolist(),
        k_max=rng.choice([2, 4, 8, 16], n).tolist(),
        tokens=rng.uniform(4_000, 6_000, n).tolist(),
        tokens_per_s=rng.uniform(50, 500, n).tolist(),
        rank_cost=float(rng.uniform(0, 0.2)),
        bytes_down=(10_000.0, 460_800.0),
        bytes_up=(10_000.0, 460_800.0),
        downlink_bps=rng.uniform(5e6, 100e6, n).tolist(),
        rounds_full=200.0,
        variance_weight=float(rng.uniform(0.3, 2.0)),
        q_min=q_min,
    )
    if wireless:
        kw["received_over_n0"] = [
            received(d, p) for d, p in zip(rng.uniform(50, 800, n), rng.uniform(0.1, 0.2, n), strict=True)
        ]
        kw["bandwidth_hz"] = float(rng.uniform(2e6, 20e6))
    else:
        kw["uplink_bps"] = rng.uniform(1e6, 50e6, n).tolist()
    kw["k_max"] = [max(lo, hi) for lo, hi in zip(kw["k_min"], kw["k_max"], strict=True)]
    return FleetModel(**kw)


def two_clients(**overrides: object) -> FleetModel:
    kw = dict(
        rank=4,
        weights=[0.5, 0.5],
        spread=[1.0, 2.0],
        k_min=[1, 1],
        k_max=[4, 2],
        tokens=[1000.0, 2000.0],
        tokens_per_s=[100.0, 200.0],
        rank_cost=0.25,
        bytes_down=(1000.0, 500.0),
        bytes_up=(2000.0, 250.0),
        downlink_bps=[8000.0, 16000.0],
        uplink_bps=[4000.0, 8000.0],
        rounds_full=10.0,
        variance_weight=0.5,
        q_min=0.1,
    )
    kw.update(overrides)
    return FleetModel(**kw)


def assert_allowed(model: FleetModel, plan: Plan, k_grid: list[int] | None = None, q_grid: list[float] | None = None):
    assert len(plan.k) == len(plan.q) == len(plan.client_s) == model.n_clients
    for i, (k, q) in enumerate(zip(plan.k, plan.q, strict=True)):
        assert isinstance(k, int)
        assert model.k_min[i] <= k <= model.k_max[i]
        assert model.q_min <= q <= 1
        if k_grid is not None:
            assert k in k_grid
        if q_grid is not None:
            assert q in q_grid
    assert math.fsum(plan.q) >= model.min_participants - planner.SUM_TOLERANCE
    evaluate(model, plan.k, plan.q)  # checks every constraint
    assert plan.objective == pytest.approx(objective(model, plan.k, plan.q), rel=1e-12)
    assert plan.objective == pytest.approx(plan.rounds * plan.round_s, rel=1e-12)


# --- the model against hand values ------------------------------------------------------------------------------


def test_evaluate_hand_computed():
    # k = (2, 1), q = (0.5, 1), r = 4, κ = 0.25:
    # t_0 = 8·(1000 + 500·2)/8000 + 1000·(1 + 0.5)/((1 + 1)·100) + 8·(2000 + 250·2)/4000 = 2 + 7.5 + 5 = 14.5
    # t_1 = 8·(1000 + 500)/16000 + 2000·(1 + 0.25)/(2·200) + 8·(2000 + 250)/8000 = 0.75 + 6.25 + 2.25 = 9.25
    # E[T] = 14.5·0.5 + 9.25·1·(1 − 0.5) = 11.875
    # R = 10·(1 + 0.5·(0.25·1·(4/(2·0.5) − 1) + 0.25·2·(4/(1·1) − 1))) = 10·(1 + 0.5·2.25) = 21.25
    model = two_clients()
    plan = evaluate(model, [2, 1], [0.5, 1.0])
    assert plan.k == [2, 1] and plan.q == [0.5, 1.0]
    assert plan.client_s == pytest.approx([14.5, 9.25], rel=1e-12)
    assert plan.round_s == pytest.approx(11.875, rel=1e-12)
    assert plan.rounds == pytest.approx(21.25, rel=1e-12)
    assert plan.objective == pytest.approx(21.25 * 11.875, rel=1e-12)
    assert predicted_rounds(model, [4, 4], [1.0, 1.0]) == pytest.approx(10.0)  # full rank, full participation: R0


def test_wireless_times_use_equal_share_of_expected_participants():
    a = [received(100.0), received(300.0), received(600.0)]
    q = [0.2, 0.5, 1.0]
    model = FleetModel(
        rank=8,
        weights=[0.2, 0.3, 0.5],
        spread=[1.0, 1.0, 1.0],
        k_min=[1, 1, 1],
        k_max=[8, 8, 8],
        tokens=[5000.0] * 3,
        tokens_per_s=[100.0, 200.0, 400.0],
        rank_cost=0.0,
        bytes_down=(0.0, 1e5),
        bytes_up=(1e4, 1e5),
        downlink_bps=[1e7] * 3,
        received_over_n0=a,
        bandwidth_hz=1e7,
    )
    k = [2, 4, 8]
    expected = []
    for i in range(3):
        share = 1e7 / (1 + sum(q) - q[i])
        expected.append(
            8 * 1e5 * k[i] / 1e7 + 5000 / model.tokens_per_s[i] + 8 * (1e4 + 1e5 * k[i]) / _rate(a[i], share)
        )
    assert client_times(model, k, q) == pytest.approx(expected, rel=1e-12)
    assert expected_round_s(model, k, q) == pytest.approx(expected_max_time(expected, q), rel=1e-12)


@pytest.mark.parametrize(("wireless", "beta"), [(False, 0.0), (True, 0.0), (False, 1.0), (True, 0.6), (True, 1.7)])
def test_gradient_matches_finite_differences(wireless, beta):
    model = replace(random_fleet(5, seed=3, wireless=wireless), rank_exponent=beta)
    f = planner._arrays(model)
    rng = np.random.default_rng(0)
    k, q = rng.uniform(1, 4, 5), rng.uniform(0.1, 1, 5)
    value, grad_k, grad_q = planner._objective_grad(f, k, q)
    assert value == pytest.approx(objective(model, k.tolist(), q.tolist()), rel=1e-12)
    eps = 1e-6
    for i in range(5):
        e = np.eye(5)[i] * eps
        dk = (planner._objective_batch(f, k + e, q) - planner._objective_batch(f, k - e, q)) / (2 * eps)
        dq = (planner._objective_batch(f, k, q + e) - planner._objective_batch(f, k, q - e)) / (2 * eps)
        assert grad_k[i] == pytest.approx(dk, rel=1e-5, abs=1e-6 * abs(value))
        assert grad_q[i] == pytest.approx(dq, rel=1e-5, abs=1e-6 * abs(value))


def test_rank_exponent_hand_computed():
    # the plan of test_evaluate_hand_computed with β = 1: s = 0.5·(2/4) + 0.5·(1/4) = 0.375, R = 21.25 / 0.375
    model = two_clients(rank_exponent=1.0)
    plan = evaluate(model, [2, 1], [0.5, 1.0])
    assert plan.rounds == pytest.approx(21.25 / 0.375, rel=1e-12)
    assert plan.round_s == pytest.approx(11.875, rel=1e-12)  # E[T] does not depend on β
    assert plan.objective == pytest.approx(21.25 / 0.375 * 11.875, rel=1e-12)
    # β = 2: s = 0.5·0.25 + 0.5·0.0625
    assert predicted_rounds(two_clients(rank_exponent=2.0), [2, 1], [0.5, 1.0]) == pytest.approx(21.25 / 0.15625)
    for beta in (0.5, 1.0, 2.0):  # s = 1 at k = r: R0 at full rank and full participation
        model = two_clients(rank_exponent=beta, k_max=[4, 4])
        assert predicted_rounds(model, [4, 4], [1.0, 1.0]) == pytest.approx(10.0, rel=1e-12)
        assert uniform_baseline(model, 1, [2, 1]).objective == pytest.approx(objective(model, [2, 1], [0.5, 0.5]))
        assert uniform_baseline(model, 1, [2, 1]).rounds > uniform_baseline(two_clients(), 1, [2, 1]).rounds


def test_rank_exponent_zero_keeps_previous_plans_exactly():
    # plans computed before rank_exponent existed (same fleet, restarts=2), bit for bit
    model = random_fleet(4, seed=2, wireless=True)
    assert model.rank_exponent == 0.0
    before_grid = ([8, 4, 2, 2], [0.1, 0.25, 1.0, 0.5], 8606.434412993141)
    before = ([16, 4, 2, 2], [0.05, 0.1553613096324829, 1.0, 0.43423642205272606], 8153.848925394529)
    fleet = replace(model, rank_exponent=0.0)
    grid = plan_fleet(fleet, k_grid=K_GRID, q_grid=Q_GRID, restarts=2)
    assert (grid.k, grid.q, grid.objective) == before_grid
    plan = plan_fleet(fleet, restarts=2)
    # the optimiser's floats to 1e-9 (scipy and BLAS builds differ in the last bits), its integer ranks exactly
    assert plan.k == before[0]
    assert plan.q == pytest.approx(before[1], rel=1e-9) and plan.objective == pytest.approx(before[2], rel=1e-9)
    # and the hand-computed surrogate, exactly
    assert predicted_rounds(two_clients(rank_exponent=0.0), [2, 1], [0.5, 1.0]) == 10.0 * (1 + 0.5 * 2.25)


def test_rank_exponent_makes_the_planner_keep_larger_sketches():
    # uploads dominate (a full-rank upload takes ≈ 15–60 s, compute 10–50 s) and Σ q ≥ 3 keeps clients in the
    # rounds, so β = 0 shrinks the sketches of the slow uplinks; with β > 0 small sketches also cost step size
    kw = dict(
        rank=16,
        weights=[0.25] * 4,
        spread=[2.0] * 4,
        k_min=[1] * 4,
        k_max=[16] * 4,
        tokens=[5000.0] * 4,
        tokens_per_s=[500.0, 500.0, 250.0, 100.0],
        rank_cost=0.001,
        bytes_down=(1e4, 460_800.0),
        bytes_up=(1e4, 460_800.0),
        downlink_bps=[50e6] * 4,
        uplink_bps=[4e6, 2e6, 4e6, 1e6],
        rounds_full=200.0,
        variance_weight=0.3,
        min_participants=3.0,
    )
    for grids in ({}, {"k_grid": K_GRID, "q_grid": Q_GRID}):
        plain, adam = (plan_fleet(FleetModel(**kw, rank_exponent=beta), restarts=2, **grids) for beta in (0.0, 1.0))
        assert min(plain.k) < 16  # uploads matter: β = 0 shrinks some sketches
        assert all(b >= a for a, b in zip(plain.k, adam.k, strict=True))
        assert sum(adam.k) > sum(plain.k)


# --- the planner ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wireless", [False, True])
def test_plan_respects_constraints_with_and_without_grids(wireless):
    model = random_fleet(4, seed=11, wireless=wireless, q_min=0.2)
    assert_allowed(model, plan_fleet(model))
    assert_allowed(model, plan_fleet(model, k_grid=K_GRID, q_grid=Q_GRID), K_GRID, Q_GRID)
    assert_allowed(model, plan_fleet(model, k_grid=[1, 2, 3, 16]), [1, 2, 3, 16])
    assert_allowed(model, plan_fleet(model, q_grid=[0.1, 0.3, 0.9]), None, [0.3, 0.9])  # 0.1 < q_min: unused


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 5),
    seed=st.integers(0, 10_000),
    wireless=st.booleans(),
    q_min=st.sampled_from([0.05, 0.3, 1.0]),
    grids=st.booleans(),
    participants=st.floats(0.0, 1.0),
    beta=st.floats(0.0, 2.0),
)
def test_plan_respects_constraints_property(n, seed, wireless, q_min, grids, participants, beta):
    model = random_fleet(n, seed, wireless, q_min)
    model = replace(model, min_participants=participants * n, rank_exponent=beta)  # m ∈ [0, N]
    k_grid = K_GRID + [2] if grids else None  # a repeated value is fine
    q_grid = Q_GRID if grids and q_min < 1 else None
    plan = plan_fleet(model, k_grid=k_grid, q_grid=q_grid, restarts=2)
    assert_allowed(model, plan, k_grid, q_grid)
    if not grids:  # k = k_max, q = 1 is a start, and search never makes a start worse
        assert plan.objective <= objective(model, list(model.k_max), [1.0] * n) * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("wireless", [False, True])
def test_plan_beats_obvious_candidates(seed, wireless):
    model = random_fleet(6, seed, wireless)
    plan = plan_fleet(model)
    full = evaluate(model, list(model.k_max), [1.0] * 6)
    assert plan.objective <= full.objective * (1 + 1e-9)
    for m in (2, 3, 6):
        baseline = uniform_baseline(model, m, list(model.k_max))
        assert plan.objective <= baseline.objective * (1 + 1e-9)


@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("seed", range(6))
def test_plan_within_two_percent_of_brute_force(seed, beta):
    model = replace(random_fleet(3, seed, wireless=seed % 2 == 0), rank_exponent=beta)
    best = brute_force(model, K_GRID, Q_GRID)
    plan = plan_fleet(model, k_grid=K_GRID, q_grid=Q_GRID)
    assert_allowed(model, best, K_GRID, Q_GRID)
    assert plan.objective <= best.objective * 1.02
    assert plan.objective >= best.objective * (1 - 1e-12)  # brute force is the optimum over the grid
    assert plan_fleet(model).objective <= best.objective * 1.02  # the grid is inside the continuous domain


@pytest.mark.parametrize("seed", [0, 1, 3, 4, 6, 9])
def test_active_min_participants_within_two_percent_of_brute_force(seed):
    model = random_fleet(3, seed, wireless=seed % 2 == 0)
    free = brute_force(model, K_GRID, Q_GRID)
    model = replace(model, min_participants=min(sum(free.q) + 0.5, 3.0))  # the unconstrained optimum breaks it
    best = brute_force(model, K_GRID, Q_GRID)
    assert sum(best.q) >= model.min_participants - 1e-12
    assert best.objective > free.objective * (1 + 1e-6)  # the constraint is active
    plan = plan_fleet(model, k_grid=K_GRID, q_grid=Q_GRID)
    assert_allowed(model, plan, K_GRID, Q_GRID)
    assert best.objective * (1 - 1e-12) <= plan.objective <= best.objective * 1.02
    continuous = plan_fleet(model)
    assert_allowed(model, continuous)
    assert continuous.objective <= best.objective * 1.02


def test_inactive_min_participants_changes_nothing():
    # plans computed before min_participants existed (same fleet, restarts=2): 0 and any m ≤ N·q_min leave them be
    model = random_fleet(4, seed=2, wireless=True)
    before_grid = ([8, 4, 2, 2], [0.1, 0.25, 1.0, 0.5], 8606.434412993141)
    before = ([16, 4, 2, 2], [0.05, 0.1553613096324829, 1.0, 0.43423642205272606], 8153.848925394529)
    for m in (0.0, 4 * model.q_min):
        fleet = replace(model, min_participants=m)
        grid = plan_fleet(fleet, k_grid=K_GRID, q_grid=Q_GRID, restarts=2)
        assert (grid.k, grid.q) == before_grid[:2] and grid.objective == pytest.approx(before_grid[2], rel=1e-12)
        plan = plan_fleet(fleet, restarts=2)
        assert plan.k == before[0]
        assert plan.q == pytest.approx(before[1], rel=1e-9) and plan.objective == pytest.approx(before[2], rel=1e-9)
    # the same fleet with m = 3 > Σ q: the constraint binds, with and without grids
    fleet = replace(model, min_participants=3.0)
    plan = plan_fleet(fleet, restarts=2)
    assert_allowed(fleet, plan)
    assert sum(plan.q) == pytest.approx(3.0, abs=1e-6) and plan.objective > before[2]
    grid = plan_fleet(fleet, k_grid=K_GRID, q_grid=Q_GRID, restarts=2)
    assert_allowed(fleet, grid, K_GRID, Q_GRID)  # Σ q ≥ 3 from grid values
    assert grid.objective > before_grid[2]


def test_projection_onto_min_participants():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        y, m = rng.uniform(-0.5, 1.5, n), float(rng.uniform(0, n))
        q = planner._project(y, 0.05, 1.0, m)
        assert np.all((q >= 0.05) & (q <= 1.0)) and q.sum() >= m - 1e-12
        # the Euclidean projection is clip(y + λ) with the smallest λ ≥ 0 reaching the sum (bisection here)
        lo, hi = 0.0, 2.0
        for _ in range(100):
            lo, hi = (lo, (lo + hi) / 2) if np.clip(y + (lo + hi) / 2, 0.05, 1).sum() >= m else ((lo + hi) / 2, hi)
        assert q == pytest.approx(np.clip(y + (hi if np.clip(y, 0.05, 1).sum() < m else 0.0), 0.05, 1), abs=1e-9)


def test_grid_snapping_repairs_an_infeasible_rounding(monkeypatch):
    # 8 clients: too many roundings to try them all, and the nearest grid values break Σ q ≥ m
    repairs = []
    original = planner._repair
    monkeypatch.setattr(planner, "_repair", lambda *args: repairs.append(1) or original(*args))
    model = replace(random_fleet(8, seed=0), min_participants=5.0)
    plan = plan_fleet(model, k_grid=K_GRID, q_grid=Q_GRID, restarts=1)
    assert repairs
    assert_allowed(model, plan, K_GRID, Q_GRID)


@pytest.mark.parametrize("wireless", [False, True])
def test_slow_far_client_participates_less(wireless):
    # four identical clients except client 0: 10× slower compute and 10× farther (or a 10× slower uplink)
    kw = dict(
        rank=16,
        weights=[0.25] * 4,
        spread=[2.0] * 4,
        k_min=[1] * 4,
        k_max=[16] * 4,
        tokens=[5000.0] * 4,
        tokens_per_s=[50.0, 500.0, 500.0, 500.0],
        rank_cost=0.001,
        bytes_down=(1e4, 460_800.0),
        bytes_up=(1e4, 460_800.0),
        downlink_bps=[50e6] * 4,
        rounds_full=200.0,
    )
    if wireless:
        kw.update(received_over_n0=[received(500.0)] + [received(50.0)] * 3, bandwidth_hz=10e6)
    else:
        kw.update(uplink_bps=[2e6] + [20e6] * 3)
    plan = plan_fleet(FleetModel(**kw))
    assert plan.q[0] < min(plan.q[1:]) or plan.k[0] < min(plan.k[1:])
    assert plan.q[1:] == pytest.approx([plan.q[1]] * 3, rel=1e-2) and len(set(plan.k[1:])) == 1  # symmetric


def test_plan_is_deterministic_for_30_clients():
    model = random_fleet(30, seed=5, wireless=True)
    plan = plan_fleet(model, restarts=2, seed=1)
    assert_allowed(model, plan)
    assert plan_fleet(model, restarts=2, seed=1) == plan
    assert plan.objective <= objective(model, list(model.k_max), [1.0] * 30)
    model = replace(model, min_participants=28.5)  # above the unconstrained plan's Σ q ≈ 26.4: active
    plan = plan_fleet(model, restarts=0, seed=1)
    assert_allowed(model, plan)
    assert sum(plan.q) == pytest.approx(28.5, abs=1e-6)
    assert plan.objective <= objective(model, list(model.k_max), [1.0] * 30)


def test_brute_force_limits():
    model = random_fleet(2, seed=0)
    with pytest.raises(ValueError, match="combinations"):
        brute_force(random_fleet(6, seed=0), list(range(1, 17)), [0.1 * i for i in range(1, 11)])
    with pytest.raises(ValueError, match="client 0: k_grid has no value"):
        brute_force(model, [model.k_max[0] + 1], Q_GRID)
    with pytest.raises(ValueError, match="q_grid has no value"):
        plan_fleet(model, q_grid=[0.01])


# --- validation and errors --------------------------------------------------------------------------------------


def test_infeasible_memory_cap_names_the_client():
    model = two_clients(k_min=[1, 4], k_max=[4, 2])
    with pytest.raises(InfeasibleFleetError) as err:
        check_feasible(model)
    assert isinstance(err.value, ConfigError)
    message = str(err.value)
    assert "\n" not in message
    assert "client 1: its memory cap allows rank ≤ 2 but it must train at least 4" in message
    assert "k_max" in message and "k_min" in message and "client 0" not in message
    with pytest.raises(InfeasibleFleetError, match="client 1"):
        plan_fleet(model)
    with pytest.raises(InfeasibleFleetError, match="client 1"):
        brute_force(model, K_GRID, Q_GRID)


def test_infeasible_min_participants():
    model = two_clients(min_participants=2.5)
    with pytest.raises(InfeasibleFleetError) as err:
        check_feasible(model)
    message = str(err.value)
    assert "\n" not in message
    assert "min_participants = 2.5 exceeds the 2 clients: even q_i = 1 for all gives 2 expected participants" in message
    for call in (lambda: plan_fleet(model), lambda: brute_force(model, K_GRID, Q_GRID)):
        with pytest.raises(InfeasibleFleetError, match="min_participants"):
            call()
    with pytest.raises(InfeasibleFleetError, match="1 client: "):
        check_feasible(FleetModel(**{**model.__dict__, "min_participants": 1.5, **_one_client(model)}))
    # feasible in itself, but not on a q grid that stops at 0.5
    model = two_clients(min_participants=1.5)
    check_feasible(model)
    for call in (lambda: plan_fleet(model, q_grid=[0.25, 0.5]), lambda: brute_force(model, K_GRID, [0.25, 0.5])):
        with pytest.raises(InfeasibleFleetError, match=r"largest allowed q_grid value 0.5 .* 2·0.5 = 1 expected"):
            call()
    # m = N: everyone every round
    model = two_clients(min_participants=2.0)
    assert plan_fleet(model).q == pytest.approx([1.0, 1.0], abs=1e-9)  # the optimiser's output: a tolerance
    assert brute_force(model, K_GRID, Q_GRID).q == [1.0, 1.0]


def _one_client(model: FleetModel) -> dict:
    """Per-client fields of ``model`` cut to client 0, with weight 1."""
    per_client = ("spread", "k_min", "k_max", "tokens", "tokens_per_s", "downlink_bps", "uplink_bps")
    return {"weights": [1.0], **{f: getattr(model, f)[:1] for f in per_client}}


def test_infeasible_q_min_and_dead_uplink():
    with pytest.raises(InfeasibleFleetError, match="q_min"):
        plan_fleet(two_clients(q_min=0.0))
    with pytest.raises(InfeasibleFleetError, match="q_min"):
        check_feasible(two_clients(q_min=1.5))
    wireless = random_fleet(3, seed=1)
    dead = FleetModel(
        **{
            **{f: getattr(wireless, f) for f in wireless.__dataclass_fields__},
            "received_over_n0": (received(100.0), 0.0, -1.0),
        }
    )
    with pytest.raises(InfeasibleFleetError, match=r"client 1: .*received_over_n0.*; client 2") as err:
        plan_fleet(dead)
    assert "\n" not in str(err.value)
    check_feasible(random_fleet(3, seed=1))  # feasible: no error


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"rank": 0}, "rank"),
        ({"weights": [0.5, 0.3]}, "weights"),
        ({"weights": [1.0, 0.0]}, "weights[1]"),
        ({"spread": [1.0]}, "spread"),
        ({"spread": [1.0, -1.0]}, "spread[1]"),
        ({"k_min": [0, 1]}, "k_min[0]"),
        ({"k_min": [1.5, 1]}, "k_min[0]"),
        ({"k_max": [5, 2]}, "k_max[0]"),
        ({"tokens": [1.0, math.nan]}, "tokens[1]"),
        ({"tokens_per_s": [0.0, 1.0]}, "tokens_per_s[0]"),
        ({"rank_cost": -0.1}, "rank_cost"),
        ({"bytes_down": (1.0, 2.0, 3.0)}, "bytes_down"),
        ({"bytes_up": (1.0, -2.0)}, "bytes_up[1]"),
        ({"downlink_bps": [1.0, math.inf]}, "downlink_bps[1]"),
        ({"uplink_bps": [1.0, 0.0]}, "uplink_bps[1]"),
        ({"uplink_bps": None}, "received_over_n0"),
        ({"uplink_bps": None, "received_over_n0": [1e8, 1e8]}, "bandwidth_hz"),
        ({"received_over_n0": [1e8, 1e8], "bandwidth_hz": 1e6}, "uplink_bps"),
        ({"uplink_bps": None, "received_over_n0": [1e8, math.nan], "bandwidth_hz": 1e6}, "received_over_n0[1]"),
        ({"uplink_bps": None, "received_over_n0": [1e8, 1e8], "bandwidth_hz": 0.0}, "bandwidth_hz"),
        ({"rounds_full": 0.0}, "rounds_full"),
        ({"variance_weight": -1.0}, "variance_weight"),
        ({"q_min": math.nan}, "q_min"),
        ({"min_participants": -0.5}, "min_participants"),
        ({"min_participants": math.inf}, "min_participants"),
        ({"min_participants": "many"}, "min_participants"),
        ({"rank_exponent": -0.5}, "rank_exponent"),
        ({"rank_exponent": math.nan}, "rank_exponent"),
        ({"rank_exponent": math.inf}, "rank_exponent"),
    ],
)
def test_bad_fleet_model_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        two_clients(**overrides)


def test_model_copies_caller_lists():
    weights = [0.5, 0.5]
    model = two_clients(weights=weights)
    weights[0] = 0.9
    assert model.weights == (0.5, 0.5)


def test_evaluate_names_the_client():
    model = two_clients()
    with pytest.raises(ValueError, match=r"client 1: k = 3 is outside \[k_min, k_max\] = \[1, 2\]"):
        evaluate(model, [1, 3], [1.0, 1.0])
    with pytest.raises(ValueError, match="client 0: k = 1.5 must be an integer"):
        evaluate(model, [1.5, 1], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"client 0: q = 0.05 is outside \[q_min, 1\]"):
        evaluate(model, [1, 1], [0.05, 1.0])
    with pytest.raises(ValueError, match="entries"):
        evaluate(model, [1], [1.0])


def test_evaluate_checks_min_participants():
    model = two_clients(min_participants=1.5)
    assert evaluate(model, [1, 1], [0.5, 1.0]).q == [0.5, 1.0]  # Σ q = m exactly is allowed
    with pytest.raises(ValueError, match=r"q sums to 1.4 expected participants .*FleetModel.min_participants = 1.5"):
        evaluate(model, [1, 1], [0.4, 1.0])


def test_uniform_baseline():
    model = two_clients()
    plan = uniform_baseline(model, 1, [4, 2])
    assert plan.q == [0.5, 0.5]
    assert plan.objective == pytest.approx(objective(model, [4, 2], [0.5, 0.5]))
    assert uniform_baseline(two_clients(min_participants=1.5), 1, [4, 2]) == plan  # Σ q = m: no min_participants
    with pytest.raises(ValueError, match="clients_per_round"):
        uniform_baseline(model, 3, [4, 2])
    with pytest.raises(ValueError, match="client 1"):
        uniform_baseline(model, 2, [4, 4])

"""The wall-clock study's pure parts (benchmarks/time_to_target.py) against independent references, and its task
scheduler (benchmarks/wallclock.py) with the subprocesses replaced by a recorder."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from fedlora.network.planner import FleetModel, predicted_rounds

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ttt = _load("time_to_target")
wallclock = _load("wallclock")


# --- smoothing and time to target ---------------------------------------------------------------------------------


def test_smooth_is_a_trailing_mean_of_three():
    values = np.random.default_rng(0).uniform(0.5, 1.5, size=11)
    out = ttt.smooth(values.tolist(), 3)
    full = np.convolve(values, np.ones(3) / 3, mode="valid")  # the mean of each window of 3, the last at its end
    np.testing.assert_allclose(out[2:], full, rtol=1e-12)
    assert out[0] == values[0]
    assert out[1] == pytest.approx((values[0] + values[1]) / 2)
    assert ttt.smooth(values.tolist(), 1) == pytest.approx(values.tolist())


def test_first_crossing_matches_a_dense_reference():
    rng = np.random.default_rng(1)
    for _ in range(20):
        xs = np.cumsum(rng.uniform(1, 20, size=9))
        ys = 1.2 - 0.08 * np.arange(9) + rng.normal(0, 0.1, size=9)  # a noisy falling curve, not monotone
        target = float(rng.uniform(ys.min(), ys[0]))
        dense_x = np.linspace(xs[0], xs[-1], 200_001)
        dense_y = np.interp(dense_x, xs, ys)
        hit = np.flatnonzero(dense_y <= target)
        reference = dense_x[hit[0]] if hit.size else None
        got = ttt.first_crossing(xs.tolist(), ys.tolist(), target)
        if reference is None:
            assert got is None
        else:
            step = dense_x[1] - dense_x[0]
            assert got == pytest.approx(reference, abs=1.5 * step)


def test_first_crossing_edges():
    assert ttt.first_crossing([0, 10, 20], [1.0, 0.8, 0.6], 0.7) == pytest.approx(15.0)
    assert ttt.first_crossing([0, 10, 20], [1.0, 0.8, 0.9], 0.7) is None
    assert ttt.first_crossing([5, 10], [0.6, 0.9], 0.7) == 5  # already below at the first point
    # the first crossing, not a later one: dips below 0.7 at x = 12.5, rises above and falls below again
    assert ttt.first_crossing([0, 10, 20, 30, 40], [1.0, 0.8, 0.4, 0.9, 0.3], 0.7) == pytest.approx(12.5)


def test_target_rule():
    curves = [[1.2, 1.0, 0.8, 0.85], [1.1, 1.05, 0.9, 0.95], [1.25, 0.7, 0.6]]
    # L0 = min initial = 1.1, L* = max of the minima = 0.9: 90 % of the way from 1.1 to 0.9
    assert ttt.target_loss(curves, 0.9) == pytest.approx(1.1 - 0.9 * 0.2)
    assert ttt.target_loss(curves, 1.0) == pytest.approx(0.9)
    for c in curves:  # every curve reaches it
        assert min(c) <= ttt.target_loss(curves, 0.9)
    assert ttt.target_loss([[1.0, 1.1], [1.0, 0.5]], 0.9) == pytest.approx(1.0)  # no improvement: L*
    with pytest.raises(ValueError, match="fraction"):
        ttt.target_loss(curves, 1.5)


# --- the rounds model: our terms against the planner's own R(k, q), and the R0 / θ fit ---------------------------


def _fleet(rng, n: int, rank: int, r0: float, theta: float, beta: float) -> FleetModel:
    weights = rng.uniform(0.5, 2.0, size=n)
    weights = (weights / weights.sum()).tolist()
    return FleetModel(
        rank=rank,
        weights=weights,
        spread=rng.uniform(0.5, 8.0, size=n).tolist(),
        k_min=[1] * n,
        k_max=[rank] * n,
        tokens=[1000.0] * n,
        tokens_per_s=[100.0] * n,
        rank_cost=0.0,
        bytes_down=(1000.0, 100.0),
        bytes_up=(1000.0, 100.0),
        downlink_bps=[1e6] * n,
        uplink_bps=[1e6] * n,
        rounds_full=r0,
        variance_weight=theta,
        q_min=0.05,
        rank_exponent=beta,
    )


def test_model_terms_reproduce_the_planners_rounds():
    rng = np.random.default_rng(2)
    for beta in (0.0, 0.7, 1.0):
        model = _fleet(rng, 24, 64, r0=17.0, theta=0.4, beta=beta)
        k = rng.integers(1, 65, size=24).tolist()
        q = rng.uniform(0.05, 1.0, size=24).tolist()
        v = ttt.variance_term(model.weights, model.spread, k, q, 64)
        s = ttt.step_fraction(model.weights, k, 64, beta)
        assert ttt.predicted_rounds(17.0, 0.4, v, s) == pytest.approx(predicted_rounds(model, k, q), rel=1e-10)


def test_fit_recovers_r0_and_theta_from_two_uniform_runs():
    rng = np.random.default_rng(3)
    model = _fleet(rng, 24, 64, r0=23.5, theta=0.37, beta=0.9)
    q = [4 / 24] * 24
    ks = (64, 8)
    measured = [predicted_rounds(model, [k] * 24, q) for k in ks]  # what the planner's model says the runs take
    terms = [
        (
            ttt.variance_term(model.weights, model.spread, [k] * 24, q, 64),
            ttt.step_fraction(model.weights, [k] * 24, 64, 0.9),
        )
        for k in ks
    ]
    r0, theta = ttt.fit_rounds_model([t[0] for t in terms], [t[1] for t in terms], measured)
    assert r0 == pytest.approx(23.5, rel=1e-9)
    assert theta == pytest.approx(0.37, rel=1e-9)
    # a third run (k = 32) is then predicted exactly by the planner's formula with the fitted constants
    fitted = _fleet(np.random.default_rng(3), 24, 64, r0=r0, theta=theta, beta=0.9)
    assert predicted_rounds(fitted, [32] * 24, q) == pytest.approx(predicted_rounds(model, [32] * 24, q), rel=1e-9)


def test_fit_clips_a_negative_variance_weight():
    # more variance but fewer rounds: θ would be negative; it is clipped to 0 with R0 the mean of R·s
    r0, theta = ttt.fit_rounds_model([1.0, 3.0], [1.0, 0.5], [10.0, 12.0])
    assert theta == 0.0
    assert r0 == pytest.approx((10.0 + 6.0) / 2)
    with pytest.raises(ValueError, match="different variance"):
        ttt.fit_rounds_model([1.0, 1.0], [1.0, 1.0], [3.0, 4.0])


def test_every_constant_is_recovered_from_a_sampling_pair_and_the_k_grid():
    # the planner's own model (an independent implementation) makes the "measured" rounds of the study's runs:
    # (b) at k = 32 with 4 and with 8 clients per round, k = 64 and k = 8 with 4; the fit must return its constants
    rng = np.random.default_rng(4)
    n, rank = 24, 64
    model = _fleet(rng, n, rank, r0=9.5, theta=0.021, beta=0.63)

    def rounds(k, per_round):
        return predicted_rounds(model, [k] * n, [per_round / n] * n)

    def v(k, per_round):
        return ttt.variance_term(model.weights, model.spread, [k] * n, [per_round / n] * n, rank)

    r0, theta = ttt.fit_from_sampling_pair(
        (v(32, 4), v(32, 8)), (rounds(32, 4), rounds(32, 8)), v(64, 4), rounds(64, 4)
    )
    assert theta == pytest.approx(0.021, rel=1e-9)
    assert r0 == pytest.approx(9.5, rel=1e-9)
    beta = ttt.fit_rank_exponent(r0, theta, [8 / 64, 32 / 64], [v(8, 4), v(32, 4)], [rounds(8, 4), rounds(32, 4)])
    assert beta == pytest.approx(0.63, rel=1e-9)
    # more clients per round, fewer rounds: θ > 0; the reverse is kept as measured (negative), not clipped
    _, negative = ttt.fit_from_sampling_pair((3.0, 1.0), (10.0, 12.0), 0.5, 8.0)
    assert negative < 0
    with pytest.raises(ValueError, match="differ"):
        ttt.fit_from_sampling_pair((2.0, 2.0), (10.0, 12.0), 0.5, 8.0)
    with pytest.raises(ValueError, match="non-positive"):
        ttt.fit_from_sampling_pair((3.0, 1.0), (10.0, 12.0), 20.0, 8.0)


def test_log_ratio_interval_by_hand():
    ratios = [1.5, 2.0, 3.0]
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    got = ttt.log_ratio_interval(ratios)
    assert got == pytest.approx((math.exp(mean), math.exp(mean - half), math.exp(mean + half)), rel=1e-9)
    assert got[0] == pytest.approx((1.5 * 2.0 * 3.0) ** (1 / 3))  # a geometric mean
    one = ttt.log_ratio_interval([2.0])
    assert one[0] == pytest.approx(2.0) and math.isnan(one[1]) and math.isnan(one[2])


# --- the scheduler: dependencies, failures, runs that are not needed ---------------------------------------------


def test_schedule_orders_by_dependency_and_blocks_after_a_failure(tmp_path, monkeypatch):
    started: list[str] = []

    def fake_run(study, task, overrides):
        started.append(task.name)
        return 0.01, 1 if task.name == "bad" else 0

    monkeypatch.setattr(wallclock, "run_task", fake_run)
    study = wallclock.Study(tmp_path, [], 8, (1, 4, 8), (8, 1), jobs=2)
    Task = wallclock.Task
    todo = [
        Task("root", "plan", (), lambda: []),
        Task("bad", "run", ("root",), lambda: []),
        Task("after-bad", "run", ("bad",), lambda: []),
        Task("skip", "run", ("root",), lambda: None),
        Task("after-skip", "run", ("skip", "root"), lambda: []),
        Task("raises", "run", ("root",), lambda: 1 / 0),
        Task("after-raises", "run", ("raises",), lambda: []),
    ]
    failed = wallclock.schedule(study, todo)
    assert started[0] == "root"
    assert set(started) == {"root", "bad", "after-skip"}
    assert sorted(failed) == ["bad", "raises"]
    assert study.decided["skipped"] == {"skip"}
    assert study.decided["blocked"] == {"after-bad", "after-raises"}


def test_run_differences_ignore_the_host_clock_and_nothing_else(tmp_path):
    import json

    def make(name: str, records: list[dict], adapter: bytes) -> Path:
        run = tmp_path / name
        (run / "adapter").mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run / "adapter" / "adapter_model.safetensors").write_bytes(adapter)
        return run

    records = [{"round": 1, "eval_accuracy": 0.5, "sim_time_s": 12.0, "wall_s": 3.0}, {"round": 2, "wall_s": 6.0}]
    first = make("a", records, b"weights")
    slower = make("b", [{**r, "wall_s": r["wall_s"] * 2} for r in records], b"weights")
    assert wallclock.run_differences(first, slower) == []
    changed = make("c", [{**records[0], "eval_accuracy": 0.501}, records[1]], b"weights")
    assert wallclock.run_differences(first, changed) == ["round 1: eval_accuracy 0.5 vs 0.501"]
    other_adapter = make("d", records, b"weightz")
    assert wallclock.run_differences(first, other_adapter) == ["adapter/adapter_model.safetensors differs"]
    shorter = make("e", records[:1], b"weights")
    assert wallclock.run_differences(first, shorter) == ["metrics.jsonl: 2 records vs 1"]


def test_plan_differences_ignore_the_pilots_clock_and_nothing_else(tmp_path):
    plan = (
        '[settings]\n"budgets.per_client" = [8, 64]\n"network.rank_cost" = 0.0007\n'
        "[prediction]\nrounds = 6.0\nround_s = 13.2\n"
        "[pilot]\nseconds = 50.0\nlocal_tokens_per_s = 300.0\nrank_exponent = 0.9\n"
    )
    first, clock, other_k, other_beta = (tmp_path / f"{n}.toml" for n in "abcd")
    first.write_text(plan)
    clock.write_text(plan.replace("seconds = 50.0", "seconds = 71.5").replace("= 300.0", "= 180.0"))
    other_k.write_text(plan.replace("[8, 64]", "[16, 64]"))
    other_beta.write_text(plan.replace("rank_exponent = 0.9", "rank_exponent = 0.91"))
    assert wallclock.plan_differences(first, clock) == []
    assert wallclock.plan_differences(first, other_k) == ["[settings] budgets.per_client differs"]
    assert wallclock.plan_differences(first, other_beta) == ["[pilot] rank_exponent differs"]

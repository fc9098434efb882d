"""Adaptive planner: ``plan_fleet`` on coarse grids vs exhaustive search (``brute_force``) on small random fleets.

Each instance is a seeded random fleet of 2..--max-clients clients with SmolLM2-135M-like payloads (115 200 LoRA
parameters per rank unit, float32: d1 = u1 = 460 800 bytes per rank unit, plus 10 kB of headers), rank r = 16,
memory caps k_max ∈ {4, 8, 16}, ≈ 5 000 tokens per round at 50–500 tokens/s, per-token rank cost κ = 0.001
(≈ 6·115 200 / (6·135 M) FLOPs per rank unit), downlinks of 20–100 Mbit/s and a wireless uplink: 10 MHz
shared by the round's participants, tx power 0.1–0.2 W at 50–500 m (``Channel`` / ``channel_gain``,
received_over_n0 = p·g / N0). Rounds surrogate: R0 = 200, θ = 1, ρ_i ∈ [1, 4], weights from Dirichlet(2).

For every instance both searches use the grids k ∈ {1, 2, 4, 8, 16} (within each client's caps) and
q ∈ {0.1, 0.25, 0.5, 0.75, 1}; the table gives the planner's objective J (predicted seconds to converge), brute
force's, their ratio (target ≤ 1.02), both times, and how much longer the obvious plan (everyone every round at
k = k_max) is predicted to take (full/plan). Every instance is then solved again with the constraint
Σ q ≥ m = min_participants. By default m is made active: halfway between the unconstrained optimum's Σ q and N
(so it binds wherever that optimum has some q_i < 1; m = N/2 binds on none of these fleets, whose optima already
have Σ q ≥ N/2); ``--participants F`` uses m = F·N instead. The table's right part gives m, that planner's J
over constrained brute force's (m ratio), the planner's time, and how much the constraint costs at the optimum
(brute force with m over without; 1.000 where it does not bind). The last lines time ``plan_fleet`` without
grids on one --large-clients fleet, without the constraint and with m = N/2 and m = 0.8·N (which binds), then
with β, without the constraint and with m = 0.8·N.

Every instance is also solved with the rank exponent β = --rank-exponent (default 1, the Adam-like value; 0 skips
it): the rounds surrogate divided by the step fraction s(k) = Σ_i a_i (k_i / r)^β. The columns after the second
bar give the planner's J over brute force's with that β, without and with its own active m (chosen as above from
the β optimum), and the β plan's k; the summary gives worst and mean ratios for those instances too.

Run: ``python benchmarks/planner.py`` (defaults: 40 instances, up to 4 clients; ≈ 7 s on 2 cores).
"""

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from fedlora.network.planner import FleetModel, Plan, brute_force, evaluate, plan_fleet
from fedlora.network.wireless import NOISE_PSD_W_PER_HZ, Channel, channel_gain

RANK = 16
K_GRID = [1, 2, 4, 8, 16]
Q_GRID = [0.1, 0.25, 0.5, 0.75, 1.0]
BYTES_PER_RANK = 115_200 * 4  # SmolLM2-135M LoRA parameters per rank unit, float32
TARGET = 1.02


def random_fleet(n: int, seed: int) -> FleetModel:
    """A reproducible wireless fleet of ``n`` clients with the numbers of the module docstring."""
    rng = np.random.default_rng(seed)
    channels = [
        Channel(distance_m=d, tx_power_w=p)
        for d, p in zip(rng.uniform(50, 500, n), rng.uniform(0.1, 0.2, n), strict=True)
    ]
    return FleetModel(
        rank=RANK,
        weights=rng.dirichlet(np.full(n, 2.0)).tolist(),
        spread=rng.uniform(1.0, 4.0, n).tolist(),
        k_min=[1] * n,
        k_max=rng.choice([4, 8, 16], n).tolist(),
        tokens=rng.uniform(4_000, 6_000, n).tolist(),
        tokens_per_s=rng.uniform(50, 500, n).tolist(),
        rank_cost=0.001,
        bytes_down=(10_000.0, float(BYTES_PER_RANK)),
        bytes_up=(10_000.0, float(BYTES_PER_RANK)),
        downlink_bps=rng.uniform(20e6, 100e6, n).tolist(),
        received_over_n0=[ch.tx_power_w * channel_gain(ch) / NOISE_PSD_W_PER_HZ for ch in channels],
        bandwidth_hz=10e6,
        rounds_full=200.0,
        variance_weight=1.0,
        q_min=0.05,
    )


def _timed(fn: Callable[..., Plan], *args: object, **kwargs: object) -> tuple[float, Plan]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def _fmt(values: Sequence[float]) -> str:
    return "[" + " ".join(f"{v:g}" for v in values) + "]"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=40)
    ap.add_argument("--max-clients", type=int, default=4, help="fleets have 2..this many clients")
    ap.add_argument("--large-clients", type=int, default=30, help="fleet size for the continuous timing (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--participants",
        type=float,
        default=None,
        help="min_participants of the constrained runs as a fraction of N (default: halfway between the "
        "unconstrained optimum's sum of q and N, so that it binds)",
    )
    ap.add_argument(
        "--rank-exponent",
        type=float,
        default=1.0,
        help="rank exponent β of the extra instances (the same fleets with FleetModel.rank_exponent = β; 0: none)",
    )
    args = ap.parse_args(argv)

    print(
        f"# fedlora planner benchmark: {args.instances} fleets of 2..{args.max_clients} clients, rank {RANK}, "
        f"k grid {K_GRID}, q grid {Q_GRID}, seed {args.seed}"
    )
    print(
        f"# python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    header = f"{'#':>3s} {'N':>2s} {'planner J s':>12s} {'brute J s':>12s} {'ratio':>7s} {'plan ms':>8s}"
    header += f" {'brute ms':>9s} {'full/plan':>9s} | {'m':>5s} {'m ratio':>7s} {'m ms':>7s} {'m cost':>7s}"
    beta = args.rank_exponent
    if beta:
        header += f" | {'β ratio':>7s} {'β m rat':>7s}"
    print(f"{header}  plan k / q (with m: q){' (β: k)' if beta else ''}")
    rng = np.random.default_rng(args.seed)
    ratios, plan_times, brute_times, m_ratios, m_times, m_costs = [], [], [], [], [], []
    b_ratios: list[float] = []
    b_m_ratios: list[float] = []
    for i in range(args.instances):
        n = int(rng.integers(2, args.max_clients + 1))
        model = random_fleet(n, args.seed * 1_000_003 + i)
        plan_s, plan = _timed(plan_fleet, model, k_grid=K_GRID, q_grid=Q_GRID)
        brute_s, best = _timed(brute_force, model, K_GRID, Q_GRID)
        ratio = plan.objective / best.objective
        full = evaluate(model, list(model.k_max), [1.0] * n).objective  # everyone, every round, at the memory cap
        ratios.append(ratio)
        plan_times.append(plan_s)
        brute_times.append(brute_s)
        # the same fleet with Σ q ≥ m
        m = (sum(best.q) + n) / 2 if args.participants is None else args.participants * n
        constrained = replace(model, min_participants=m)
        m_plan_s, m_plan = _timed(plan_fleet, constrained, k_grid=K_GRID, q_grid=Q_GRID)
        m_best = brute_force(constrained, K_GRID, Q_GRID)
        evaluate(constrained, m_plan.k, m_plan.q)  # raises if the plan breaks a constraint
        m_ratios.append(m_plan.objective / m_best.objective)
        m_times.append(m_plan_s)
        m_costs.append(m_best.objective / best.objective)
        row = (
            f"{i:3d} {n:2d} {plan.objective:12.1f} {best.objective:12.1f} {ratio:7.4f} {plan_s * 1e3:8.1f} "
            f"{brute_s * 1e3:9.1f} {full / plan.objective:9.2f} | {m:5.2f} "
            f"{m_ratios[-1]:7.4f} {m_plan_s * 1e3:7.1f} {m_costs[-1]:7.3f}"
        )
        tail = f"  {_fmt(plan.k)} / {_fmt(plan.q)} (q {_fmt(m_plan.q)})"
        if beta:  # the same fleet with the rank exponent, without and with its own active m
            b_model = replace(model, rank_exponent=beta)
            b_best = brute_force(b_model, K_GRID, Q_GRID)
            b_plan = plan_fleet(b_model, k_grid=K_GRID, q_grid=Q_GRID)
            b_m = (sum(b_best.q) + n) / 2 if args.participants is None else args.participants * n
            b_constrained = replace(b_model, min_participants=b_m)
            b_m_plan = plan_fleet(b_constrained, k_grid=K_GRID, q_grid=Q_GRID)
            evaluate(b_constrained, b_m_plan.k, b_m_plan.q)
            b_ratios.append(b_plan.objective / b_best.objective)
            b_m_ratios.append(b_m_plan.objective / brute_force(b_constrained, K_GRID, Q_GRID).objective)
            row += f" | {b_ratios[-1]:7.4f} {b_m_ratios[-1]:7.4f}"
            tail += f" (β: {_fmt(b_plan.k)})"
        print(row + tail)
    m_label = "active m" if args.participants is None else f"m = {args.participants:g}·N"
    summaries = [("min_participants = 0", ratios), (f"min_participants: {m_label}", m_ratios)]
    if beta:
        summaries += [(f"β = {beta:g}, min_participants = 0", b_ratios), (f"β = {beta:g}, {m_label}", b_m_ratios)]
    for label, values in summaries:
        exact = sum(r <= 1 + 1e-9 for r in values)
        print(
            f"{label}: ratio planner / brute force: worst {max(values):.4f}, mean {statistics.fmean(values):.4f}, "
            f"exact optimum in {exact}/{len(values)} (target <= {TARGET})"
        )
    binding = sum(c > 1 + 1e-9 for c in m_costs)
    print(
        f"{m_label} binds in {binding}/{len(m_costs)} instances (constrained optimum up to "
        f"{max(m_costs):.3f}× the unconstrained one)"
    )
    print(
        f"time per instance: planner median {statistics.median(plan_times) * 1e3:.1f} ms "
        f"(max {max(plan_times) * 1e3:.1f}), with m {statistics.median(m_times) * 1e3:.1f} ms "
        f"(max {max(m_times) * 1e3:.1f}), brute force median {statistics.median(brute_times) * 1e3:.1f} ms "
        f"(max {max(brute_times) * 1e3:.1f})"
    )
    if args.large_clients:
        n = args.large_clients
        model = random_fleet(n, args.seed + 7)
        runs = [(0.0, 0.0), (n / 2, 0.0), (0.8 * n, 0.0)] + ([(0.0, beta), (0.8 * n, beta)] if beta else [])
        for m, b in runs:
            seconds, plan = _timed(plan_fleet, replace(model, min_participants=m, rank_exponent=b))
            print(
                f"plan_fleet without grids, N = {n}, min_participants = {m:g}{f', β = {b:g}' if b else ''}: "
                f"{seconds:.2f} s, "
                f"J = {plan.objective:.1f} s, Σ q = {sum(plan.q):.3f}, mean k = {statistics.fmean(plan.k):.1f}"
            )
    return 0 if max(ratios + m_ratios + b_ratios + b_m_ratios) <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

"""Simulated wall-clock time to a target held-out loss: the adaptive plan against two uniform-sampling baselines.

Real training of SmolLM2-135M (packaged) on the demo's tweets over a heterogeneous wireless fleet of 24 clients
(compute speeds lognormal, distances 50–600 m, one shared uplink band). Three runs, same data, same rounds:

  (a) adaptive: ``fedlora plan`` (pilot run, k_i and q_i, bandwidth policy), then FSLoRA with that plan;
  (b) FSLoRA with uniform sampling of 4 clients per round, k = 8 for every client, equal bandwidth shares;
  (c) FedIT at full rank 16 with uniform sampling of 4 clients per round, equal bandwidth shares.

Every run evaluates after each round. The target loss is the highest of the three runs' best held-out losses, so
every run reaches it; time to target is read off the loss-vs-simulated-time curve (linear interpolation between
evaluations). Prints the table, writes ``results.json`` and ``loss_vs_time.png`` into --out.

    python benchmarks/wallclock.py --out bench-wallclock          # ≈ 25–35 min on 2 CPU cores
    python benchmarks/wallclock.py --out bench-wallclock --quick  # tiny random model: checks the pipeline only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
NUM_CLIENTS = 24
PER_ROUND = 4

FLEET = [
    f"partition.num_clients={NUM_CLIENTS}",
    "partition.min_partition_size=10",
    'fleet.tokens_per_s={dist="lognormal", median=200.0, sigma=0.8}',
    'fleet.distance_m={dist="uniform", low=50.0, high=600.0}',
    "fleet.tx_power_dbm=20",
    "fleet.downlink_mbps=50",
    "fleet.uplink_mbps=10",  # unused on the wireless uplink; replaces the demo's 10-client list
    f"budgets.per_client={[16] * NUM_CLIENTS}",  # the pilot trains at full rank; the runs set their own
    'network.uplink="wireless"',
    "network.bandwidth_mhz=1.0",
    'network.allocation="equal"',
]
TRAINING = [
    "data.max_examples=3000",
    "data.eval_size=100",
    "train.local_steps=6",
    "train.batch_size=4",
    "train.lr=0.003",
    "eval.every=1",
    "eval.batch_size=50",
    "planner.pilot_rounds=1",
]
QUICK = [
    'model.name="tiny-random"',
    'model.target_modules=["q_proj", "v_proj"]',
    "data.max_examples=600",
    "data.eval_size=32",
    "partition.min_partition_size=4",
    "train.local_steps=2",
]


def time_to_target(points: list[tuple[float, float]], target: float) -> float | None:
    """First simulated time at which the loss curve (time, loss) reaches ``target`` (linear interpolation)."""
    prev = None
    for t, loss in points:
        if loss <= target:
            if prev is None or prev[1] <= target:
                return t
            t0, l0 = prev
            return t0 + (l0 - target) / (l0 - loss) * (t - t0)
        prev = (t, loss)
    return None


def curve(run_dir: Path) -> list[tuple[float, float]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    points = [(0.0, summary["initial_eval"]["eval_loss"])]
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "eval_loss" in record:
            points.append((record["sim_time_s"], record["eval_loss"]))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-wallclock"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny random model (pipeline check, not a result)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (sim times do not depend on it)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from fedlora import federation, planning
    from fedlora.config import load_config

    config_path = ROOT / "examples" / "demo.toml"
    common = [*FLEET, *TRAINING, f"rounds={args.rounds}", f"threads={args.threads}", *(QUICK if args.quick else [])]
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    plan_path = args.out / "plan.toml"
    if not plan_path.is_file():
        plan = planning.make_plan(load_config(config_path, common), str(config_path), args.out / "pilot-work")
        plan_path.write_text(tomli_w.dumps(plan))
    plan = __import__("tomllib").loads(plan_path.read_text())
    print(f"plan: {plan['settings']}", file=sys.stderr)

    runs = {
        "adaptive plan (FSLoRA)": [*common, f"plan={plan_path}"],
        "FSLoRA uniform, k=8": [*common, 'method="fslora"', f"budgets.per_client={[8] * NUM_CLIENTS}"],
        "FedIT uniform, r=16": [*common, 'method="fedit"'],
    }
    results = {}
    for name, overrides in runs.items():
        overrides = [*overrides, f"sampling.clients_per_round={PER_ROUND}"]
        run_dir = args.out / name.split()[0].lower().replace("fslora", "fslora-uniform")
        if not (run_dir / "summary.json").is_file():
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            t0 = time.perf_counter()
            federation.run(load_config(config_path, overrides), run_dir)
            print(f"{name}: {time.perf_counter() - t0:.0f} s wall", file=sys.stderr)
        results[name] = {"dir": str(run_dir), "curve": curve(run_dir)}

    target = max(min(loss for _, loss in r["curve"]) for r in results.values())
    for r in results.values():
        r["time_to_target_s"] = time_to_target(r["curve"], target)
        r["final_loss"] = r["curve"][-1][1]
        r["sim_total_s"] = r["curve"][-1][0]
    adaptive = results["adaptive plan (FSLoRA)"]["time_to_target_s"]
    best_baseline = min(r["time_to_target_s"] for n, r in results.items() if not n.startswith("adaptive"))
    speedup = best_baseline / adaptive if adaptive else float("nan")

    print(f"\ntarget held-out loss {target:.4f} (the highest of the runs' best losses)")
    print(f"{'run':<26} {'time to target (sim s)':>24} {'final loss':>11} {'sim total (s)':>14}")
    for name, r in results.items():
        print(f"{name:<26} {r['time_to_target_s']:>24.1f} {r['final_loss']:>11.4f} {r['sim_total_s']:>14.1f}")
    print(f"adaptive vs best baseline: {speedup:.2f}× faster to the target (target ≥ 2×)")
    predicted = plan["prediction"]["baseline"]["wallclock_s"] / plan["prediction"]["wallclock_s"]
    print(f"predicted by the plan (vs its own baseline, uniform with k = r): {predicted:.2f}×")
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")

    (args.out / "results.json").write_text(
        json.dumps({"target_loss": target, "speedup": speedup, "runs": results, "plan": plan["settings"]}, indent=1)
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in results.items():
        t, loss = zip(*r["curve"], strict=True)
        ax.plot(t, loss, marker="o", markersize=3, label=name)
    ax.axhline(target, color="grey", linestyle="--", linewidth=0.8, label=f"target {target:.3f}")
    ax.set_xlabel("simulated wall-clock time (s)")
    ax.set_ylabel("held-out loss")
    ax.set_yscale("log")
    ax.set_title(f"SmolLM2-135M, {NUM_CLIENTS} heterogeneous wireless clients" + (" (quick)" if args.quick else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "loss_vs_time.png", dpi=120)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'loss_vs_time.png'}")


if __name__ == "__main__":
    main()

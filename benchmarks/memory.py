"""Scale without growth: 1,000 clients on the tiny random Llama in the in-process engine, 20 rounds, and the
process's memory after every round.

Each method runs in its own Python process (so one run's peak cannot hide another's growth). After every round
the child records its resident set size (VmRSS), the number and bytes of live torch tensors (a gc scan)
and the bytes of the method's own state (what its checkpoint holds). Memory is flat when RSS and live tensors do
not climb with the rounds once the first rounds have warmed up allocator and caches: the script prints the
growth from round 5 to the last and a least-squares slope in MB per round.

    python benchmarks/memory.py                          # fslora and florist, 1,000 clients, 20 rounds (≈ 2 min)
    python benchmarks/memory.py --methods fslora fedit --clients 1000 --rounds 20 --json memory.json

Merge-into-base methods (FLoRA, FLoRIST's merge hand-off) keep every round's base update by design (a resume and a
Flower client that missed rounds replay them): their state grows by one low-rank update per round, not per client,
and the script reports it apart ("state MB").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from procmem import status_kb

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def rss_mb() -> float:
    """Resident set size of this process now (not the peak), in MB."""
    return status_kb("VmRSS") / 1024


def live_tensors() -> tuple[int, float]:
    """(count, MB) of torch tensors reachable by the garbage collector (parameters included)."""
    import torch

    gc.collect()
    tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return len(tensors), sum(t.numel() * t.element_size() for t in tensors) / MB


def benchmark_config(method: str, clients: int, rounds: int, per_round: int):
    """examples/tiny.toml's model and training, spread over ``clients`` IID clients with drawn budgets."""
    from fedlora.config import resolve_fleet, validate

    data = tomllib.loads((ROOT / "examples" / "tiny.toml").read_text())
    data.pop("fleet")  # tiny.toml describes 4 clients; the default fleet profile serves any number
    data["budgets"] = {"distribution": "uniform", "k_min": 2}
    data.update(method=method, rounds=rounds, threads=1)
    data["data"].update(max_examples=3 * clients, eval_size=16)
    data["partition"] = {"num_clients": clients, "scheme": "iid", "min_partition_size": 2}
    data["sampling"] = {"clients_per_round": per_round}
    data["train"].update(local_steps=2)
    data["eval"] = {"every": 5, "before": False}
    return resolve_fleet(validate(data))


class MemoryProbe:
    """A reporter that samples memory when a round is done."""

    def __init__(self, method_state) -> None:
        self.method_state = method_state
        self.rows: list[dict] = []

    def run_started(self, config, setup, start_round) -> None:
        count, tensor_mb = live_tensors()
        self.rows.append({"round": 0, "rss_mb": rss_mb(), "tensors": count, "tensor_mb": tensor_mb})

    def round_started(self, round_idx, participants) -> None: ...
    def client_done(self, round_idx, client_id, rank, train_loss) -> None: ...
    def evaluated(self, label, result) -> None: ...

    def round_done(self, record) -> None:
        count, tensor_mb = live_tensors()
        self.rows.append(
            {
                "round": record["round"],
                "rss_mb": rss_mb(),
                "tensors": count,
                "tensor_mb": tensor_mb,
                "state_mb": self.method_state(),
                "wall_s": record["wall_s"],
            }
        )


def child(method: str, clients: int, rounds: int, per_round: int) -> None:
    """Run one method and print its per-round memory rows as JSON on stdout."""
    from fedlora import federation, rundir

    config = benchmark_config(method, clients, rounds, per_round)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"

        def state_mb() -> float:  # the method's state as its last checkpoint holds it
            files = list((run_dir / rundir.CHECKPOINT_DIR).glob("round-*.safetensors"))
            return sum(f.stat().st_size for f in files) / MB

        probe = MemoryProbe(state_mb)
        started = time.perf_counter()
        federation.run(config, run_dir, reporter=probe)
        print(json.dumps({"method": method, "rows": probe.rows, "total_s": time.perf_counter() - started}))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def summarise(result: dict, warm: int) -> dict:
    rows = [r for r in result["rows"] if r["round"] >= warm]
    first, last = rows[0], rows[-1]
    rounds = [r["round"] for r in rows]
    return {
        "method": result["method"],
        "rss_start_mb": result["rows"][0]["rss_mb"],
        "rss_warm_mb": first["rss_mb"],
        "rss_last_mb": last["rss_mb"],
        "rss_growth_mb": last["rss_mb"] - first["rss_mb"],
        "rss_slope_mb_per_round": slope(rounds, [r["rss_mb"] for r in rows]),
        "tensors_warm": first["tensors"],
        "tensors_last": last["tensors"],
        "tensor_growth_mb": last["tensor_mb"] - first["tensor_mb"],
        "state_warm_mb": first["state_mb"],
        "state_last_mb": last["state_mb"],
        "total_s": result["total_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["fslora", "florist"])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=20, help="clients sampled per round")
    parser.add_argument("--warm", type=int, default=5, help="growth is measured from this round on")
    parser.add_argument("--json", type=Path, help="also write the rows and summaries here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.clients, args.rounds, args.per_round)
        return

    results = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--child", method, "--clients", str(args.clients)]
        cmd += ["--rounds", str(args.rounds), "--per-round", str(args.per_round)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))

    print(f"{args.clients} clients, {args.per_round} per round, {args.rounds} rounds, tiny random Llama, in-process")
    header = "method   RSS r0   RSS r{w}  RSS r{n}  growth   slope/round  tensors r{w}→r{n}  state r{w}→r{n}  run"
    print(header.format(w=args.warm, n=args.rounds))
    summaries = [summarise(r, args.warm) for r in results]
    for s in summaries:
        print(
            f"{s['method']:<8} {s['rss_start_mb']:6.1f}  {s['rss_warm_mb']:7.1f}  {s['rss_last_mb']:7.1f}  "
            f"{s['rss_growth_mb']:+6.1f}  {s['rss_slope_mb_per_round']:+8.3f} MB  "
            f"{s['tensors_warm']:>6} → {s['tensors_last']:<6}   "
            f"{s['state_warm_mb']:.3f} → {s['state_last_mb']:.3f} MB  {s['total_s']:5.1f} s"
        )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "summaries": summaries}, indent=2))


if __name__ == "__main__":
    main()

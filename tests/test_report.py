"""``fedlora report`` (grouping, tables, plots, report.json) and TensorBoard logging, on tiny random-model runs."""

import json
import shutil
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
from optional import require

from fedlora import federation
from fedlora.config import load_config
from fedlora.errors import ConfigError
from fedlora.report import Run, group_runs, mean_std, run_curve

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
FAST = ["rounds=2", "data.max_examples=48", "train.local_steps=2"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = [f"{m}_vs_{x}.png" for m in ("accuracy", "loss") for x in ("round", "bytes", "sim_time")]


def _cli(*args):
    """The CLI in this process; exit code, stdout and stderr as a user sees them."""
    from typer.testing import CliRunner

    from fedlora.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return SimpleNamespace(returncode=result.exit_code, stderr=result.stderr, exception=result.exception)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs: fslora with seeds 0 and 1, and fedit (through the CLI, with TensorBoard logging)."""
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("fslora-s0", 0), ("fslora-s1", 1)):
        federation.run(load_config(TINY, [*FAST, f"seed={seed}"]), root / name)
    result = _cli("run", TINY, *FAST, "method=fedit", "log.tensorboard=true", "--out", root / "fedit-s0")
    assert result.returncode == 0, (result.stderr, result.exception)
    return {name: root / name for name in ("fslora-s0", "fslora-s1", "fedit-s0")}


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = _cli("report", runs["fedit-s0"], runs["fslora-s1"], runs["fslora-s0"], "--out", out)
    assert result.returncode == 0, (result.stderr, result.exception)
    return out


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _copy_run_files(src: Path, dst: Path) -> Path:
    """The three files a report reads (and checkpoint/latest.json), without the adapter and checkpoint."""
    (dst / "checkpoint").mkdir(parents=True)
    for name in ("config.resolved.toml", "metrics.jsonl", "summary.json", "checkpoint/latest.json"):
        shutil.copy(src / name, dst / name)
    return dst


# ---------------------------------------------------------------------------------------------- the report


def test_report_groups_seeds_and_sums_bytes(runs, report):
    data = json.loads((report / "report.json").read_text())
    groups = {g["label"]: g for g in data["groups"]}
    assert [g["label"] for g in data["groups"]] == ["fslora", "fedit"]  # canonical order, not the order given
    fslora, fedit = groups["fslora"], groups["fedit"]
    assert fslora["runs"] == 2 and fslora["seeds"] == [0, 1] and fedit["runs"] == 1
    summaries = [_summary(runs["fslora-s0"]), _summary(runs["fslora-s1"])]
    for key in ("bytes_up", "bytes_down", "sim_s", "wall_s"):
        values = [s["totals"][key] for s in summaries]
        assert fslora[key]["mean"] == pytest.approx(statistics.fmean(values))
        assert fslora[key]["std"] == pytest.approx(statistics.stdev(values))  # sample std (n - 1)
        assert fedit[key]["mean"] == pytest.approx(_summary(runs["fedit-s0"])["totals"][key])
        assert fedit[key]["std"] is None
    accuracies = [s["final_eval"]["eval_accuracy"] for s in summaries]
    assert fslora["final_accuracy"]["mean"] == pytest.approx(statistics.fmean(accuracies))
    assert fslora["final_loss"]["mean"] == pytest.approx(
        statistics.fmean(s["final_eval"]["eval_loss"] for s in summaries)
    )
    # per-run rows: exact totals, group order then seed
    rows = data["runs"]
    assert [Path(r["path"]).name for r in rows] == ["fslora-s0", "fslora-s1", "fedit-s0"]
    for row in rows:
        assert row["bytes_up"] == _summary(Path(row["path"]))["totals"]["bytes_up"]
        assert row["complete"] is True


def test_report_markdown_tables(runs, report):
    text = (report / "report.md").read_text()
    assert (
        "| method | seeds | final accuracy | final loss | MB up | MB down | simulated time (s) | wall time (s) |"
        in text
    )
    data = json.loads((report / "report.json").read_text())
    fslora, fedit = data["groups"]
    up = fslora["bytes_up"]
    assert f"| fslora | 2 | {fslora['final_accuracy']['mean']:.3f} ± {fslora['final_accuracy']['std']:.3f} |" in text
    assert f"{up['mean'] / 1e6:.3f} ± {up['std'] / 1e6:.3f}" in text
    fedit_up = _summary(runs["fedit-s0"])["totals"]["bytes_up"] / 1e6
    assert (
        f"| fedit | 1 | {fedit['final_accuracy']['mean']:.3f} | {fedit['final_loss']['mean']:.4f} | {fedit_up:.3f} |"
        in (text)
    )
    for run_dir in runs.values():
        assert f"- `{run_dir}`" in text  # the list of run folders
    assert "## Runs" in text and text.index("fslora-s0`") < text.index("fslora-s1`") < text.index("fedit-s0`")


def test_report_plots_are_pngs_linked_from_the_markdown(report):
    text = (report / "report.md").read_text()
    for name in PLOTS:
        data = (report / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (600, 400), name
        assert f"]({name})" in text
    assert json.loads((report / "report.json").read_text())["plots"] == PLOTS


def test_report_curves_start_before_training(runs, report):
    data = json.loads((report / "report.json").read_text())
    fslora = data["groups"][0]
    loss = fslora["curves"]["loss"]
    assert [p["round"] for p in loss] == [0, 1, 2] and loss[0]["bytes_mb"] == 0 and loss[0]["sim_s"] == 0
    assert all(p["n"] == 2 for p in loss)
    initial = [_summary(runs[n])["initial_eval"]["eval_loss"] for n in ("fslora-s0", "fslora-s1")]
    assert loss[0]["mean"] == pytest.approx(statistics.fmean(initial))
    last_bytes = [_summary(runs[n])["totals"] for n in ("fslora-s0", "fslora-s1")]
    assert loss[-1]["bytes_mb"] == pytest.approx(
        statistics.fmean((t["bytes_up"] + t["bytes_down"]) / 1e6 for t in last_bytes)
    )
    assert loss[-1]["sim_s"] == pytest.approx(statistics.fmean(t["sim_s"] for t in last_bytes))


def test_report_is_deterministic(runs, report, tmp_path):
    result = _cli(
        "report", runs["fslora-s0"], runs["fedit-s0"], runs["fslora-s1"], runs["fslora-s0"], "--out", tmp_path
    )
    assert result.returncode == 0, result.stderr
    for name in ("report.md", "report.json"):
        assert (tmp_path / name).read_text() == (report / name).read_text(), name


def test_report_without_accuracy_shows_a_dash_and_no_accuracy_plots(runs, tmp_path):
    """An instruction task has no accuracy: strip it from a copy of a run."""
    run_dir = _copy_run_files(runs["fedit-s0"], tmp_path / "instr")
    summary = _summary(run_dir)
    for key in ("initial_eval", "final_eval"):
        summary[key].pop("eval_accuracy")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stripped = [{k: v for k, v in r.items() if k != "eval_accuracy"} for r in records]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))
    result = _cli("report", run_dir, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| fedit | 1 | — |" in text
    assert not list((tmp_path / "out").glob("accuracy_*.png"))
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(n for n in PLOTS if n.startswith("loss"))


def test_partial_reports_a_run_in_progress(runs, tmp_path):
    run_dir = _copy_run_files(runs["fslora-s0"], tmp_path / "running")
    (run_dir / "summary.json").unlink()
    first = (run_dir / "metrics.jsonl").read_text().splitlines()[0]
    (run_dir / "metrics.jsonl").write_text(first + "\n" + '{"round": 2, "byt')  # round 2 torn mid-append
    refused = _cli("report", run_dir, "--out", tmp_path / "out")
    assert refused.returncode == 2 and "summary.json" in _one_line(refused.stderr)
    result = _cli("report", run_dir, "--partial", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    row = json.loads((tmp_path / "out" / "report.json").read_text())["runs"][0]
    record = json.loads(first)
    assert row["complete"] is False and row["rounds_done"] == 1 and row["bytes_up"] == record["bytes_up"]
    assert row["final_loss"] == record["eval_loss"]
    assert row["initial_loss"] == _summary(runs["fslora-s0"])["initial_eval"]["eval_loss"]  # from the checkpoint
    assert "1 of 2 (in progress)" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda d: (d / "summary.json").unlink(), "summary.json"),
        (lambda d: (d / "summary.json").write_text("{not json"), "summary.json"),
        (lambda d: (d / "summary.json").write_text('{"method": "fslora"}'), "summary.json"),
        (lambda d: (d / "config.resolved.toml").unlink(), "config.resolved.toml"),
        (lambda d: (d / "config.resolved.toml").write_text("seed = = 1"), "config.resolved.toml"),
        (lambda d: (d / "metrics.jsonl").unlink(), "metrics.jsonl"),
        (lambda d: (d / "metrics.jsonl").write_text("garbage\n" + (d / "metrics.jsonl").read_text()), "metrics.jsonl"),
        (lambda d: shutil.rmtree(d), "bad"),
    ],
)
def test_bad_run_folder_is_one_line_exit_2(runs, tmp_path, damage, needle):
    run_dir = _copy_run_files(runs["fedit-s0"], tmp_path / "bad")
    damage(run_dir)
    result = _cli("report", runs["fslora-s0"], run_dir, "--out", tmp_path / "out")
    assert result.returncode == 2, (result.stderr, result.exception)
    line = _one_line(result.stderr)
    assert needle in line and str(run_dir) in line
    assert not (tmp_path / "out" / "report.md").exists()


def test_unknown_ignore_key_is_one_line_exit_2(runs, tmp_path):
    result = _cli("report", runs["fslora-s0"], "--ignore", "flet", "--out", tmp_path / "out")
    assert result.returncode == 2 and "flet" in _one_line(result.stderr)


def test_ignore_merges_groups(runs, tmp_path):
    """--ignore method puts fslora and fedit in one group (labelled by the first run's method)."""
    result = _cli("report", runs["fslora-s0"], runs["fedit-s0"], "--ignore", "method", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    groups = json.loads((tmp_path / "report.json").read_text())["groups"]
    assert len(groups) == 1 and groups[0]["runs"] == 2


# ---------------------------------------------------------------------------------------------- pure parts


def _fake_run(path: str, method: str, seed: int, **sections) -> Run:
    config = {"seed": seed, "method": method, "rounds": 2, "lora": {"rank": 8}, "florist": {"tau": 0.9}}
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    records = [{"round": 1, "bytes_up": 10, "bytes_down": 20, "sim_round_s": 1.5, "eval_loss": 2.0 + seed}]
    totals = {"bytes_up": 10, "bytes_down": 20, "sim_s": 1.5, "wall_s": 0.1}
    return Run(Path(path), config, records, totals, {"eval_loss": 3.0}, {"eval_loss": 2.0 + seed}, True)


def test_groups_are_labelled_by_the_keys_that_differ_and_ordered():
    runs = [
        _fake_run("z", "mystery", 0),
        _fake_run("a", "fedit", 0, lora={"rank": 16}),
        _fake_run("b", "florist", 1, florist={"tau": 0.9}),
        _fake_run("c", "florist", 0, florist={"tau": 0.8}),
        _fake_run("d", "florist", 0, florist={"tau": 0.9}),
        _fake_run("e", "fslora", 0),
        _fake_run("f", "florist", 0, florist={"tau": 0.8}, lora={"rank": 16}),
    ]
    groups = group_runs(runs)
    assert [g.label for g in groups] == [
        "fslora",
        "florist (florist.tau=0.8, lora.rank=8)",
        "florist (florist.tau=0.8, lora.rank=16)",
        "florist (florist.tau=0.9, lora.rank=8)",
        "fedit",
        "mystery",
    ]
    assert [[str(r.path) for r in g.runs] for g in groups][3] == ["d", "b"]  # by seed


def test_mean_std_is_sample_std():
    assert mean_std([]) == (None, None)
    assert mean_std([2.0]) == (2.0, None)
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))


def test_run_curve_accumulates_bytes_and_time():
    run = _fake_run("a", "fslora", 0)
    run.records.append({"round": 2, "bytes_up": 5, "bytes_down": 5, "sim_round_s": 2.0})  # not evaluated
    run.records.append({"round": 3, "bytes_up": 5, "bytes_down": 5, "sim_round_s": 2.0, "eval_loss": 1.0})
    curve = run_curve(run, "eval_loss")
    assert [(p["round"], p["bytes_mb"] * 1e6, p["sim_s"], p["value"]) for p in curve] == [
        (0, 0.0, 0.0, 3.0),
        (1, pytest.approx(30), 1.5, 2.0),
        (3, pytest.approx(50), 5.5, 1.0),
    ]


# ---------------------------------------------------------------------------------------------- TensorBoard


def _scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_scalars_match_the_metrics(runs):
    run_dir = runs["fedit-s0"]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    scalars = _scalars(run_dir / "tensorboard")
    summary = _summary(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert scalars["eval_loss"][0] == pytest.approx(summary["initial_eval"]["eval_loss"])
    assert scalars["eval_loss"][2] == pytest.approx(summary["final_eval"]["eval_loss"])
    assert scalars["eval_accuracy"][0] == pytest.approx(summary["initial_eval"]["eval_accuracy"])
    for key in ("bytes_up", "bytes_down", "sim_round_s", "sim_time_s", "wall_s", "train_loss"):
        assert scalars[key] == {r["round"]: pytest.approx(r[key]) for r in records}, key
    assert "participants" not in scalars and "round" not in scalars


def test_tensorboard_resume_purges_the_rounds_it_redoes(tmp_path):
    require("tensorboard")
    from fedlora.tensorboard_log import TensorBoardReporter

    first = TensorBoardReporter(tmp_path)
    first.evaluated("before training", {"eval_loss": 3.0})
    first.run_started(None, None, 1)
    for round_idx in (1, 2, 3):  # round 3 is logged, then the run dies before its checkpoint
        first.round_done({"round": round_idx, "train_loss": float(round_idx), "ranks": [1, 2], "ok": True})
    first.close()
    first.close()  # twice is fine
    resumed = TensorBoardReporter(tmp_path)
    resumed.run_started(None, None, 3)
    resumed.round_done({"round": 3, "train_loss": 30.0, "eval_loss": 1.0})
    resumed.close()
    scalars = _scalars(tmp_path / "tensorboard")
    assert scalars["train_loss"] == {1: 1.0, 2: 2.0, 3: 30.0}
    assert scalars["eval_loss"] == {0: 3.0, 3: 1.0}
    assert set(scalars) == {"train_loss", "eval_loss"}


def test_tensorboard_missing_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    from fedlora import tensorboard_log

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        tensorboard_log.TensorBoardReporter(tmp_path)
    result = _cli("run", TINY, *FAST, "log.tensorboard=true", "--out", tmp_path / "x")
    assert result.returncode == 2 and "pip install tensorboard" in _one_line(result.stderr)


def test_resume_keeps_logging_to_tensorboard(runs, tmp_path):
    """``fedlora run --resume DIR rounds=3`` (an override right after DIR) continues the TensorBoard log."""
    run_dir = tmp_path / "fedit"
    shutil.copytree(runs["fedit-s0"], run_dir)
    result = _cli("run", "--resume", run_dir, "rounds=3")
    assert result.returncode == 0, (result.stderr, result.exception)
    scalars = _scalars(run_dir / "tensorboard")
    assert sorted(scalars["eval_loss"]) == [0, 1, 2, 3]
    assert scalars["eval_loss"][3] == pytest.approx(_summary(run_dir)["final_eval"]["eval_loss"])
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2

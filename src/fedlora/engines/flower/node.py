"""The client side of the Flower engine: what a SuperNode's ClientApp does with fedlora's messages.

A node is one fedlora client: its node config's ``partition-id`` is the client id, which picks its data shard
(the same split and partitioning code as the in-process engine, so the shards are identical) and its [fleet]
profile. The ClientApp builds the base model, the LoRA layers and that one shard from the run's config (sent
in the hello message), and runs fedlora's own client round (``fedlora.client.app.run_client``) on each train
message.

Unlike the in-process engine, a node owns its base model. For the methods that merge each round's global update
into the base (FLoRA, FLoRIST v1), the download carries the newest update ("sync.") and the node folds it in
(``apply_base_sync``); a node that skipped rounds also needs the updates it missed, which the server sends in a
separate catch-up record (counted apart from ``bytes_down``). The node keeps every base update it received in
a folder per Flower run (``<cache>/flower/run-<run id>/``), because a deployed SuperNode starts a fresh
ClientApp process for every message; a process that serves several messages (a simulation's Ray actor) also
keeps its model, at the base version it last reached, and only merges what is new.

A node may hold its own data instead (the run's ``partition.scheme = "nodes"``): node config ``data`` names its
file (any file source fedlora reads), optionally ``eval-data`` its own held-out file (else it holds out
``eval.client_holdout`` of ``data``). It reads them with the run's template at hello and refuses the run, with
one line naming the file and the column or label, when they do not fit; else it reports its example counts (the
server weights the aggregation with them) and nothing else about its data. The same rows come out of the same
call as in an in-process run with ``partition.scheme = "files"`` over the same files.

A node may declare its own resources (node config ``max-rank``, ``tokens-per-s``, ``downlink-mbps``,
``uplink-mbps``), and measure its training throughput at hello (``probe=true``: a few local steps on its real
model and data); the server puts them in place of the config's [fleet] entry for that client.

Optional node config keys: ``device`` (e.g. "cuda:0"; default: the run's model.device), ``threads`` (torch
threads), ``cache-dir`` (default: fedlora's cache folder, ``$FEDLORA_CACHE``), ``precision`` (the node's base
precision, "fp32" | "bf16" | "int8" | "nf4": replaces the run's fleet.precision for this client), ``host-slots``
(how many of the SuperNodes sharing this machine may train or evaluate at once; ``slots-dir`` the folder of their
shared locks: ``fedlora.engines.flower.slots``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedlora.engines.flower import wire
from fedlora.engines.flower.limits import blob_over_limit
from fedlora.engines.flower.slots import host_slot, slot_count, slots_folder
from fedlora.errors import FedloraError

_RUNTIME: _Runtime | None = None
"""This process's client: model, layers and data shards, reused while the config stays the same."""

KEEPS_RUNTIME = False
"""Whether this process outlives the message it handles (a node's warm worker sets it): then the hello builds the
model and encodes the client's data at once, as the node joins, instead of in the first round it is sampled."""


# ------------------------------------------------------------------------------------------- building


def client_base_model(config, device: str | None = None, precision: str | None = None):
    """(model, tokenizer, fingerprint): the run's ORIGINAL base model, as the server's ``setup.load_model``
    builds it, without writing anything. A random tiny base is rebuilt from the run seed (bit for bit the one
    the server saved to DIR/base); ``fingerprint`` is a hash of its weights (empty for named models). An encoder
    comes as the same EncoderClassifier (fixed label head) the server builds. ``precision``: the client's base
    precision (``fleet.precision``), converted from that base as the in-process engine converts its copies."""
    model, tokenizer, fingerprint = _original_base(config, device)
    if precision is not None:
        from fedlora.models.precision import convert_base, dtype_precision

        if precision != dtype_precision(next(model.parameters()).dtype):
            model = convert_base(model, precision)
    return model, tokenizer, fingerprint


def _original_base(config, device: str | None):
    from fedlora.models import TINY_BERT, load_base_model, resolve_device, resolve_dtype
    from fedlora.setup import TINY, encoder_base, is_encoder_run, tiny_base, tiny_bert_base

    dev = resolve_device(device or config.model.device)
    dtype = resolve_dtype(config.model.dtype, dev)
    if is_encoder_run(config):
        fingerprint = weights_fingerprint(tiny_bert_base(config)[0]) if config.model.name == TINY_BERT else ""
        model, tokenizer = encoder_base(config, dev, dtype)
        return model, tokenizer, fingerprint
    if config.model.name != TINY:
        model, tokenizer = load_base_model(config.model.name, device=dev, dtype=dtype)
        return model, tokenizer, ""
    model, tokenizer = tiny_base(config)
    fingerprint = weights_fingerprint(model)
    model.to(device=dev, dtype=dtype).eval()
    return model, tokenizer, fingerprint


def weights_fingerprint(model) -> str:
    """SHA-256 over every named tensor of the model's state dict (names and raw bytes, in name order)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def expected_fingerprint(config) -> str:
    """The fingerprint every node's base must have ("" when the base is a named model, not a random one)."""
    from fedlora.models import TINY_BERT
    from fedlora.setup import TINY

    if config.model.name not in (TINY, TINY_BERT):
        return ""
    return client_base_model(config, device="cpu")[2]


@dataclass
class _Shards:
    """The run's training shards (all clients, not yet encoded) and the prompt template."""

    template: object
    shards: list


def load_shards(config) -> _Shards:
    """Every client's raw training rows, by the same calls in the same order as ``fedlora.setup.load_data``."""
    from fedlora.setup import training_split

    template, _, _, shards = training_split(config)
    return _Shards(template, shards)


def encode_shard(config, tokenizer, shards: _Shards, client_id: int) -> list[dict]:
    """Client ``client_id``'s encoded training examples (what ``setup.build`` gives in client_examples)."""
    from fedlora.setup import _encode, is_encoder_run

    shard = shards.shards[client_id]
    return _encode(tokenizer, shards.template, shard, config.data.max_seq_len, is_encoder_run(config))


@dataclass
class ClientSetup:
    """What one client needs to run its rounds."""

    model: object
    tokenizer: object
    layers: dict
    examples: list[dict]
    training: object
    pad_id: int
    fingerprint: str


def build_client(config, client_id: int, device: str | None = None) -> ClientSetup:
    """Everything client ``client_id`` of a run needs, built the way the server builds it, for that client only."""
    from fedlora.lora.layer import inject_lora
    from fedlora.setup import local_training, pad_token_id

    model, tokenizer, fingerprint = client_base_model(config, device, client_precision(config, client_id))
    layers = inject_lora(model, config.model.target_modules, config.lora.dropout)
    examples = encode_shard(config, tokenizer, load_shards(config), client_id)
    return ClientSetup(model, tokenizer, layers, examples, local_training(config), pad_token_id(tokenizer), fingerprint)


# ---------------------------------------------------------------------------------------------- runtime


def client_precision(config, client_id: int) -> str | None:
    """The client's base precision from the run's fleet.precision (None: the base as loaded, model.dtype)."""
    value = config.fleet.precision
    if value is None:
        return None
    return value[client_id] if isinstance(value, list) else value


@dataclass
class _Runtime:
    key: str
    config: object
    device: str | None
    precision: str | None = None
    model: object = None
    tokenizer: object = None
    layers: dict = field(default_factory=dict)
    fingerprint: str = ""
    training: object = None
    pad_id: int = 0
    base_version: int = 0
    """How many base updates are merged into ``model`` (0: the original base)."""
    shards: _Shards | None = None
    examples: dict[int, list[dict]] = field(default_factory=dict)
    own: object = None
    """The node's own data (``fedlora.data.local.ClientData``; partition.scheme "nodes"), read once."""

    def load_model(self) -> None:
        from fedlora.lora.layer import inject_lora
        from fedlora.setup import pad_token_id

        self.model, self.tokenizer, self.fingerprint = client_base_model(self.config, self.device, self.precision)
        self.layers = inject_lora(self.model, self.config.model.target_modules, self.config.lora.dropout)
        self.pad_id = pad_token_id(self.tokenizer)
        self.base_version = 0

    def client_examples(self, client_id: int, folder: Path | None = None) -> list[dict]:
        """The client's encoded shard: from memory, else from ``folder`` (a node's earlier message wrote it
        there: a deployed node runs every message in a fresh process), else built from the data."""
        if client_id in self.examples:
            return self.examples[client_id]
        cached = folder / "examples.json" if folder is not None else None
        if cached is not None and cached.is_file():
            examples = json.loads(cached.read_text())
        elif self.own is not None:
            from fedlora.setup import _encode, is_encoder_run, run_template

            template = run_template(self.config)
            max_len, encoder = self.config.data.max_seq_len, is_encoder_run(self.config)
            examples = _encode(self.tokenizer, template, self.own.train, max_len, encoder)
        else:
            if self.shards is None:
                self.shards = load_shards(self.config)
            examples = encode_shard(self.config, self.tokenizer, self.shards, client_id)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(examples))
                os.replace(tmp, cached)
        self.examples[client_id] = examples
        return examples

    def eval_set(self):
        """The node's own held-out set, encoded (federated evaluation)."""
        from fedlora.setup import eval_set_for, is_encoder_run, run_template

        template = run_template(self.config)
        max_len, encoder = self.config.data.max_seq_len, is_encoder_run(self.config)
        return eval_set_for(template, self.own.held_out, self.tokenizer, max_len, encoder)


def runtime(config_text: str, device: str | None, session: str, precision: str | None = None) -> _Runtime:
    """This process's client runtime for ``config_text`` in fedlora run ``session`` with its base at ``precision``
    (built on first use, then reused by the messages of the same run and precision)."""
    global _RUNTIME
    from fedlora.config import RunConfig
    from fedlora.setup import local_training, quiet_libraries

    key = hashlib.sha256(f"{session}\n{device}\n{precision}\n{config_text}".encode()).hexdigest()
    if _RUNTIME is None or _RUNTIME.key != key:
        import tomllib

        quiet_libraries()
        config = RunConfig.model_validate(tomllib.loads(config_text))
        rt = _Runtime(key=key, config=config, device=device, precision=precision, training=local_training(config))
        rt.load_model()
        _RUNTIME = rt
    return _RUNTIME


class BaseStore:
    """The base updates a node has received in one Flower run: ``update-<version>.safetensors``, version 0 first."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, version: int) -> Path:
        return self.folder / f"update-{version:06d}.safetensors"

    def has(self, version: int) -> bool:
        return self._path(version).is_file()

    def put(self, version: int, update) -> None:
        from fedlora import payload
        from fedlora.lora.state import flatten_factors

        path = self._path(version)
        if path.is_file():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(payload.pack(flatten_factors(update)))
        os.replace(tmp, path)  # atomic: nodes sharing a machine may write the same update

    def get(self, version: int):
        from fedlora import payload
        from fedlora.lora.state import unflatten_factors

        tensors, _ = payload.unpack(self._path(version).read_bytes())
        return unflatten_factors(tensors)


def run_folder(context: Context, session: str) -> Path:
    """Where the nodes of this machine keep what they received in one fedlora run (on one Flower run)."""
    from fedlora.models import cache_dir

    root = context.node_config.get("cache-dir")
    root = Path(str(root)).expanduser() if root else cache_dir() / "flower"
    return root / f"run-{context.run_id}-{session}"


def client_state_for(context: Context, session: str, client_id: int):
    """This node's own state store in fedlora run ``session`` (FedSA-LoRA's B): ``<root>/state-<session>/<id>/``,
    root the node config ``state-dir``, else its ``cache-dir``, else the cache folder's ``flower/``. Each round's
    state is written atomically (``fedlora.client.state``); it outlives Flower runs and node restarts (a resumed
    fedlora run keeps its session, ``server.run_session``), is never sent, and ``handle_finish`` leaves it."""
    from fedlora.client.state import client_store
    from fedlora.models import cache_dir

    root = context.node_config.get("state-dir") or context.node_config.get("cache-dir")
    root = Path(str(root)).expanduser() if root else cache_dir() / "flower"
    return client_store(root / f"state-{session}", client_id)


def store_for(context: Context, session: str, client_id: int) -> BaseStore:
    """The base updates this node (client ``client_id``) received in fedlora run ``session``."""
    return BaseStore(run_folder(context, session) / f"client-{client_id}")


# --------------------------------------------------------------------------------------------- handlers


def partition_id(context: Context, num_clients: int | None = None) -> int:
    """The fedlora client id of this node (node config ``partition-id``), checked against the run."""
    raw = context.node_config.get("partition-id")
    if raw is None:
        raise FedloraError(
            "flower: this SuperNode has no partition-id in its node config (--node-config 'partition-id=N')"
        )
    try:
        cid = int(raw)
    except (TypeError, ValueError):
        raise FedloraError(f"flower: node config partition-id={raw!r} is not an integer") from None
    if num_clients is not None and not 0 <= cid < num_clients:
        raise FedloraError(
            f"flower: node config partition-id={cid} is outside [0, partition.num_clients={num_clients})"
        )
    return cid


def _threads(context: Context, default: int) -> None:
    import torch

    threads = int(context.node_config.get("threads", default) or 0)
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _device(context: Context) -> str | None:
    device = context.node_config.get("device")
    return str(device) if device else None


def node_precision(context: Context, config, cid: int) -> str | None:
    """The client's base precision: what the node declares (node config ``precision``: it knows its memory), else
    the run's fleet.precision. A declared precision this node cannot run, or one a merge-into-base method cannot
    use, is refused in one line naming the client and the setting."""
    declared = context.node_config.get("precision")
    if not declared:
        return client_precision(config, cid)
    from fedlora.models import resolve_device
    from fedlora.models.precision import runnable
    from fedlora.setup import merges_into_base, server_precision

    precision, setting = str(declared), f"flower: client {cid}: node config precision={declared!r}"
    why = runnable(precision, str(resolve_device(_device(context) or config.model.device)))
    if why is not None:
        raise FedloraError(f"{setting} cannot run on this node: {why}")
    if merges_into_base(config) and precision != server_precision(config):
        raise FedloraError(f"{setting}: {config.method} merges every round's update into the base, which must be "
                           f"held as the server's ({server_precision(config)})")  # fmt: skip
    return precision


class Refusal(FedloraError):
    """This node cannot take part in the run as configured (its data, its declared resources); one line."""


def own_data(config, context: Context, cid: int):
    """The node's own data (``fedlora.data.local.ClientData``) under partition.scheme "nodes", else None; raises
    Refusal (one line naming the file and the column or label) when it does not fit the run's template."""
    path = context.node_config.get("data")
    if config.partition.scheme != "nodes":
        if path:
            raise Refusal(
                f"node config data={path}: the run splits data.source over its clients (partition.scheme = "
                f'{config.partition.scheme!r}), not the nodes\' own data (partition.scheme = "nodes")'
            )
        return None
    if not path:
        raise Refusal('no data of its own: partition.scheme = "nodes" needs --node-config "data=/path/local.jsonl"')
    from fedlora.errors import DataError
    from fedlora.setup import client_data, run_template  # torch and the data libraries: only for a node's own data

    eval_path = context.node_config.get("eval-data")
    try:
        return client_data(
            config, run_template(config), cid, str(path), str(eval_path) if eval_path else None, f"node data {path}"
        )
    except DataError as err:
        raise Refusal(str(err)) from None


DECLARED = {
    "max-rank": ("max_rank", int),
    "tokens-per-s": ("tokens_per_s", float),
    "downlink-mbps": ("downlink_mbps", float),
    "uplink-mbps": ("uplink_mbps", float),
}
"""Node config keys a node declares its resources with → the [fleet] field each replaces, and its type."""


def declared_resources(context: Context) -> dict:
    """What this node declares about itself in its node config (``DECLARED``), as [fleet] field → value."""
    declared = {}
    for key, (name, kind) in DECLARED.items():
        raw = context.node_config.get(key)
        if raw is None:
            continue
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise Refusal(f"node config {key}={raw!r} is not a number") from None
        if value <= 0:
            raise Refusal(f"node config {key}={raw!r} must be > 0")
        declared[name] = value
    return declared


def _flag(context: Context, key: str) -> bool:
    return str(context.node_config.get(key, "false")).strip().lower() in ("1", "true", "yes")


def probe_throughput(config, rt: _Runtime, examples: list[dict], steps: int = 2) -> float:
    """Training tokens per second of this node at the full rank lora.rank, timed over ``steps`` local steps
    (after one untimed warm-up step) on its own model and examples; the model is left as it was."""
    import torch

    from fedlora.client.app import install_adapter
    from fedlora.client.train import train_adapter
    from fedlora.lora.state import ModuleShape, init_factors

    shapes = {name: ModuleShape(layer.out_features, layer.in_features) for name, layer in rt.layers.items()}
    factors = init_factors(shapes, config.lora.rank, torch.Generator().manual_seed(0))
    install_adapter(rt.layers, factors, config.scale_rule(config.lora.rank))
    warm = rt.training.__class__(**{**rt.training.__dict__, "local_steps": 1, "local_epochs": None})
    train_adapter(rt.model, examples, warm, rt.pad_id, seed=0)
    timed = rt.training.__class__(**{**rt.training.__dict__, "local_steps": steps, "local_epochs": None})
    started = time.perf_counter()
    result = train_adapter(rt.model, examples, timed, rt.pad_id, seed=1)
    seconds = time.perf_counter() - started
    for layer in rt.layers.values():
        layer.clear_adapter()
    return float(result.tokens) / max(seconds, 1e-9)


def _say(line: str) -> None:
    """A line to the node's own log (the SuperNode shows its ClientApp's stderr)."""
    import sys

    print(f"[fedlora node] {line}", file=sys.stderr, flush=True)


def handle_hello(message: Message, context: Context) -> RecordDict:
    """Check that this node can be the client its partition-id names and keep the run's settings.

    A node holding its own data reads it here, checks it against the run's template and reports its example
    counts, or refuses the run (status "refused" with a one-line reason, also printed to the node's log). The
    model is built by the first train message (which checks the base fingerprint), unless the node measures
    its throughput (``probe``)."""
    import tomllib

    from fedlora import __version__
    from fedlora.config import RunConfig

    hello = wire.settings(message)
    if int(hello.get("protocol", 0)) != wire.PROTOCOL:
        raise FedloraError(f"flower: server speaks protocol {hello.get('protocol')}, this node {wire.PROTOCOL}")
    config_text = str(hello["config"])
    config = RunConfig.model_validate(tomllib.loads(config_text))
    cid = partition_id(context, config.partition.num_clients)
    try:
        precision = node_precision(context, config, cid)
        data = own_data(config, context, cid)
        declared = declared_resources(context)
        host_slots(context)  # a bad value refuses the run here, in one line
        if _flag(context, "probe"):
            _threads(context, int(hello.get("threads", 0)))
            rt = runtime(config_text, _device(context), str(hello["session"]), precision)
            rt.own = data
            with _computing(context):  # timed alone, as it will train
                declared["tokens_per_s"] = probe_throughput(config, rt, rt.client_examples(cid))
            rt.examples.clear()
    except Refusal as err:
        _say(f"client {cid}: refused the run: {err}")
        refusal = ConfigRecord({"status": wire.STATUS_REFUSED, "partition_id": cid, "reason": str(err)})
        return RecordDict({wire.FEDLORA: refusal})
    context.state[wire.FEDLORA] = ConfigRecord(
        {
            "config": config_text,
            "session": str(hello["session"]),
            "base_fingerprint": str(hello.get("base_fingerprint", "")),
            "threads": int(hello.get("threads", 0)),
            "client": cid,
            "precision": precision or "",
        }
    )
    if KEEPS_RUNTIME:
        _preload(context, config_text, str(hello["session"]), cid, precision, data, int(hello.get("threads", 0)))
    reply = ConfigRecord(
        {
            "status": wire.STATUS_OK,
            "partition_id": cid,
            "fedlora_version": __version__,
            "declared": json.dumps(declared),
            "precision": precision or "",
        }
    )
    if data is not None:
        reply["num_examples"] = len(data.train)
        reply["eval_examples"] = len(data.held_out)
        _say(f"client {cid}: {len(data.train)} training and {len(data.held_out)} held-out examples")
    return RecordDict({wire.FEDLORA: reply})


def _preload(context: Context, config_text: str, session: str, cid: int, precision, data, threads: int) -> None:
    """Build this process's runtime (the base model at the node's precision) and encode the client's training
    data now (a warm worker keeps both), in a host slot when the node config sets them."""
    _threads(context, threads)
    with _computing(context):
        rt = runtime(config_text, _device(context), session, precision)
        if data is not None:
            rt.own = data
        rt.client_examples(cid, store_for(context, session, cid).folder)


def host_slots(context: Context) -> int | None:
    """The node config's ``host-slots`` (how many of this machine's nodes may compute at once; None: no limit),
    refused in one line when it is not a positive integer."""
    try:
        return slot_count(context.node_config)
    except ValueError as err:
        raise Refusal(str(err)) from None


def _computing(context: Context):
    """The ``with`` block of this node's computation: one of the machine's host slots when the node config sets
    ``host-slots``, else nothing to wait for."""
    return host_slot(host_slots(context), slots_folder(context.node_config))


def handle_train(message: Message, context: Context) -> RecordDict:
    """One client round: fold in the base updates, train, reply with the upload blob; with node config
    ``host-slots``, while holding one of the machine's slots (``fedlora.engines.flower.slots``)."""
    with _computing(context):
        return _train(message, context)


def _train(message: Message, context: Context) -> RecordDict:
    from fedlora import payload
    from fedlora.client.app import run_client
    from fedlora.lora.layer import merge_update
    from fedlora.lora.state import unflatten_factors

    started = time.perf_counter()
    state = context.state.config_records.get(wire.FEDLORA)
    if state is None:
        raise FedloraError("flower: train message before hello (the node's context lost the run's settings)")
    cid = partition_id(context)
    meta = wire.settings(message)
    if int(meta["client"]) != cid or int(state["client"]) != cid:
        raise FedloraError(f"flower: message for client {meta['client']} reached the node of client {cid}")
    session = str(state["session"])
    if str(meta["session"]) != session:
        raise FedloraError(
            f"flower: client {cid}: train message of fedlora run {meta['session']}, node is in {session}"
        )
    _threads(context, int(state["threads"]))
    rt = runtime(str(state["config"]), _device(context), session, str(state["precision"]) or None)
    expected = str(state["base_fingerprint"])
    if expected and rt.fingerprint != expected:
        raise FedloraError(
            f"flower: client {cid}: the rebuilt random base model differs from the server's "
            "(another torch or transformers version?)"
        )
    download = wire.record_blob(message, wire.DOWNLOAD)
    if download is None:
        raise FedloraError("flower: train message without a download record")
    target = int(meta["base_target"])  # base updates the client's model holds after this round's sync

    store = store_for(context, session, cid)
    catchup = wire.record_blob(message, wire.CATCHUP)
    if catchup is not None:
        tensors, info = payload.unpack(catchup)
        first, count = int(info["first"]), int(info["count"])
        for version in range(first, first + count):
            store.put(version, unflatten_factors(tensors, prefix=f"base{version:06d}."))
    apply_sync = False
    if rt.base_version > target:  # a base cannot be un-merged: start again from the original one
        rt.load_model()
    if target > 0:
        sync = unflatten_factors(payload.unpack(download)[0], prefix="sync.")
        if not sync:
            raise FedloraError(f"flower: client {cid}: base version {target} announced but the download has no sync")
        missing = [v for v in range(target - 1) if not store.has(v)]
        if missing:  # the server assumed this node holds updates it does not: ask for them
            reply = ConfigRecord({"status": wire.STATUS_NEED_BASE, "base_version": missing[0]})
            return RecordDict({wire.FEDLORA: reply})
        store.put(target - 1, sync)
        for version in range(rt.base_version, target - 1):
            merge_update(rt.layers, store.get(version))
        rt.base_version = max(rt.base_version, target - 1)
        apply_sync = rt.base_version == target - 1  # else this process merged it already

    if rt.config.partition.scheme == "nodes" and rt.own is None and not (store.folder / "examples.json").is_file():
        rt.own = own_data(rt.config, context, cid)
    examples = rt.client_examples(cid, store.folder)
    try:
        upload = run_client(
            rt.model,
            rt.layers,
            download,
            examples,
            rt.training,
            rt.pad_id,
            apply_base_sync=apply_sync,
            state=client_state_for(context, session, cid),
        )
    except BaseException:
        rt.load_model()  # the model may hold a half-applied update: start from the original base next time
        raise
    rt.base_version = target
    complaint = blob_over_limit(f"client {cid}: its upload", len(upload), rt.config.flower.max_message_mb)
    if complaint is not None:  # the server would refuse it: say so from here, without sending it
        raise FedloraError(f"flower: {complaint}; not sent")
    reply = ConfigRecord(
        {
            "status": wire.STATUS_OK,
            "base_version": target,
            "download_bytes": len(download),
            "catchup_bytes": len(catchup) if catchup is not None else 0,
            "upload_bytes": len(upload),
            "seconds": time.perf_counter() - started,
        }
    )
    content = RecordDict({wire.UPLOAD: wire.blob_record(upload), wire.FEDLORA: reply})
    return content


def _run_state(message: Message, context: Context) -> tuple[ConfigRecord, int, dict]:
    """(the run's settings this node keeps, its client id, the message's settings), checked."""
    state = context.state.config_records.get(wire.FEDLORA)
    if state is None:
        raise FedloraError("flower: message before hello (the node's context lost the run's settings)")
    cid = partition_id(context)
    meta = wire.settings(message)
    if int(meta["client"]) != cid or int(state["client"]) != cid:
        raise FedloraError(f"flower: message for client {meta['client']} reached the node of client {cid}")
    if str(meta["session"]) != str(state["session"]):
        raise FedloraError(
            f"flower: client {cid}: message of fedlora run {meta['session']}, node is in {state['session']}"
        )
    return state, cid, meta


def handle_evaluate(message: Message, context: Context) -> RecordDict:
    """Federated evaluation: fold in the base updates the node lacks, install the global adapter, evaluate it on
    the node's own held-out split; reply with {n, eval_loss[, eval_accuracy]} (holding a host slot, as training)."""
    with _computing(context):
        return _evaluate(message, context)


def _evaluate(message: Message, context: Context) -> RecordDict:
    from fedlora import payload
    from fedlora.client.app import evaluate_download
    from fedlora.lora.layer import merge_update
    from fedlora.lora.state import unflatten_factors

    state, cid, meta = _run_state(message, context)
    session = str(state["session"])
    _threads(context, int(state["threads"]))
    rt = runtime(str(state["config"]), _device(context), session)
    download = wire.record_blob(message, wire.DOWNLOAD)
    if download is None:
        raise FedloraError("flower: evaluate message without a download record")
    target = int(meta["base_target"])
    store = store_for(context, session, cid)
    catchup = wire.record_blob(message, wire.CATCHUP)
    if catchup is not None:
        tensors, info = payload.unpack(catchup)
        first, count = int(info["first"]), int(info["count"])
        for version in range(first, first + count):
            store.put(version, unflatten_factors(tensors, prefix=f"base{version:06d}."))
    if rt.base_version > target:
        rt.load_model()
    missing = [v for v in range(rt.base_version, target) if not store.has(v)]
    if missing:
        reply = ConfigRecord({"status": wire.STATUS_NEED_BASE, "base_version": missing[0]})
        return RecordDict({wire.FEDLORA: reply})
    for version in range(rt.base_version, target):
        merge_update(rt.layers, store.get(version))
    rt.base_version = target
    if rt.own is None:
        rt.own = own_data(rt.config, context, cid)
    config = rt.config
    figures = evaluate_download(
        rt.model,
        rt.layers,
        download,
        rt.tokenizer,
        rt.eval_set(),
        config.eval.batch_size,
        rt.pad_id,
        config.eval.length_normalize,
        state=client_state_for(context, session, cid),
    )
    reply = ConfigRecord({"status": wire.STATUS_OK, **figures})
    return RecordDict({wire.FEDLORA: reply})


def handle_finish(message: Message, context: Context) -> RecordDict:
    """The run is over: drop the base updates this node stored in it."""
    state = context.state.config_records.get(wire.FEDLORA)
    removed = False
    if state is not None:
        store = store_for(context, str(state["session"]), int(state["client"]))
        removed = store.folder.is_dir()
        shutil.rmtree(store.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            store.folder.parent.rmdir()  # the last node of this machine removes the run's folder
        del context.state[wire.FEDLORA]
    return RecordDict({wire.FEDLORA: ConfigRecord({"removed": removed})})

"""The server side of the Flower engine: fedlora's round loop talks to Flower SuperNodes through a ``Grid``.

``FlowerGridEngine.run_clients`` sends every participant of a round one ``train`` message at once (its own
download blob: its sketch, its rank, its truncation — whatever its method planned), waits for all replies, and
returns the upload blobs in job order. It never looks inside a blob except to count bytes: methods stay
Flower-agnostic and the engine method-agnostic.

Byte accounting: the round loop counts ``len()`` of the blobs, as for the in-process engine. The engine checks
that the bytes Flower carried are the blobs: each node reports the length of the download it received (equal to
the blob sent) and of the upload it sent (equal to the blob received). Base updates a node missed (merge-into-
base methods: FLoRA, FLoRIST v1) travel in a separate catch-up record, counted in ``catchup_bytes_down`` per
round, not in ``bytes_down``: the in-process engine's shared base needs no catch-up, and the papers charge a
participant only the newest update.

Faults: a client whose node replies with an error, replies without an upload (or with bytes that are not the
blob), or does not reply within the round's deadline (``faults.round_deadline_s``, else
``flower.round_timeout_s``) becomes a ``ClientFailure`` the round loop records, unless ``fail_fast``. The engine
then no longer knows which base updates that node holds and keeps its old belief; a node that holds more says so
and is sent what it lacks (the catch-up protocol).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, RecordDict

from fedlora import payload
from fedlora.engines.base import ClientFailure, Engine
from fedlora.engines.flower import wire
from fedlora.engines.flower.limits import blob_over_limit
from fedlora.errors import FedloraError
from fedlora.lora.state import Factors, flatten_factors


def _describe_error(reply: Message) -> str:
    """The client's error as one line: Flower wraps it as "<class 'T'>:<'text'>" (and the simulation's Ray
    worker adds its traceback, ending with "Message: text")."""
    reason = reply.error.reason or f"Flower error code {reply.error.code}"
    reason = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    if "Message: " in reason:
        reason = reason.rsplit("Message: ", 1)[1]
    match = re.fullmatch(r"<class '([^']+)'>:<'(.*)'>", reason.strip(), flags=re.DOTALL)
    if match:
        kind, text = match.groups()
        reason = text if kind.endswith("FedloraError") else f"{kind.rsplit('.', 1)[-1]}: {text}"
    reason = " ".join(reason.removesuffix("'>").split())
    return reason if len(reason) <= 500 else reason[:497] + "..."


POLL_S = 0.2
"""How often the server asks the SuperLink for replies (Flower 1.41's ``Grid.send_and_receive`` sleeps 3 s)."""


def send_and_receive(
    grid, messages: list[Message], timeout: float | None, poll_s: float = POLL_S
) -> tuple[list[str], list[Message]]:
    """Push ``messages`` and pull their replies until every one has replied or ``timeout`` seconds passed (None:
    no limit): Flower's ``Grid.send_and_receive`` with a shorter poll. Returns (each message's id as the grid
    gave it, "" when it could not be pushed; the replies), a reply naming its message in ``reply_to_message_id``."""
    pushed = [str(mid) if mid else "" for mid in grid.push_messages(messages)]
    if len(pushed) != len(messages):  # a grid that leaves failed pushes out of its list (the simulation's)
        pushed = [str(message.metadata.message_id) for message in messages]
    pending = {mid for mid in pushed if mid}
    replies: list[Message] = []
    end = None if timeout is None else time.monotonic() + timeout
    while pending:
        pulled = list(grid.pull_messages(pending))
        replies += pulled
        pending -= {reply.metadata.reply_to_message_id for reply in pulled}
        if not pending or (end is not None and time.monotonic() >= end):
            break
        time.sleep(poll_s if end is None else max(0.0, min(poll_s, end - time.monotonic())))
    return pushed, replies


def waited(timeout: float | None, setting: str) -> str:
    """How long a wait lasted, for an error line: "12 s (flower.round_timeout_s)" or "no limit"."""
    return "no limit" if timeout is None else f"{timeout:g} s ({setting})"


def exchange(
    grid,
    messages: dict[int, Message],
    what: str,
    timeout: float | None,
    label: Callable[[int], str],
    timeout_setting: str = "flower.round_timeout_s",
    failures: dict[int, str] | None = None,
    outstanding: set[str] | None = None,
) -> dict[int, Message]:
    """Send ``messages`` (key → message) at once and wait for every reply; replies by key.

    Replies are matched to what they answer by ``reply_to_message_id``: an error the SuperLink sends in a node's
    place (e.g. "Node Unavailable" for a node that stopped) comes from node 0 and still names its message.
    Raises FedloraError naming the sender (``label(key)``) of an error reply, or every key without a reply when
    ``timeout`` runs out; with a ``failures`` dict, records key → one-line reason there instead. ``outstanding``
    collects the ids of messages pushed but not answered in time (their nodes may still be working on them)."""
    if not messages:
        return {}
    keys = list(messages)
    pushed, replies_in = send_and_receive(grid, [messages[key] for key in keys], timeout)
    by_id = {mid: key for mid, key in zip(pushed, keys, strict=True) if mid}
    if outstanding is not None:
        answered = {reply.metadata.reply_to_message_id for reply in replies_in}
        outstanding.update(mid for mid in by_id if mid not in answered)
    replies: dict[int, Message] = {}
    for reply in replies_in:
        key = by_id.get(reply.metadata.reply_to_message_id)
        if key is None:
            continue
        if reply.has_error():
            if failures is None:
                raise FedloraError(f"flower: {label(key)} failed in {what}: {_describe_error(reply)}")
            failures[key] = _describe_error(reply)
            continue
        replies[key] = reply
    missing = [key for key in messages if key not in replies and (failures is None or key not in failures)]
    if missing and failures is not None:
        failures.update({key: f"timeout: no reply within {waited(timeout, timeout_setting)}" for key in missing})
    elif missing:
        names = ", ".join(label(key) for key in missing)
        raise FedloraError(f"flower: no reply to {what} from {names} within {waited(timeout, timeout_setting)}")
    return replies


class FlowerGridEngine(Engine):
    """fedlora clients on Flower SuperNodes: ``nodes`` maps each client id to the node id that runs it."""

    def __init__(
        self,
        grid,
        nodes: dict[int, int],
        *,
        session: str,
        round_timeout_s: float | None = None,
        message_ttl_s: float | None = None,
        fail_fast: bool = True,
        timeout_setting: str = "flower.round_timeout_s",
        max_message_mb: float | None = None,
        reports: dict[int, dict] | None = None,
        refused: dict[int, str] | None = None,
    ) -> None:
        self.grid = grid
        self.reports = dict(reports or {})
        """What each client's node reported at connect (its data's example counts, its declared resources)."""
        self.refused = dict(refused or {})
        """Clients whose node refused the run at connect (client id → one-line reason): they fail every round."""
        self.max_message_mb = max_message_mb
        """Largest blob a message may carry (None: no limit); checked on every download, catch-up and upload."""
        self.session = session
        self.nodes = dict(nodes)
        self.round_timeout_s = round_timeout_s
        self.message_ttl_s = message_ttl_s
        self.fail_fast = fail_fast
        """Raise on a client's error or missing reply (the run stops) instead of returning a ClientFailure."""
        self.timeout_setting = timeout_setting
        self._base_history: Callable[[], list[Factors]] = list
        self._holds: dict[int, int] = {}
        """Base updates each client's node holds, as far as this engine knows (0: the original base)."""
        self._facts: dict = {}
        self._calls = 0
        self.outstanding: set[str] = set()
        """Messages of this run still unanswered (late past a round deadline): ``finish`` waits for them first."""

    # -------------------------------------------------------------------------------- round-loop hooks
    def attach_base_history(self, base_history: Callable[[], list[Factors]]) -> None:
        """Called by ``federation.run``: every base update merged so far (merge-into-base methods), so nodes
        that missed some get them before training."""
        self._base_history = base_history

    def round_facts(self) -> dict:
        """Facts of the last ``run_clients`` call for the round's metrics record."""
        return dict(self._facts)

    def client_summaries(self) -> list[dict]:
        """Each client as its node reported it (partition.scheme "nodes": the server holds none of their data):
        {"client", "size" (n_i, its training examples), "eval_size", "node"[, "declared"]} or, for a client
        whose node refused the run, {"client", "size": 0, "eval_size": 0, "refused": reason}."""
        summaries = []
        for cid in sorted({*self.nodes, *self.refused}):
            if cid in self.refused:
                summaries.append({"client": cid, "size": 0, "eval_size": 0, "refused": self.refused[cid]})
                continue
            report = self.reports.get(cid, {})
            summary = {
                "client": cid,
                "size": int(report.get("num_examples", 0)),
                "eval_size": int(report.get("eval_examples", 0)),
                "node": self.nodes[cid],
            }
            if report.get("declared"):
                summary["declared"] = dict(report["declared"])
            summaries.append(summary)
        return summaries

    def describe_nodes(self) -> dict:
        """nodes.json of the run folder: which Flower node runs each client, what it reported, who refused."""
        return {
            "clients": {
                str(cid): {"node": node, **self.reports.get(cid, {})} for cid, node in sorted(self.nodes.items())
            },
            "refused": {str(cid): reason for cid, reason in sorted(self.refused.items())},
        }

    # ---------------------------------------------------------------------------------------- clients
    def label(self, client_id: int) -> str:
        return f"client {client_id} (Flower node {self.nodes.get(client_id)})"

    def run_clients(self, jobs: list[tuple[int, bytes]]) -> list[bytes | ClientFailure]:
        """One train message per job, all at once; the upload blobs (or failures) in job order."""
        self._calls += 1
        unknown = [cid for cid, _ in jobs if cid not in self.nodes and cid not in self.refused]
        if unknown:
            raise FedloraError(f"flower: no SuperNode runs client(s) {unknown}")
        history = self._base_history()
        target = len(history)
        downloads = {cid: blob for cid, blob in jobs if cid not in self.refused}
        start_from = {cid: self._holds.get(cid, 0) for cid in downloads}
        uploads: dict[int, bytes | ClientFailure] = {
            cid: ClientFailure(f"refused the run at connect: {self.refused[cid]}")
            for cid, _ in jobs
            if cid in self.refused
        }
        failures: dict[int, str] | None = None if self.fail_fast else {}
        catchup_bytes, resent = 0, 0
        node_s: dict[int, float] = {}
        started = time.perf_counter()
        pending = list(downloads)
        for attempt in range(2):
            messages = {}
            for cid in pending:
                message, extra = self._train_message(cid, downloads[cid], history, start_from[cid])
                messages[cid] = message
                catchup_bytes += extra
            replies = exchange(
                self.grid,
                messages,
                "training",
                self.round_timeout_s,
                self.label,
                self.timeout_setting,
                failures,
                self.outstanding,
            )
            again = []
            for cid, reply in replies.items():
                meta = wire.settings(reply)
                if meta["status"] == wire.STATUS_NEED_BASE:
                    start_from[cid] = int(meta["base_version"])
                    again.append(cid)
                    continue
                try:
                    uploads[cid] = self._read_upload(cid, reply, len(downloads[cid]))
                except FedloraError as err:
                    if failures is None:
                        raise
                    failures[cid] = str(err).removeprefix(f"flower: {self.label(cid)}: ")
                    continue
                self._holds[cid] = target
                node_s[cid] = float(meta.get("seconds", 0.0))
            if not again:
                break
            if attempt == 1:
                if failures is None:
                    raise FedloraError(f"flower: {self.label(again[0])} still lacks base updates after a catch-up")
                failures.update({cid: "still lacks base updates after a catch-up" for cid in again})
                break
            pending, resent = again, resent + len(again)
        for cid, reason in (failures or {}).items():
            uploads[cid] = ClientFailure(reason)
        self._facts = {
            "catchup_bytes_down": catchup_bytes,
            "flower_resent": resent,
            "flower_s": time.perf_counter() - started,
            "node_s": [node_s.get(cid) for cid, _ in jobs],
        }
        return [uploads[cid] for cid, _ in jobs]

    def _train_message(self, cid: int, blob: bytes, history: list[Factors], holds: int) -> tuple[Message, int]:
        """The train message of client ``cid`` and the bytes of its catch-up record (0 when it needs none)."""
        target = len(history)
        first = min(holds, max(target - 1, 0))
        content = RecordDict(
            {
                wire.DOWNLOAD: wire.blob_record(blob),
                wire.FEDLORA: ConfigRecord(
                    {"client": cid, "session": self.session, "base_target": target, "catchup_from": first}
                ),
            }
        )
        extra = 0
        self._check_size(f"the download to {self.label(cid)}", len(blob))
        missed = history[first : target - 1]  # the newest update travels in the download ("sync.")
        if missed:
            tensors = {}
            for offset, update in enumerate(missed):
                tensors.update(flatten_factors(update, prefix=f"base{first + offset:06d}."))
            catchup = payload.pack(tensors, {"first": first, "count": len(missed)})
            self._check_size(f"the catch-up of {len(missed)} base updates to {self.label(cid)}", len(catchup))
            content[wire.CATCHUP] = wire.blob_record(catchup)
            extra = len(catchup)
        message = Message(
            content,
            dst_node_id=self.nodes[cid],
            message_type=wire.TRAIN,
            group_id=f"fedlora-{self._calls}",
            ttl=self.message_ttl_s,
        )
        return message, extra

    def _read_upload(self, cid: int, reply: Message, sent: int) -> bytes:
        meta = wire.settings(reply)
        upload = wire.record_blob(reply, wire.UPLOAD)
        if upload is None:
            raise FedloraError(f"flower: {self.label(cid)}: replied without an upload")
        self._check_size(f"the upload of {self.label(cid)}", len(upload))
        if int(meta["download_bytes"]) != sent or int(meta["upload_bytes"]) != len(upload):
            raise FedloraError(
                f"flower: {self.label(cid)}: carried bytes differ from the blobs (download {sent} sent, "
                f"{meta['download_bytes']} received; upload {meta['upload_bytes']} sent, {len(upload)} received)"
            )
        return upload

    # ---------------------------------------------------------------------------------- evaluation
    def evaluate_clients(self, blob: bytes) -> dict[int, dict | ClientFailure]:
        """Federated evaluation: every client whose node holds a held-out split evaluates the global model of
        ``blob`` (``fedlora.client.app.eval_blob``) on it. A node first folds in the base updates it lacks
        (merge-into-base methods: sent as catch-up, counted nowhere else). Client id → {"n", "eval_loss"[,
        "eval_accuracy"]} or its failure (raises instead with ``fail_fast``)."""
        clients = [cid for cid in sorted(self.nodes) if int(self.reports.get(cid, {}).get("eval_examples", 0)) > 0]
        history = self._base_history()
        target = len(history)
        start_from = {cid: self._holds.get(cid, 0) for cid in clients}
        failures: dict[int, str] | None = None if self.fail_fast else {}
        results: dict[int, dict | ClientFailure] = {}
        pending = clients
        for attempt in range(2):
            messages = {cid: self._evaluate_message(cid, blob, history, start_from[cid]) for cid in pending}
            replies = exchange(
                self.grid,
                messages,
                "evaluation",
                self.round_timeout_s,
                self.label,
                self.timeout_setting,
                failures,
                self.outstanding,
            )
            again = []
            for cid, reply in replies.items():
                meta = wire.settings(reply)
                if meta["status"] == wire.STATUS_NEED_BASE:
                    start_from[cid] = int(meta["base_version"])
                    again.append(cid)
                    continue
                figures = {"n": int(meta["n"]), "eval_loss": float(meta["eval_loss"])}
                if "eval_accuracy" in meta:
                    figures["eval_accuracy"] = float(meta["eval_accuracy"])
                results[cid] = figures
                self._holds[cid] = target
            if not again:
                break
            if attempt == 1:
                if failures is None:
                    raise FedloraError(f"flower: {self.label(again[0])} still lacks base updates after a catch-up")
                failures.update({cid: "still lacks base updates after a catch-up" for cid in again})
                break
            pending = again
        for cid, reason in (failures or {}).items():
            results[cid] = ClientFailure(reason)
        return results

    def _evaluate_message(self, cid: int, blob: bytes, history: list[Factors], holds: int) -> Message:
        """Client ``cid``'s evaluate message: the global adapter blob, and every base update its node lacks."""
        target = len(history)
        first = min(holds, target)
        content = RecordDict(
            {
                wire.DOWNLOAD: wire.blob_record(blob),
                wire.FEDLORA: ConfigRecord(
                    {"client": cid, "session": self.session, "base_target": target, "catchup_from": first}
                ),
            }
        )
        self._check_size(f"the evaluation download to {self.label(cid)}", len(blob))
        missed = history[first:target]
        if missed:
            tensors = {}
            for offset, update in enumerate(missed):
                tensors.update(flatten_factors(update, prefix=f"base{first + offset:06d}."))
            catchup = payload.pack(tensors, {"first": first, "count": len(missed)})
            self._check_size(f"the catch-up of {len(missed)} base updates to {self.label(cid)}", len(catchup))
            content[wire.CATCHUP] = wire.blob_record(catchup)
        return Message(content, dst_node_id=self.nodes[cid], message_type=wire.EVALUATE, ttl=self.message_ttl_s)

    def _check_size(self, what: str, size: int) -> None:
        complaint = blob_over_limit(what, size, self.max_message_mb)
        if complaint is not None:
            raise FedloraError(f"flower: {complaint}; refused")

    def finish(self, timeout: float = 60.0) -> None:
        """Tell every node the run is over (they drop the run's folder: base updates, encoded data); failures are
        ignored. Messages still unanswered (late past a round deadline) are awaited first, within the same
        ``timeout``: a node that handled one after the finish would write the run's folder again and keep it."""
        end = time.monotonic() + timeout
        pending = set(self.outstanding)
        with contextlib.suppress(Exception):  # cleanup is best effort
            while pending and time.monotonic() < end:
                pending -= {reply.metadata.reply_to_message_id for reply in self.grid.pull_messages(pending)}
                if pending:
                    time.sleep(POLL_S)
        self.outstanding = pending
        messages = {
            cid: Message(RecordDict({wire.FEDLORA: ConfigRecord({})}), dst_node_id=node, message_type=wire.FINISH)
            for cid, node in self.nodes.items()
        }
        with contextlib.suppress(Exception):  # cleanup is best effort
            send_and_receive(self.grid, list(messages.values()), max(1.0, end - time.monotonic()))


@dataclass
class Connection:
    """The federation as the hello found it."""

    nodes: dict[int, int] = field(default_factory=dict)
    """Client id → the Flower node that runs it (its node accepted the run)."""
    reports: dict[int, dict] = field(default_factory=dict)
    """Client id → what its node reported: num_examples, eval_examples (its own data), declared resources."""
    refused: dict[int, str] = field(default_factory=dict)
    """Client id → why its node refused the run (e.g. its data does not fit the run's template)."""
    left_out: dict[int, str] = field(default_factory=dict)
    """Flower node id → why it is not used (no usable reply to hello: it stopped, it failed)."""


def connect(
    grid,
    config_text: str,
    num_clients: int,
    *,
    session: str,
    base_fingerprint: str = "",
    threads: int = 0,
    timeout_s: float = 300.0,
    ttl: float | None = None,
    log: Callable[[str], None] | None = None,
    progress_every_s: float = 10.0,
) -> Connection:
    """Wait for the SuperNodes, say hello to each, and map client ids 0..num_clients-1 to node ids.

    Every node replies with its node config's ``partition-id`` after checking that it can be that client (and,
    holding its own data, that the data fits the run's template: else it refuses, with a reason). A node that
    does not answer the hello usefully (stopped, failed) is left out; missing and duplicate partition ids are
    errors. While too few nodes are connected a progress line is logged every ``progress_every_s``."""
    deadline = time.monotonic() + timeout_s
    said = time.monotonic()
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= num_clients:
            break
        now = time.monotonic()
        if now > deadline:
            raise FedloraError(
                f"flower: {len(node_ids)} of {num_clients} SuperNodes connected within {timeout_s:.0f} s "
                "(one per client: partition.num_clients; flower.connect_timeout_s)"
            )
        if log and now - said >= progress_every_s:
            log(
                f"flower: waiting for SuperNodes: {len(node_ids)} of {num_clients} connected "
                f"({deadline - now:.0f} s left of flower.connect_timeout_s)"
            )
            said = now
        time.sleep(0.5)
    if log:
        log(f"flower: {len(node_ids)} SuperNodes connected; checking their clients")
    hello = ConfigRecord(
        {
            "config": config_text,
            "session": session,
            "base_fingerprint": base_fingerprint,
            "threads": threads,
            "protocol": wire.PROTOCOL,
        }
    )
    messages = {
        node: Message(RecordDict({wire.FEDLORA: hello}), dst_node_id=node, message_type=wire.HELLO, ttl=ttl)
        for node in node_ids
    }
    remaining = max(deadline - time.monotonic(), 60.0)
    found = Connection()
    replies = exchange(
        grid,
        messages,
        "hello",
        remaining,
        lambda node: f"Flower node {node}",
        "flower.connect_timeout_s",
        found.left_out,
    )
    for node, reason in sorted(found.left_out.items()):
        if log:
            log(f"flower: Flower node {node} left out: {reason}")
    for node, reply in sorted(replies.items()):
        meta = wire.settings(reply)
        cid = int(meta["partition_id"])
        if cid in found.nodes or cid in found.refused:
            other = found.nodes.get(cid, "another")
            raise FedloraError(f"flower: Flower nodes {other} and {node} both have partition-id={cid}")
        if str(meta.get("status", wire.STATUS_OK)) == wire.STATUS_REFUSED:
            found.refused[cid] = f"Flower node {node} (partition-id {cid}) refused the run: {meta['reason']}"
            if log:
                log(f"flower: {found.refused[cid]}")
            continue
        found.nodes[cid] = node
        report = {key: meta[key] for key in ("num_examples", "eval_examples") if key in meta}
        declared = json.loads(str(meta.get("declared", "{}")))
        if declared:
            report["declared"] = declared
        found.reports[cid] = report
    missing = [cid for cid in range(num_clients) if cid not in found.nodes and cid not in found.refused]
    if missing:
        also = "".join(f"; Flower node {node} left out: {reason}" for node, reason in sorted(found.left_out.items()))
        raise FedloraError(
            f"flower: no SuperNode has partition-id {missing[0]} (one per client 0..{num_clients - 1}){also}"
        )
    return found


def connect_nodes(grid, config_text: str, num_clients: int, **options) -> dict[int, int]:
    """:func:`connect` for callers that need only the client → node map (nodes that refused are missing)."""
    return connect(grid, config_text, num_clients, **options).nodes

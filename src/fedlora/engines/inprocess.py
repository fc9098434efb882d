"""The default engine: every sampled client runs in this process, one after another, on ONE base model.

Only adapters are swapped between clients, so memory is one model plus one client's adapter and optimizer
state, whatever the number of clients. With ``fleet.precision`` clients at another precision than the server's
base train on one converted copy per precision (``fedlora.client.bases``).

Faults: a client that raises becomes a ``ClientFailure`` (its traceback goes to the "fedlora" logger at
DEBUG), unless ``fail_fast`` (then the exception propagates, traceback and all). Clients run one after another
on the shared model, so a slow one cannot be abandoned mid-training (its thread would keep writing the shared
layers): the engine measures each client's own wall time and discards a result that took longer than
``deadline_s``, as a server would discard a late reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from fedlora.client.app import evaluate_download, run_client
from fedlora.client.bases import ClientBases
from fedlora.client.state import ClientStateStore, client_store
from fedlora.client.train import LocalTraining
from fedlora.engines.base import ClientFailure, Engine
from fedlora.lora.layer import LoRALinear

log = logging.getLogger("fedlora")


def describe_exception(err: BaseException) -> str:
    """One line: ``RuntimeError: text`` (first line of the message, at most 300 characters)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    line = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return line if len(line) <= 300 else line[:297] + "..."


@dataclass(frozen=True)
class ClientEvaluation:
    """What federated evaluation needs in-process: each client's own held-out set (None: it has none)."""

    tokenizer: object
    eval_sets: list
    batch_size: int
    length_normalize: bool = False


class InProcessEngine(Engine):
    def __init__(
        self,
        model: nn.Module,
        layers: Mapping[str, LoRALinear],
        client_examples: list[list[dict]],
        training: LocalTraining,
        pad_id: int,
        *,
        deadline_s: float | None = None,
        fail_fast: bool = False,
        clock: Callable[[], float] = time.perf_counter,
        bases: ClientBases | None = None,
        evaluation: ClientEvaluation | None = None,
        client_states: Path | None = None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.client_examples = client_examples
        self.training = training
        self.pad_id = pad_id
        self.deadline_s = deadline_s
        self.fail_fast = fail_fast
        self.clock = clock
        """Seconds (monotonic); tests pass a fake clock to make a client "hang" deterministically."""
        self.bases = bases
        """Per-client base precision (``fleet.precision``); None: every client trains on ``model``."""
        self.evaluation = evaluation
        """The clients' own held-out sets (federated evaluation), or None."""
        self.client_states = client_states
        """Where each client keeps state between rounds (``<dir>/<id>/``, FedSA-LoRA's own B), or None."""

    def store(self, client_id: int) -> ClientStateStore | None:
        """Client ``client_id``'s state store (None when the engine keeps no client state)."""
        return None if self.client_states is None else client_store(self.client_states, client_id)

    def evaluate_clients(self, blob: bytes) -> dict[int, dict | ClientFailure]:
        """Every client with a held-out set of its own evaluates the global model of ``blob`` (``eval_blob``)
        on it, on the shared model: client id → {"n", "eval_loss"[, "eval_accuracy"]} or its failure."""
        ev = self.evaluation
        if ev is None:
            return {}
        results: dict[int, dict | ClientFailure] = {}
        for cid, eval_set in enumerate(ev.eval_sets):
            if eval_set is None:
                continue
            try:
                results[cid] = evaluate_download(
                    self.model,
                    self.layers,
                    blob,
                    ev.tokenizer,
                    eval_set,
                    ev.batch_size,
                    self.pad_id,
                    ev.length_normalize,
                    state=self.store(cid),
                )
            except Exception as err:
                if self.fail_fast:
                    raise
                results[cid] = ClientFailure(describe_exception(err))
        return results

    def run_clients(self, jobs: list[tuple[int, bytes]]) -> Iterator[bytes | ClientFailure]:
        """One client after another (lazily, so progress can be reported as each finishes)."""
        for client_id, download in jobs:
            yield self._run_one(client_id, download)

    def _run_one(self, client_id: int, download: bytes) -> bytes | ClientFailure:
        started = self.clock()
        try:
            upload = self.run_client(client_id, download)
        except Exception as err:
            if self.fail_fast:
                raise
            log.debug("client %d failed", client_id, exc_info=True)  # the round's record has the one-line reason
            return ClientFailure(describe_exception(err))
        elapsed = self.clock() - started
        if self.deadline_s is not None and elapsed > self.deadline_s:
            return ClientFailure(f"timeout: took {elapsed:.3g} s > faults.round_deadline_s={self.deadline_s:g}")
        return upload

    def run_client(self, client_id: int, download: bytes) -> bytes:
        """Run one client's round on its own shard, on the base at its precision; returns its upload blob."""
        model, layers = (self.model, self.layers) if self.bases is None else self.bases.for_client(client_id)
        examples = self.client_examples[client_id]
        return run_client(model, layers, download, examples, self.training, self.pad_id, state=self.store(client_id))

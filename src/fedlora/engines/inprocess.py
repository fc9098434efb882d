"""The default engine: every sampled client runs in this process, one after another, on ONE base model.

Only adapters are swapped between clients, so memory is one model plus one client's adapter and optimizer
state, whatever the number of clients.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import nn

from fedlora.client.app import run_client
from fedlora.client.train import LocalTraining
from fedlora.lora.layer import LoRALinear


class InProcessEngine:
    def __init__(
        self,
        model: nn.Module,
        layers: Mapping[str, LoRALinear],
        client_examples: list[list[dict]],
        training: LocalTraining,
        pad_id: int,
    ) -> None:
        self.model = model
        self.layers = layers
        self.client_examples = client_examples
        self.training = training
        self.pad_id = pad_id

    def run_clients(self, jobs: list[tuple[int, bytes]]) -> Iterator[bytes]:
        """One client after another (lazily, so progress can be reported as each finishes)."""
        for client_id, download in jobs:
            yield self.run_client(client_id, download)

    def run_client(self, client_id: int, download: bytes) -> bytes:
        """Run one client's round on its own shard; returns its upload blob."""
        return run_client(
            self.model, self.layers, download, self.client_examples[client_id], self.training, self.pad_id
        )

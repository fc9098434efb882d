"""What the round loop needs from an engine: carry each client's download blob to it and its upload blob back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ClientFailure:
    """A client that returned no upload this round: it raised, missed the round deadline, or never replied.

    ``reason`` is one line (e.g. "timeout: 41.2 s > faults.round_deadline_s=30"); the round loop records it in
    metrics.jsonl and goes on with the other clients (unless ``faults.fail_fast``)."""

    reason: str


class Engine(Protocol):
    def run_clients(self, jobs: list[tuple[int, bytes]]) -> Iterable[bytes | ClientFailure]:
        """Run one round's clients: ``jobs`` is [(client id, download blob)]; yields/returns, in the same order,
        each client's upload blob or a ``ClientFailure``. The round loop only ever reads and writes blobs, so the
        byte counts are the same for every engine, and it checks every blob (``fedlora.validation``): an engine
        passes on whatever bytes came back, even empty or garbled ones."""
        ...

"""What the round loop needs from an engine: carry each client's download blob to it and its upload blob back."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Engine(Protocol):
    def run_clients(self, jobs: list[tuple[int, bytes]]) -> Iterable[bytes]:
        """Run one round's clients: ``jobs`` is [(client id, download blob)]; yields/returns their upload blobs in
        the same order. The round loop only ever reads and writes blobs, so the byte counts are the same for every
        engine."""
        ...

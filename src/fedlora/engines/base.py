"""What the round loop needs from an engine: carry each client's download blob to it and its upload blob back.

``run_clients`` is the one thing every engine does. The other methods are optional hooks with no-op defaults:
an engine derives from :class:`Engine` and overrides the ones it has (Flower: base-update catch-up, transport
facts, clients that hold their own data, federated evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fedlora.lora.state import Factors


@dataclass(frozen=True)
class ClientFailure:
    """A client that returned no upload this round: it raised, missed the round deadline, or never replied.

    ``reason`` is one line (e.g. "timeout: 41.2 s > faults.round_deadline_s=30"); the round loop records it in
    metrics.jsonl and goes on with the other clients (unless ``faults.fail_fast``)."""

    reason: str


class NoFederatedEvaluation(Exception):
    """The engine cannot ask its clients to evaluate (``Engine.evaluate_clients``'s default)."""


class Engine(Protocol):
    def run_clients(self, jobs: list[tuple[int, bytes]]) -> Iterable[bytes | ClientFailure]:
        """Run one round's clients: ``jobs`` is [(client id, download blob)]; yields/returns, in the same order,
        each client's upload blob or a ``ClientFailure``. The round loop only ever reads and writes blobs, so the
        byte counts are the same for every engine, and it checks every blob (``fedlora.validation``): an engine
        passes on whatever bytes came back, even empty or garbled ones."""
        ...

    # ------------------------------------------------------------------ optional hooks (no-op defaults)
    def attach_base_history(self, base_history: Callable[[], list[Factors]]) -> None:
        """Given once before the first round: every base update merged so far (merge-into-base methods), for
        engines whose clients hold their own base copy and must catch up on updates they missed (Flower)."""
        return None

    def round_facts(self) -> dict:
        """Transport facts of the last ``run_clients`` call for the round's record (Flower: catch-up bytes)."""
        return {}

    def client_summaries(self) -> list[dict] | None:
        """Each client's data summary as the clients reported it, when the server holds none of their data
        (partition.scheme "nodes"); None: the server's own setup has them."""
        return None

    def describe_nodes(self) -> dict | None:
        """nodes.json of a federation (which node runs each client, what it reported or refused); None: no nodes."""
        return None

    def evaluate_clients(self, blob: bytes) -> dict[int, dict | ClientFailure]:
        """Every client with a held-out set of its own evaluates the global model of ``blob``: client id →
        {"n", "eval_loss"[, "eval_accuracy"]} or its failure. Default: this engine cannot."""
        raise NoFederatedEvaluation

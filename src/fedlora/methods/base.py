"""What every federated method provides to the round loop.

A method decides what each sampled client receives (its factors, rank, scale, which factors train) and how
the server turns the clients' returned factors into the next global adapter. It knows nothing of transport:
the round loop serialises plans and uploads, an engine carries them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from fedlora.lora.state import Factors


@dataclass
class ClientPlan:
    """One client's assignment for one round. ``factors`` travel to the client; ``context`` stays on the server."""

    client_id: int
    rank: int
    scale: float
    factors: Factors
    train_A: bool = True
    train_B: bool = True
    context: dict[str, Tensor] = field(default_factory=dict)


class Method(Protocol):
    name: str

    def plan(self, client_id: int, generator: torch.Generator) -> ClientPlan:
        """The client's starting factors for this round (drawn with ``generator`` where random)."""
        ...

    def aggregate(self, plans: list[ClientPlan], uploads: list[Factors], weights: list[float]) -> dict:
        """Update the global state from the participants' trained factors; returns facts to log."""
        ...

    def global_adapter(self) -> tuple[Factors, dict[str, float]]:
        """The current global model's adapter: factors and per-module scale (W = W0 + scale · B A)."""
        ...

    def state_tensors(self) -> dict[str, Tensor]:
        """Everything needed to resume (global factors, server optimizer moments)."""
        ...

    def load_state_tensors(self, tensors: dict[str, Tensor], step_count: int) -> None: ...

"""What every federated method provides to the round loop.

A method decides what each sampled client receives (its factors, rank, scale, which factors train) and how
the server turns the clients' returned factors into the next global model. It never touches the model: a
method that folds its global update into the frozen base (FLoRA, FLoRIST) hands that update to the round
loop through ``pending_base_update``, and the loop merges it. It knows nothing of transport either: the loop
serialises plans and uploads, an engine carries them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from fedlora.lora.state import Factors

Adapter = tuple[Factors, dict[str, float]]
"""Factors per module and the scale per module: the model is W = W0 + scale · B A."""


@dataclass
class ClientPlan:
    """One client's assignment for one round.

    ``factors`` are the client's starting factors. They travel in the download unless ``fresh_seed`` is set:
    then the client draws them itself (B = 0, A random from that seed, as the server did) and the download
    carries only ``base_sync``, the global update to fold into its base. ``context`` stays on the server.
    ``keep_B``: the client keeps its own B between rounds (client state, FedSA-LoRA): B is neither downloaded nor
    uploaded, the client trains from its stored B (zeros the first time), and ``factors``' B is a zero
    placeholder that only gives the upload check its shape.
    ``frame`` (Fed-SB): fixed outer factors (U m×r, V r×n) per module around the trained inner pair, so the
    client's update is scale · U B A V with ``factors`` = (B r×r, A = I_r); the identity A is not sent.
    """

    client_id: int
    rank: int
    scale: float
    factors: Factors
    train_A: bool = True
    train_B: bool = True
    fresh_seed: int | None = None
    keep_B: bool = False
    base_sync: Factors | None = None
    frame: Factors | None = None
    context: dict[str, Tensor] = field(default_factory=dict)


class Method(Protocol):
    name: str
    step_count: int

    def plan(self, client_id: int, round_idx: int, generator: torch.Generator) -> ClientPlan:
        """The client's assignment for this round (random draws from ``generator``)."""
        ...

    def aggregate(self, plans: list[ClientPlan], uploads: list[Factors], weights: list[float]) -> dict:
        """Update the global state from the participants' trained factors; returns facts to log."""
        ...

    def eval_adapter(self) -> Adapter | None:
        """The adapter that, on top of the current (possibly merged) base, gives the global model."""
        ...

    def export_adapter(self) -> Adapter:
        """The whole fine-tune as one LoRA on the ORIGINAL base (for ``adapter/``)."""
        ...

    def pending_base_update(self) -> Factors | None:
        """A global update (scale folded into B) to merge into the base after this round's aggregation."""
        ...

    def base_history(self) -> list[Factors]:
        """Every base update merged so far, in order (re-merged when a run resumes)."""
        ...

    def personal_adapters(self) -> dict[int, Adapter] | None:
        """Client id → that client's personalised adapter on the current base, for methods whose clients keep
        models of their own (FedSA-LoRA); None for methods with one global model."""
        ...

    def personal_eval_shared(self) -> tuple[dict[str, Tensor], dict[str, float], int] | None:
        """What a client evaluating its own model receives (it adds its own state): the shared A per module
        (r × n), the scale per module and the rank; None for methods with one global model."""
        ...

    def options(self) -> dict:
        """The method's options for summary.json."""
        ...

    def state_tensors(self) -> dict[str, Tensor]:
        """Everything needed to resume."""
        ...

    def load_state_tensors(self, tensors: dict[str, Tensor], step_count: int) -> None: ...


class MethodDefaults:
    """The hooks most methods answer the same way: nothing merged into the base, one global model.

    A method class (built-in or a user's) inherits these and overrides what it does differently."""

    def pending_base_update(self) -> Factors | None:
        return None

    def base_history(self) -> list[Factors]:
        return []

    def personal_adapters(self) -> dict[int, Adapter] | None:
        return None

    def personal_eval_shared(self) -> tuple[dict[str, Tensor], dict[str, float], int] | None:
        return None


class MergedHistory(MethodDefaults):
    """For methods that fold a global update into the base after aggregation (FLoRA, FLoRIST, FedEx-LoRA): they
    keep ``history`` (every update merged, in order) and ``_pending`` (this round's, until the loop takes it)."""

    history: list[Factors]
    _pending: Factors | None

    def pending_base_update(self) -> Factors | None:
        pending, self._pending = self._pending, None
        return pending

    def base_history(self) -> list[Factors]:
        return list(self.history)

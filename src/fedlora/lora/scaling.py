"""LoRA scale conventions: the multiplier s in W = W0 + s · B A for an adapter of rank k.

Heterogeneous-rank methods train clients of different ranks k side by side, so the convention decides how
strongly each client's update counts (with Adam, a client's step on ΔW grows linearly with s):

- ``alpha_over_rank``: s = α / k (LoRA's and PEFT's default). One α gives a rank-4 client 16× the multiplier of a
  rank-64 client.
- ``constant``: s = α for every client whatever its rank (PEFT's lora_alpha = α·k; the FLoRA and FLoRIST code set
  lora_alpha = 2·r_k, i.e. s = 2 for every client).
- ``rslora``: s = α / √k (rank-stabilised LoRA, Kalajdzievski 2023; PEFT's ``use_rslora``; the FSLoRA code).

Exported adapters encode the rule: PEFT computes lora_alpha / r, or lora_alpha / √r with ``use_rslora``
(:func:`fedlora.lora.export.adapter_config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ScalingKind = Literal["alpha_over_rank", "constant", "rslora"]
SCALINGS: tuple[ScalingKind, ...] = ("alpha_over_rank", "constant", "rslora")


@dataclass(frozen=True)
class ScaleRule:
    """The scale of a rank-k adapter under one convention.

    Args:
        kind: one of :data:`SCALINGS`.
        alpha: α (> 0).
    """

    kind: ScalingKind
    alpha: float

    def __post_init__(self) -> None:
        if self.kind not in SCALINGS:
            raise ValueError(f"lora.scaling: unknown convention {self.kind!r}; one of {', '.join(SCALINGS)}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha: must be > 0, got {self.alpha}")

    def __call__(self, rank: int) -> float:
        """s for an adapter of rank ``rank`` (>= 1)."""
        if rank < 1:
            raise ValueError(f"rank: must be >= 1, got {rank}")
        if self.kind == "alpha_over_rank":
            return self.alpha / rank
        if self.kind == "constant":
            return self.alpha
        return self.alpha / math.sqrt(rank)

    @property
    def rslora(self) -> bool:
        """Whether PEFT should divide lora_alpha by √r (``use_rslora``) to reproduce this rule."""
        return self.kind == "rslora"

    def describe(self) -> dict:
        """The rule for summary.json."""
        formula = {"alpha_over_rank": "alpha / r_k", "constant": "alpha", "rslora": "alpha / sqrt(r_k)"}
        return {"scaling": self.kind, "alpha": self.alpha, "scale_formula": formula[self.kind]}

"""The global adapter: one LoRA pair (B m×r, A r×n) per target module, plus its scale.

The global model is W0 + scale · B A for every module, the scale from the run's convention (``fedlora.lora.scaling``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

Factors = dict[str, tuple[Tensor, Tensor]]
"""Module path → (B m×r, A r×n)."""


@dataclass(frozen=True)
class ModuleShape:
    out_features: int
    in_features: int


def init_factors(shapes: Mapping[str, ModuleShape], rank: int, generator: torch.Generator) -> Factors:
    """PEFT's default init: A ~ U(-1/√n, 1/√n) (kaiming-uniform with a=√5), B = 0, so ΔW starts at 0."""
    factors: Factors = {}
    for name, shape in shapes.items():
        bound = 1.0 / math.sqrt(shape.in_features)
        A = (torch.rand(rank, shape.in_features, generator=generator) * 2 - 1) * bound
        B = torch.zeros(shape.out_features, rank)
        factors[name] = (B, A)
    return factors


def clone_factors(factors: Factors) -> Factors:
    return {name: (B.clone(), A.clone()) for name, (B, A) in factors.items()}


def flatten_factors(factors: Factors, prefix: str = "") -> dict[str, Tensor]:
    """{"<prefix><module>.lora_B": B, "<prefix><module>.lora_A": A} for serialisation."""
    flat: dict[str, Tensor] = {}
    for name, (B, A) in factors.items():
        flat[f"{prefix}{name}.lora_B"] = B
        flat[f"{prefix}{name}.lora_A"] = A
    return flat


def unflatten_factors(flat: Mapping[str, Tensor], prefix: str = "") -> Factors:
    """Inverse of ``flatten_factors``; keys not starting with ``prefix`` are ignored."""
    factors: dict[str, dict[str, Tensor]] = {}
    for key, value in flat.items():
        if not key.startswith(prefix):
            continue
        name, _, which = key[len(prefix) :].rpartition(".")
        factors.setdefault(name, {})[which] = value
    result: Factors = {}
    for name, pair in factors.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"module {name}: expected lora_A and lora_B, got {sorted(pair)}")
        result[name] = (pair["lora_B"], pair["lora_A"])
    return result

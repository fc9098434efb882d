"""Export the global adapter in PEFT's LoRA format (adapter_config.json + adapter_model.safetensors).

``PeftModel.from_pretrained(base_model, DIR)`` loads the result. PEFT computes scale = lora_alpha / r per module
(lora_alpha / √r with ``use_rslora``); for each module we write r = its rank and lora_alpha = scale · r (scale · √r
for a run under the rslora convention, which sets ``use_rslora``; per-module values go in rank_pattern /
alpha_pattern when ranks differ), so the loaded model is exactly W0 + scale · B A.

The PEFT task type follows the base: ``CAUSAL_LM`` for a causal LM, ``FEATURE_EXTRACTION`` for an encoder
(``fedlora.models.is_encoder_model``): load that adapter onto the bare encoder (``load_base_encoder``, a
``BertModel``); module paths of fedlora's encoder classifier are the encoder's own, so the keys match.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save
from torch import Tensor

from fedlora.rundir import atomic_write_bytes, atomic_write_text

PEFT_PREFIX = "base_model.model."


def peft_state_dict(factors: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """PEFT's key layout: base_model.model.<module>.lora_A.weight (r×n) and .lora_B.weight (m×r)."""
    state: dict[str, Tensor] = {}
    for name, (B, A) in factors.items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = A.detach().to("cpu", torch.float32).contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = B.detach().to("cpu", torch.float32).contiguous()
    return state


def peft_task_type(base_model: str) -> str:
    """PEFT's task type for an adapter on ``base_model`` (a model.name, or the folder of a random base)."""
    from fedlora.models.encoder import is_encoder_model

    return "FEATURE_EXTRACTION" if is_encoder_model(base_model) else "CAUSAL_LM"


def adapter_config(
    factors: Mapping[str, tuple[Tensor, Tensor]],
    scales: Mapping[str, float],
    target_modules: list[str],
    base_model: str,
    task_type: str | None = None,
    rslora: bool = False,
) -> dict:
    """A PEFT LoraConfig dict reproducing W0 + scale · B A for every module (``task_type``: by default
    :func:`peft_task_type` of ``base_model``; ``rslora``: PEFT divides lora_alpha by √r instead of r)."""
    ranks = {name: int(A.shape[0]) for name, (_, A) in factors.items()}
    rank = max(set(ranks.values()), key=list(ranks.values()).count)  # the most common rank
    default_scale = max(set(scales.values()), key=list(scales.values()).count)
    rank_pattern = {name: r for name, r in ranks.items() if r != rank}

    def per_rank(r: int) -> float:
        return math.sqrt(r) if rslora else r

    alpha_pattern = {
        name: scales[name] * per_rank(ranks[name])
        for name in factors
        if ranks[name] != rank or scales[name] != default_scale
    }
    return {
        "peft_type": "LORA",
        "task_type": task_type or peft_task_type(base_model),
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": default_scale * per_rank(rank),
        "lora_dropout": 0.0,
        "target_modules": sorted(set(target_modules)),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": rslora,
        "init_lora_weights": True,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "inference_mode": True,
    }


def save_peft_adapter(
    out_dir: Path,
    factors: Mapping[str, tuple[Tensor, Tensor]],
    scales: Mapping[str, float],
    target_modules: list[str],
    base_model: str,
    task_type: str | None = None,
    rslora: bool = False,
) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``out_dir`` (``rslora``: see
    :func:`adapter_config`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = adapter_config(factors, scales, target_modules, base_model, task_type, rslora)
    # each file atomically: a crash mid-export leaves every file old or new, and a resume writes them again
    atomic_write_bytes(out_dir / "adapter_model.safetensors", save(peft_state_dict(factors)))
    atomic_write_text(out_dir / "adapter_config.json", json.dumps(config, indent=2) + "\n")

"""A client's round, transport-free: download blob in → install → train → upload blob out.

Both engines call ``run_client``: in-process with the shared model, Flower inside its ClientApp.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from fedlora import payload
from fedlora.client.train import LocalTraining, train_adapter
from fedlora.lora.layer import LoRALinear
from fedlora.lora.state import Factors, flatten_factors, unflatten_factors


def install_adapter(
    layers: Mapping[str, LoRALinear],
    factors: Factors,
    scale: float,
    train_B: bool = True,
    train_A: bool = True,
) -> None:
    """Put ``factors`` (module path → (B, A)) into the wrapped layers; every target module must be present."""
    missing = set(layers) - set(factors)
    if missing:
        raise ValueError(f"adapter lacks modules: {sorted(missing)[:3]}")
    for name, layer in layers.items():
        B, A = factors[name]
        layer.set_adapter(B, A, scale, train_B=train_B, train_A=train_A)


def read_adapter(layers: Mapping[str, LoRALinear]) -> Factors:
    return {name: layer.get_adapter() for name, layer in layers.items()}


def run_client(
    model: nn.Module,
    layers: Mapping[str, LoRALinear],
    download: bytes,
    examples: list[dict],
    training: LocalTraining,
    pad_id: int,
) -> bytes:
    """Train the adapter in ``download`` on ``examples`` and return the upload blob.

    The upload holds only the factors that trained (both for FSLoRA/FedIT) and metadata: num_examples,
    train_loss, tokens, steps.
    """
    tensors, meta = payload.unpack(download)
    train_B, train_A = bool(meta["train_B"]), bool(meta["train_A"])
    install_adapter(layers, unflatten_factors(tensors), float(meta["scale"]), train_B, train_A)
    result = train_adapter(model, examples, training, pad_id, seed=int(meta["seed"]))
    trained = flatten_factors(read_adapter(layers))
    upload = {
        k: v
        for k, v in trained.items()
        if (train_B and k.endswith("lora_B")) or (train_A and k.endswith("lora_A"))
    }
    return payload.pack(
        upload,
        {
            "num_examples": result.num_examples,
            "train_loss": result.train_loss,
            "tokens": result.tokens,
            "steps": result.steps,
        },
    )

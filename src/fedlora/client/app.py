"""A client's round, transport-free: download blob in → install → train → upload blob out.

Both engines call ``run_client``: in-process with the shared model, Flower inside its ClientApp.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedlora import payload
from fedlora.client.train import LocalTraining, train_adapter
from fedlora.lora.layer import LoRALinear, merge_update
from fedlora.lora.state import Factors, ModuleShape, flatten_factors, init_factors, unflatten_factors


def install_adapter(
    layers: Mapping[str, LoRALinear],
    factors: Factors,
    scale: float | Mapping[str, float],
    train_B: bool = True,
    train_A: bool = True,
) -> None:
    """Put ``factors`` (module path → (B, A)) into the wrapped layers at ``scale`` (one, or per module)."""
    missing = set(layers) - set(factors)
    if missing:
        raise ValueError(f"adapter lacks modules: {sorted(missing)[:3]}")
    for name, layer in layers.items():
        B, A = factors[name]
        layer_scale = scale[name] if isinstance(scale, Mapping) else scale
        layer.set_adapter(B, A, layer_scale, train_B=train_B, train_A=train_A)


def read_adapter(layers: Mapping[str, LoRALinear]) -> Factors:
    return {name: layer.get_adapter() for name, layer in layers.items()}


def run_client(
    model: nn.Module,
    layers: Mapping[str, LoRALinear],
    download: bytes,
    examples: list[dict],
    training: LocalTraining,
    pad_id: int,
    apply_base_sync: bool = False,
) -> bytes:
    """Train the adapter in ``download`` on ``examples`` and return the upload blob.

    The download holds the starting factors under "adapter." (or a ``fresh_seed`` to draw them from) and, for
    merge-into-base methods, the previous global update under "sync.": a client with its own base copy
    (``apply_base_sync``) folds it in; the in-process engine shares one base the server already updated.
    The upload holds only the factors that trained and metadata: num_examples, train_loss, tokens, steps.
    """
    tensors, meta = payload.unpack(download)
    train_B, train_A = bool(meta["train_B"]), bool(meta["train_A"])
    if apply_base_sync:
        merge_update(layers, unflatten_factors(tensors, prefix="sync."))
    if meta.get("fresh_seed") is not None:
        shapes = {name: ModuleShape(layer.out_features, layer.in_features) for name, layer in layers.items()}
        factors = init_factors(shapes, int(meta["rank"]), torch.Generator().manual_seed(int(meta["fresh_seed"])))
    else:
        factors = unflatten_factors(tensors, prefix="adapter.")
    install_adapter(layers, factors, float(meta["scale"]), train_B, train_A)
    result = train_adapter(model, examples, training, pad_id, seed=int(meta["seed"]))
    trained = flatten_factors(read_adapter(layers))
    upload = {
        k: v for k, v in trained.items() if (train_B and k.endswith("lora_B")) or (train_A and k.endswith("lora_A"))
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


# ------------------------------------------------------------------------------------------ evaluation


def eval_blob(adapter: tuple[Factors, Mapping[str, float]] | None) -> bytes:
    """What travels to a client that evaluates the global model: the method's evaluation adapter (factors under
    "adapter." and each module's scale), or none when the (merged) base holds the whole global model."""
    if adapter is None:
        return payload.pack({}, {"adapter": False})
    factors, scales = adapter
    return payload.pack(flatten_factors(factors, prefix="adapter."), {"adapter": True, "scales": dict(scales)})


def evaluate_download(
    model: nn.Module,
    layers: Mapping[str, LoRALinear],
    blob: bytes,
    tokenizer,
    eval_set,
    batch_size: int,
    pad_id: int,
    length_normalize: bool = False,
) -> dict[str, float]:
    """Install the global adapter of ``blob`` (``eval_blob``; or clear the adapters) and evaluate ``eval_set``:
    {"n": examples, "eval_loss", and "eval_accuracy" where answers are options}."""
    from fedlora.evaluation.heldout import evaluate_heldout

    tensors, meta = payload.unpack(blob)
    if meta.get("adapter"):
        scales = {str(k): float(v) for k, v in dict(meta["scales"]).items()}
        install_adapter(layers, unflatten_factors(tensors, prefix="adapter."), scales, train_B=False, train_A=False)
    else:
        for layer in layers.values():
            layer.clear_adapter()
    result = evaluate_heldout(model, tokenizer, eval_set, batch_size, pad_id, length_normalize=length_normalize)
    figures = {"n": len(eval_set.encoded), "eval_loss": float(result["eval_loss"])}
    if "eval_accuracy" in result:
        figures["eval_accuracy"] = float(result["eval_accuracy"])
    return figures

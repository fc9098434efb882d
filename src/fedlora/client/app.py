"""A client's round, transport-free: download blob in → install → train → upload blob out.

Both engines call ``run_client``: in-process with the shared model, Flower inside its ClientApp.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from fedlora import payload
from fedlora.client.state import ClientStateStore
from fedlora.client.train import LocalTraining, train_adapter
from fedlora.lora.layer import LoRALinear, merge_update
from fedlora.lora.state import Factors, ModuleShape, flatten_factors, init_factors, unflatten_factors


def install_adapter(
    layers: Mapping[str, LoRALinear],
    factors: Factors,
    scale: float | Mapping[str, float],
    train_B: bool = True,
    train_A: bool = True,
    frame: Factors | None = None,
) -> None:
    """Put ``factors`` (module path → (B, A)) into the wrapped layers at ``scale`` (one, or per module), inside
    the fixed ``frame`` (module path → (U, V)) when given (Fed-SB)."""
    missing = set(layers) - set(factors) | (set(layers) - set(frame) if frame is not None else set())
    if missing:
        raise ValueError(f"adapter lacks modules: {sorted(missing)[:3]}")
    for name, layer in layers.items():
        B, A = factors[name]
        layer_scale = scale[name] if isinstance(scale, Mapping) else scale
        outer = frame[name] if frame is not None else None
        layer.set_adapter(B, A, layer_scale, train_B=train_B, train_A=train_A, frame=outer)


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
    state: ClientStateStore | None = None,
) -> bytes:
    """Train the adapter in ``download`` on ``examples`` and return the upload blob.

    The download holds the starting factors under "adapter." (or a ``fresh_seed`` to draw them from) and, for
    merge-into-base methods, the previous global update under "sync.": a client with its own base copy
    (``apply_base_sync``) folds it in; the in-process engine shares one base the server already updated.
    The upload holds only the factors that trained and metadata: num_examples, train_loss, tokens, steps.
    A download marked ``keep_B`` (FedSA-LoRA) carries A only: the client trains from the B in its own ``state``
    store (zeros the first time, :func:`kept_B`), saves the trained B back there for the round, and uploads A only.
    """
    tensors, meta = payload.unpack(download)
    train_B, train_A = bool(meta["train_B"]), bool(meta["train_A"])
    if apply_base_sync:
        merge_update(layers, unflatten_factors(tensors, prefix="sync."))
    if meta.get("fresh_seed") is not None:
        shapes = {name: ModuleShape(layer.out_features, layer.in_features) for name, layer in layers.items()}
        factors = init_factors(shapes, int(meta["rank"]), torch.Generator().manual_seed(int(meta["fresh_seed"])))
    elif meta.get("keep_B"):
        factors = kept_B(layers, tensors, int(meta["rank"]), state, int(meta["round"]))
    else:
        factors = unflatten_factors(tensors, prefix="adapter.") if not meta.get("framed") else {}
    frame = None
    if meta.get("framed"):  # Fed-SB: the inner B is R (r×r); the inner A, the identity, is not sent
        frame = unflatten_factors(tensors, prefix="frame.")
        for key, R in tensors.items():
            if key.startswith("adapter.") and key.endswith(".lora_B"):
                factors[key[len("adapter.") : -len(".lora_B")]] = (R, torch.eye(R.shape[1]))
    install_adapter(layers, factors, float(meta["scale"]), train_B, train_A, frame=frame)
    if meta.get("lr") is not None:  # the server's lr for this round (train.round_lr_schedule)
        training = dataclasses.replace(training, lr=float(meta["lr"]))
    result = train_adapter(model, examples, training, pad_id, seed=int(meta["seed"]))
    trained = flatten_factors(read_adapter(layers))
    if meta.get("keep_B"):  # the trained B stays here; it is saved before the upload leaves
        own = {k: v for k, v in trained.items() if k.endswith("lora_B")}
        state.save(int(meta["round"]), {**own, "num_examples": torch.tensor(len(examples), dtype=torch.int64)})
        train_B = False
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


def kept_B(
    layers: Mapping[str, LoRALinear], tensors: dict, rank: int, state: ClientStateStore | None, round_idx: int
) -> Factors:
    """The factors of a ``keep_B`` download: its A ("adapter.<module>.lora_A") with this client's own B, the newest
    one its ``state`` saved before round ``round_idx`` (zeros m×rank the first time)."""
    if state is None:
        raise ValueError("this download keeps B on the client (FedSA-LoRA), but the client has no state store")
    own = state.load(round_idx) or {}
    factors: Factors = {}
    for name, layer in layers.items():
        A = tensors[f"adapter.{name}.lora_A"]
        B = own.get(f"{name}.lora_B")
        if B is None:
            B = torch.zeros(layer.out_features, rank, dtype=A.dtype)
        elif tuple(B.shape) != (layer.out_features, rank):
            raise ValueError(
                f"{state.root}: stored {name}.lora_B has shape {tuple(B.shape)}, expected {(layer.out_features, rank)}"
            )
        factors[name] = (B, A)
    return factors


# ------------------------------------------------------------------------------------------ evaluation


def eval_blob(adapter: tuple[Factors, Mapping[str, float]] | None) -> bytes:
    """What travels to a client that evaluates the global model: the method's evaluation adapter (factors under
    "adapter." and each module's scale), or none when the (merged) base holds the whole global model."""
    if adapter is None:
        return payload.pack({}, {"adapter": False})
    factors, scales = adapter
    return payload.pack(flatten_factors(factors, prefix="adapter."), {"adapter": True, "scales": dict(scales)})


def personal_eval_blob(A: Mapping[str, torch.Tensor], scales: Mapping[str, float], rank: int) -> bytes:
    """What travels to a FedSA-LoRA client that evaluates its personalised model: the shared A per module
    ("adapter.<module>.lora_A") and the scales; the client adds its own B (``evaluate_download``)."""
    tensors = {f"adapter.{name}.lora_A": a for name, a in A.items()}
    return payload.pack(tensors, {"adapter": True, "keep_B": True, "rank": rank, "scales": dict(scales)})


def evaluate_download(
    model: nn.Module,
    layers: Mapping[str, LoRALinear],
    blob: bytes,
    tokenizer,
    eval_set,
    batch_size: int,
    pad_id: int,
    length_normalize: bool = False,
    state: ClientStateStore | None = None,
) -> dict[str, float]:
    """Install the global adapter of ``blob`` (``eval_blob``; or clear the adapters) and evaluate ``eval_set``:
    {"n": examples, "eval_loss", and "eval_accuracy" where answers are options}."""
    from fedlora.evaluation.heldout import evaluate_heldout

    tensors, meta = payload.unpack(blob)
    if meta.get("adapter"):
        scales = {str(k): float(v) for k, v in dict(meta["scales"]).items()}
        if meta.get("keep_B"):  # personalised: the shared A with this client's newest own B
            factors = kept_B(layers, tensors, int(meta["rank"]), state, round_idx=2**31)
        else:
            factors = unflatten_factors(tensors, prefix="adapter.")
        install_adapter(layers, factors, scales, train_B=False, train_A=False)
    else:
        for layer in layers.values():
            layer.clear_adapter()
    result = evaluate_heldout(model, tokenizer, eval_set, batch_size, pad_id, length_normalize=length_normalize)
    figures = {"n": len(eval_set.encoded), "eval_loss": float(result["eval_loss"])}
    if "eval_accuracy" in result:
        figures["eval_accuracy"] = float(result["eval_accuracy"])
    return figures

"""Server-side checks of one client's upload, before anything of it reaches aggregation.

An upload is a blob (``fedlora.payload``) holding the factors the client trained and its metadata. The server
knows exactly what to expect from the client's plan: one ``<module>.lora_B`` (m×r_k) per module if B trained, one
``<module>.lora_A`` (r_k×n) if A trained, in the dtype it sent, finite, and, when a bound is set, an update of
bounded norm. Anything else is rejected with a one-line reason that the round loop records as the client's
failure; nothing of a rejected upload is aggregated.

The update norm is per client, over everything it trained: ‖u‖₂ with u the concatenation of (trained − sent)
over every module's trained factors (the Frobenius norm of the client's whole factor update). It is the norm
client-level DP clips (``fedlora.privacy``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fedlora import payload
from fedlora.lora.state import Factors

if TYPE_CHECKING:  # fedlora.methods imports fedlora.privacy, which uses this module
    from fedlora.methods.base import ClientPlan

METADATA_FIELDS = ("num_examples", "train_loss", "tokens")
"""Metadata every upload carries (``fedlora.client.app.run_client``); ``train_loss`` must be finite."""


class UpdateRejected(ValueError):
    """A client's upload cannot be used; the message is the reason recorded in metrics.jsonl."""


def _shape(t: Tensor) -> str:
    return "×".join(str(s) for s in t.shape) or "scalar"


def _more(items: list[str]) -> str:
    return f" (+{len(items) - 1} more)" if len(items) > 1 else ""


def expected_keys(plan: ClientPlan) -> set[str]:
    """The tensor keys a client must upload: its trained factors, ``<module>.lora_B`` / ``<module>.lora_A``, except a
    B the client keeps (``plan.keep_B``)."""
    keys = set()
    for name in plan.factors:
        if plan.train_B and not plan.keep_B:  # a kept B stays on the client
            keys.add(f"{name}.lora_B")
        if plan.train_A:
            keys.add(f"{name}.lora_A")
    return keys


def check_tensor(key: str, value: Tensor, sent: Tensor, rank: int) -> None:
    """Raise UpdateRejected unless ``value`` has the dtype and shape of ``sent`` (rank ``rank``) and is finite."""
    if value.dtype != sent.dtype:
        raise UpdateRejected(f"{key}: dtype {value.dtype}, expected {sent.dtype}")
    if value.shape != sent.shape:
        if value.dim() == 2:  # B is m×r, A is r×n: the same m (n) but another r is a wrong rank
            rank_dim, other_dim = (1, 0) if key.endswith("lora_B") else (0, 1)
            if value.shape[other_dim] == sent.shape[other_dim] and value.shape[rank_dim] != rank:
                raise UpdateRejected(f"{key}: rank {value.shape[rank_dim]}, expected {rank} (shape {_shape(value)})")
        raise UpdateRejected(f"{key}: shape {_shape(value)}, expected {_shape(sent)}")
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        kind = "NaN" if bool(torch.isnan(value).any()) else "Inf"
        raise UpdateRejected(f"{key}: {kind} in {int((~finite).sum())} of {value.numel()} entries")


def update_norm(sent: Factors, trained: Factors) -> float:
    """‖trained − sent‖₂ over every module's B and A together (float64 sum of squares)."""
    total = 0.0
    for name, (sent_B, sent_A) in sent.items():
        B, A = trained[name]
        for new, old in ((B, sent_B), (A, sent_A)):
            total += float((new.double() - old.double()).square().sum())
    return math.sqrt(total)


def check_metadata(meta: dict) -> None:
    missing = [field for field in METADATA_FIELDS if field not in meta]
    if missing:
        raise UpdateRejected(f"metadata lacks {', '.join(missing)}")
    try:
        loss = float(meta["train_loss"])
        int(meta["num_examples"]), int(meta["tokens"])
    except (TypeError, ValueError):
        raise UpdateRejected("metadata: num_examples, tokens and train_loss must be numbers") from None
    if not math.isfinite(loss):
        raise UpdateRejected(f"train_loss is {loss}")


def read_upload(plan: ClientPlan, blob: bytes | None, max_update_norm: float | None = None) -> tuple[Factors, dict]:
    """The client's factors (untrained ones taken from what it was sent) and its metadata, all checked.

    Raises UpdateRejected (a one-line reason) for an empty, truncated or unparsable blob, missing or unexpected
    keys, a wrong dtype, shape or rank, NaN/Inf, bad metadata, or an update norm above ``max_update_norm``.
    Trained factors are the blob's own (fresh) tensors; untrained ones are the plan's (not copied).
    """
    if not blob:
        raise UpdateRejected("empty upload (the client returned nothing)")
    try:
        tensors, meta = payload.unpack(blob)
    except Exception as err:  # noqa: BLE001 - any parse failure is the client's fault, reported as such
        raise UpdateRejected(f"unreadable upload ({len(blob)} bytes): {type(err).__name__}") from None
    expected = expected_keys(plan)
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise UpdateRejected(f"unexpected key {unexpected[0]}" + _more(unexpected))
    missing = sorted(expected - set(tensors))
    if missing:
        raise UpdateRejected(f"missing key {missing[0]}" + _more(missing))
    check_metadata(meta)
    factors: Factors = {}
    for name, (sent_B, sent_A) in plan.factors.items():
        B = tensors.get(f"{name}.lora_B", sent_B)
        A = tensors.get(f"{name}.lora_A", sent_A)
        check_tensor(f"{name}.lora_B", B, sent_B, plan.rank)
        check_tensor(f"{name}.lora_A", A, sent_A, plan.rank)
        factors[name] = (B, A)
    if max_update_norm is not None:
        norm = update_norm(plan.factors, factors)
        if norm > max_update_norm:
            raise UpdateRejected(f"update norm {norm:.4g} exceeds faults.max_update_norm={max_update_norm:g}")
    return factors, meta

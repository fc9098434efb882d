"""Message size limits on Flower: the largest payload a round can send, known before the run starts.

``flower.max_message_mb`` bounds every fedlora blob one Flower message carries (a download, a catch-up record, an
upload). Flower 1.41 has no setting for it: it carries an Array in 5 MB chunks (``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``)
and refuses protobuf frames over 2 GiB, but otherwise forwards whatever it is given. So fedlora checks it itself:

- before the run (``check_message_limit``, called by ``run_on_grid`` before any node is contacted): a bound on the
  largest download and upload any round can produce, from the module shapes, the client budgets and the method;
- on every message: the engine refuses to send a download or catch-up over the limit and to accept an upload
  over it, and a node refuses to send one (``blob_over_limit``).

A blob is a safetensors file of float32 factors (``fedlora.payload``): per LoRA module of shape m×n at rank k,
(m + n)·k·4 bytes, plus a JSON header. The bounds below count the header generously (``HEADER_BYTES_PER_TENSOR``
per tensor beyond its name), so they are upper bounds; the tests check them against real blobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedlora.errors import ConfigError

FLOAT_BYTES = 4
"""Factors travel as float32 (``fedlora.lora.state`` makes them so)."""
HEADER_BYTES_PER_TENSOR = 128
"""safetensors header bytes per tensor besides its name: dtype, shape and offsets as JSON (≈ 70 here) + slack."""
HEADER_BYTES_FIXED = 4096
"""The header's length field, the round's settings as metadata, and padding."""
MB = 1_000_000


@dataclass(frozen=True)
class PayloadBound:
    """Upper bounds in bytes of one client's download and upload blobs in any round, and what dominates them."""

    download: int
    upload: int
    download_what: str
    upload_what: str


def _factor_bytes(shapes: Mapping[str, tuple[int, int]], rank_of: Mapping[str, int], prefix: str) -> int:
    """Bytes of the blob part holding B (m×k) and A (k×n) of every module at rank ``rank_of[module]``."""
    total = 0
    for name, (m, n) in shapes.items():
        k = rank_of[name]
        total += (m + n) * k * FLOAT_BYTES
        total += 2 * HEADER_BYTES_PER_TENSOR + len(f"{prefix}{name}.lora_B") + len(f"{prefix}{name}.lora_A")
    return total


def merges_into_base(config) -> bool:
    """FLoRA and FLoRIST v1: fresh adapters from a seed, the previous round's update sent as "sync."."""
    return config.method == "flora" or (config.method == "florist" and config.florist.handoff == "merge")


def payload_bound(config, shapes: Mapping[str, tuple[int, int]], budgets: Sequence[int]) -> PayloadBound:
    """The largest download and upload blob of any client in any round of ``config``.

    ``shapes``: LoRA module name → (out_features m, in_features n); ``budgets``: each client's rank k_i (what
    ``fedlora.setup.client_budgets`` gives). A client trains and uploads its rank-k_i factors (FedIT/FFA: lora.rank).
    Its download holds those factors, except for the merge-into-base methods, whose fresh adapters come from a seed;
    they send the previous round's base update instead, of rank R = Σ r_k over a round's participants (FLoRA), at
    most min(R, m, n) per module (FLoRIST). At most ``clients_per_round`` participate (uniform sampling), or every
    client (independent sampling), so R ≤ the sum of that many largest budgets.
    """
    k_max = max(budgets)
    at = {name: k_max for name in shapes}
    upload = HEADER_BYTES_FIXED + _factor_bytes(shapes, at, "")
    upload_what = f"rank-{k_max} factors of {len(shapes)} modules"
    if not merges_into_base(config):
        download = HEADER_BYTES_FIXED + _factor_bytes(shapes, at, "adapter.")
        return PayloadBound(download, upload, upload_what, upload_what)
    per_round = config.partition.num_clients
    if config.sampling.scheme == "uniform":
        per_round = config.sampling.clients_per_round
    stacked = sum(sorted(budgets, reverse=True)[:per_round])
    if config.method == "flora":
        sync_rank = {name: stacked for name in shapes}
    else:
        sync_rank = {name: min(stacked, m, n) for name, (m, n) in shapes.items()}
    download = HEADER_BYTES_FIXED + _factor_bytes(shapes, sync_rank, "sync.")
    what = f"the previous round's base update, rank up to {max(sync_rank.values())} ({per_round} clients stacked)"
    return PayloadBound(download, upload, what, upload_what)


def limit_bytes(config) -> int:
    """``flower.max_message_mb`` in bytes."""
    return int(config.flower.max_message_mb * MB)


def check_message_limit(config, shapes: Mapping[str, tuple[int, int]], budgets: Sequence[int]) -> PayloadBound:
    """Raise ConfigError (before the run starts) when a round could send a blob over ``flower.max_message_mb``."""
    bound = payload_bound(config, shapes, budgets)
    limit = config.flower.max_message_mb
    for direction, size, what in (
        ("download", bound.download, bound.download_what),
        ("upload", bound.upload, bound.upload_what),
    ):
        if size > limit_bytes(config):
            raise ConfigError(
                f"flower.max_message_mb: a {config.method} {direction} can reach {size / MB:.3g} MB ({what}), over "
                f"the limit of {limit:g} MB; raise flower.max_message_mb or lower lora.rank / the budgets"
            )
    return bound


def blob_over_limit(what: str, size: int, max_message_mb: float | None) -> str | None:
    """The one-line complaint when a ``size``-byte blob is over ``max_message_mb`` (else None; None: no limit)."""
    if max_message_mb is None or size <= int(max_message_mb * MB):
        return None
    return f"{what} of {size / MB:.3g} MB is over flower.max_message_mb={max_message_mb:g}"

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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedlora.errors import ConfigError
from fedlora.methods import PayloadContext

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


def _blob_bytes(tensors: Mapping[str, tuple[int, ...]]) -> int:
    """Upper bound of a blob holding these float32 tensors (name → shape): data, header per tensor, fixed header."""
    total = HEADER_BYTES_FIXED
    for name, shape in tensors.items():
        total += math.prod(shape) * FLOAT_BYTES + HEADER_BYTES_PER_TENSOR + len(name)
    return total


def payload_bound(config, shapes: Mapping[str, tuple[int, int]], budgets: Sequence[int]) -> PayloadBound:
    """The largest download and upload blob of any client in any round of ``config``.

    ``shapes``: LoRA module name → (out_features m, in_features n); ``budgets``: each client's rank k_i (what
    ``fedlora.setup.client_budgets`` gives). The method's registry entry (``MethodSpec.payload``) names the tensors
    of its largest blobs: e.g. a client's rank-k_i factors up and down, or for the merge-into-base methods (FLoRA,
    FLoRIST v1), whose fresh adapters come from a seed, the previous round's base update down, of rank
    R = Σ r_k over a round's participants (FLoRA), at most min(R, m, n) per module (FLoRIST). At most
    ``clients_per_round`` participate (uniform sampling), or every client (independent sampling).
    """
    per_round = config.partition.num_clients
    if config.sampling.scheme == "uniform":
        per_round = config.sampling.clients_per_round
    context = PayloadContext(
        shapes={name: (int(m), int(n)) for name, (m, n) in shapes.items()},
        budgets=list(budgets),
        rank=config.lora.rank,
        per_round=per_round,
        options=config.method_options(),
    )
    sizes = config.spec.payload(context)
    return PayloadBound(_blob_bytes(sizes.download), _blob_bytes(sizes.upload), sizes.download_what, sizes.upload_what)


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

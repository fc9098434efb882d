"""The wire format of what travels between server and clients: safetensors bytes with string metadata.

Every byte count fedlora reports (``bytes_down``, ``bytes_up``) is ``len()`` of a blob made here, so the
numbers are exact for whatever engine carries the blob.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

from safetensors.torch import load, save
from torch import Tensor


def pack(tensors: Mapping[str, Tensor], metadata: Mapping[str, object] | None = None) -> bytes:
    """Serialise tensors (made contiguous) and JSON-encodable metadata into one safetensors blob."""
    meta = {key: json.dumps(value) for key, value in (metadata or {}).items()}
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)


def unpack(blob: bytes) -> tuple[dict[str, Tensor], dict[str, object]]:
    """Inverse of ``pack``: (tensors, metadata)."""
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    meta = {key: json.loads(value) for key, value in header.get("__metadata__", {}).items()}
    return load(blob), meta


def tensor_bytes(tensors: Mapping[str, Tensor]) -> int:
    """Raw tensor data bytes (no header): Σ numel · element size."""
    return sum(t.numel() * t.element_size() for t in tensors.values())

"""Test-only: an in-process engine that keeps every (client, download, upload) blob a run carried, and the exact
safetensors size of a blob computed independently of ``fedlora.payload``."""

from __future__ import annotations

import json
import struct

from fedlora.engines.inprocess import InProcessEngine

CARRIED: list[tuple[int, bytes, bytes]] = []


class CapturingEngine(InProcessEngine):
    def run_client(self, client_id: int, download: bytes) -> bytes:
        upload = super().run_client(client_id, download)
        CARRIED.append((client_id, download, upload))
        return upload


def safetensors_size(tensors: dict[str, tuple[int, ...]], metadata: dict[str, str], element_bytes: int = 4) -> int:
    """len() of a safetensors blob of float tensors ``name → shape`` with string metadata, from the format alone:
    8 bytes of header length, the compact JSON header (metadata first, tensors by name with their data offsets)
    padded with spaces to a multiple of 8, then the raw data."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for name in sorted(tensors):
        shape = tensors[name]
        size = element_bytes
        for d in shape:
            size *= d
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return 8 + -(-len(text) // 8) * 8 + offset


def raw_metadata(blob: bytes) -> dict[str, str]:
    """The string metadata of a safetensors blob, read from its header without fedlora's reader."""
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]).get("__metadata__", {})

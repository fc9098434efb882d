"""Client state that stays with the client between rounds (FedSA-LoRA's own B), crash-safe and round-versioned.

A client's store is a folder of ``round-NNNNNN.safetensors`` files, each written atomically (temporary file,
fsync, rename: ``fedlora.rundir.atomic_write_bytes``). Round t reads the newest state written BEFORE round t, so a
round that is run again (a server resuming after a crash, a node restarted mid-round) starts from exactly the
state it started from the first time, whatever the crash left behind; the rerun overwrites round t's file with
the same result. The two newest files are kept.

In-process the stores live in the run folder (``checkpoint/clients/<id>/``); on Flower in the node's own state
folder. Nothing in a store ever travels.
"""

from __future__ import annotations

import re
from pathlib import Path

from safetensors.torch import load_file, save
from torch import Tensor

from fedlora.rundir import atomic_write_bytes

_FILE = re.compile(r"^round-(\d{6})\.safetensors$")
KEEP = 2
"""State files kept per client: the newest two (the one a rerun of the last round reads, and that round's own)."""


class ClientStateStore:
    """One client's round-versioned tensors in ``root`` (created on first save)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def rounds(self) -> list[int]:
        """The rounds with a saved state, ascending."""
        if not self.root.is_dir():
            return []
        found = (_FILE.match(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, before_round: int) -> dict[str, Tensor] | None:
        """The newest state saved by a round < ``before_round`` (None: the client has none yet)."""
        older = [r for r in self.rounds() if r < before_round]
        if not older:
            return None
        path = self._path(older[-1])
        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - a damaged state file is named, not half-used
            raise ValueError(f"{path}: unreadable client state ({type(err).__name__})") from None

    def latest(self) -> dict[str, Tensor] | None:
        """The newest saved state (None: none yet)."""
        rounds = self.rounds()
        return self.load(rounds[-1] + 1) if rounds else None

    def save(self, round_idx: int, tensors: dict[str, Tensor]) -> None:
        """Write round ``round_idx``'s state atomically, then drop all but the newest ``KEEP`` files."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._path(round_idx), save({k: v.contiguous() for k, v in tensors.items()}))
        for old in self.rounds()[:-KEEP]:
            self._path(old).unlink(missing_ok=True)

    def _path(self, round_idx: int) -> Path:
        return self.root / f"round-{round_idx:06d}.safetensors"


def client_store(root: Path, client_id: int) -> ClientStateStore:
    """Client ``client_id``'s store under ``root`` (``root/<id>/``)."""
    return ClientStateStore(Path(root) / str(int(client_id)))

"""Compute slots shared by the SuperNodes of one machine.

A federation's nodes normally each have a machine of their own. When several SuperNodes run on one machine (a lab
box standing in for a fleet, a loopback test, a benchmark), the clients a round samples all train at once and
oversubscribe its cores: four SmolLM2 clients with 2 torch threads each on 2 cores took 261–267 s per round, one
after another (one slot) 80–92 s (docs/benchmarks.md, "Deployed SmolLM2 rounds"). Node config ``host-slots=N``
caps how many of the machine's nodes train or evaluate at the same time, as Ray's CPU resources do in a
simulation: a handler takes one of ``N`` slots (an exclusive ``flock`` on one of ``N`` lock files in a folder
every node of the machine shares) and waits while all are taken. The lock belongs to the process that runs the
handler, so a node that dies frees its slot. Without ``host-slots`` nothing is shared or waited for.

Slot folder: node config ``slots-dir``, else ``$TMPDIR/fedlora-slots-<uid>/`` (one per machine and user).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

POLL_S = 0.05
"""How often a waiting node tries the slots again (seconds)."""


def slot_count(node_config) -> int | None:
    """The node config's ``host-slots`` (None when unset); raises ValueError with one line when it is not a
    positive integer."""
    raw = node_config.get("host-slots")
    if raw is None or str(raw).strip() == "":
        return None
    try:
        count = int(str(raw))
    except ValueError:
        raise ValueError(f"node config host-slots={raw!r} is not an integer") from None
    if count < 1:
        raise ValueError(f"node config host-slots={raw!r} must be >= 1")
    return count


def slots_folder(node_config) -> Path:
    """Where the machine's slot locks are: node config ``slots-dir``, else ``$TMPDIR/fedlora-slots-<uid>``."""
    explicit = node_config.get("slots-dir")
    if explicit:
        return Path(str(explicit)).expanduser()
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"fedlora-slots-{os.getuid()}"


@contextlib.contextmanager
def host_slot(count: int | None, folder: Path, poll_s: float = POLL_S) -> Iterator[int | None]:
    """Hold one of ``count`` slots in ``folder`` for the ``with`` block (waits while all are held by other
    processes or threads); yields the slot's index, or None at once when ``count`` is None."""
    if count is None:
        yield None
        return
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    while True:
        for index in range(count):
            handle = (folder / f"slot-{index}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(poll_s)

"""Named points where a crash test kills the process, to show that a run survives SIGKILL at any of them.

``FEDLORA_CRASH_AT="NAME"`` (or ``"NAME@N"``: the N-th time the point is reached, 1-based) makes the process
SIGKILL itself there: no cleanup, no flush, no ``finally`` — what a power cut or the OOM killer does. Unset
(always, outside tests) a point is one environment lookup. The points a run passes through, in order:

``round:trained`` (the round's clients are done, nothing aggregated), ``metrics:appended`` (the round's record is
in metrics.jsonl, its checkpoint is not written), ``checkpoint:state-tmp`` (the new state is in a temporary file),
``checkpoint:state-renamed`` (the state file is in place, latest.json still names the previous one),
``write:<file name>`` (any atomic write, after its temporary file is complete and before the rename: e.g.
``write:latest.json``, ``write:adapter_model.safetensors``, ``write:summary.json``), ``dir:<name>`` (a folder
written in full under a temporary name, before its rename: ``dir:base``).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "FEDLORA_CRASH_AT"
_reached: Counter[str] = Counter()


def reached(name: str) -> None:
    """Mark that the run reached point ``name``; SIGKILL this process if ``FEDLORA_CRASH_AT`` names it (and this
    is the N-th time)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)

"""TensorBoard scalars of a run (``log.tensorboard = true``), written to RUN_DIR/tensorboard/.

Every number of each round's metrics.jsonl record is a scalar under the same name (``train_loss``,
``eval_loss``, ``eval_accuracy``, ``bytes_up``, ``bytes_down`` in bytes, ``sim_round_s``, ``sim_time_s``
(cumulative) and ``wall_s`` in seconds, method facts such as ``global_rank_mean``) at step = round; lists
(participants, ranks, per-client values) are left out. The evaluation before training is step 0 of
``eval_loss`` / ``eval_accuracy``. View with ``tensorboard --logdir RUN_DIR/tensorboard``.

A resumed run starts a new event file that purges the steps from its first round on (TensorBoard's
``purge_step``), so the rounds it recomputes are not shown twice. Needs the ``tensorboard`` package
(``pip install tensorboard``, or the ``fedlora[tensorboard]`` extra).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedlora.errors import ConfigError

LOG_DIR = "tensorboard"


def scalars(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) of every number in ``record`` (nested dicts as ``key/sub``); bools, None and lists skipped."""
    for key, value in record.items():
        if isinstance(value, dict):
            yield from scalars(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            yield f"{prefix}{key}", float(value)


class TensorBoardReporter:
    """A federation Reporter that writes each round's numbers to RUN_DIR/tensorboard/; ``close()`` at the end."""

    def __init__(self, run_dir: Path) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(
                "log.tensorboard: the tensorboard package is not installed; pip install tensorboard "
                "(or pip install 'fedlora[tensorboard]')"
            )
        self.log_dir = Path(run_dir) / LOG_DIR
        self._writer = None

    def _open(self, purge_step: int):
        """The writer, created on first use: a new event file; events at steps ≥ ``purge_step`` are dropped."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        return self._writer

    def run_started(self, config, setup, start_round: int) -> None:
        # a fresh run (round 1) hides events of an earlier attempt in this folder; a resumed one those it redoes
        self._open(0 if start_round <= 1 else start_round)

    def round_started(self, round_idx: int, participants: list[int]) -> None: ...

    def client_done(self, round_idx: int, client_id: int, rank: int, train_loss: float) -> None: ...

    def round_done(self, record: dict) -> None:
        writer = self._open(int(record["round"]))
        step = int(record["round"])
        for tag, value in scalars(record):
            if tag != "round":
                writer.add_scalar(tag, value, global_step=step)
        writer.flush()  # a round is minutes apart on real models: show it now

    def evaluated(self, label: str, result: dict) -> None:
        """The evaluation before training (the only one federation reports this way) at step 0."""
        writer = self._open(0)
        for tag, value in scalars(result):
            writer.add_scalar(tag, value, global_step=0)
        writer.flush()

    def close(self) -> None:
        """Flush and close the event file (safe to call more than once, or when nothing was written)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

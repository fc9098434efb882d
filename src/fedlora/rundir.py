"""The run folder: resolved config, metrics.jsonl, summary.json, adapter/, checkpoint/, base/.

Writes that replace a file go through a temporary file, fsync and rename, so a crash leaves either the old
or the new file, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from fedlora import crashpoints
from fedlora.config import CONFIG_FILE
from fedlora.errors import CheckpointError

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoint"
LATEST = "latest.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file, fsync and rename: a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    crashpoints.reached(f"write:{path.name}")
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_dir(path: Path, write: Callable[[Path], None]) -> None:
    """Fill a folder with ``write(tmp_dir)`` under a temporary name, fsync its files, then rename it to ``path``
    (replacing a previous one): a crash leaves no half-written ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    for file in tmp.rglob("*"):
        if file.is_file():
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
    _fsync_dir(tmp)
    crashpoints.reached(f"dir:{path.name}")
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_config(run_dir: Path, text: str) -> None:
    """Write config.resolved.toml, unless it already holds ``text`` (a resume then leaves it untouched)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one round's record to metrics.jsonl and fsync it."""
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    crashpoints.reached("metrics:appended")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a last line torn by a crash mid-append is dropped."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):  # only the last line can be torn; anything earlier is corruption
                raise CheckpointError(f"{path}: line {number} is not JSON") from None
    return records


def keep_metrics_through(run_dir: Path, last_round: int) -> list[dict[str, Any]]:
    """On resume: keep the records of rounds the checkpoint covers (later ones are recomputed identically)."""
    records = [r for r in read_metrics(run_dir) if r["round"] <= last_round]
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))
    return records


def save_checkpoint(run_dir: Path, round_idx: int, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """checkpoint/round-NNNNNN.safetensors, then latest.json pointing at it (the commit point)."""
    ckpt = run_dir / CHECKPOINT_DIR
    ckpt.mkdir(exist_ok=True)
    name = f"round-{round_idx:06d}.safetensors"
    tmp = ckpt / f".{name}.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    crashpoints.reached("checkpoint:state-tmp")
    os.replace(tmp, ckpt / name)
    _fsync_dir(ckpt)
    crashpoints.reached("checkpoint:state-renamed")
    write_json(ckpt / LATEST, {"round": round_idx, "state": name, **meta})
    for old in ckpt.glob("round-*.safetensors"):
        if old.name != name:
            old.unlink()


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a round's checkpoint was committed (latest.json is written last, atomically)."""
    return (run_dir / CHECKPOINT_DIR / LATEST).is_file()


def load_checkpoint(run_dir: Path) -> tuple[int, dict[str, Tensor], dict[str, Any]]:
    """(last completed round, state tensors, meta) from the run folder's checkpoint."""
    latest = run_dir / CHECKPOINT_DIR / LATEST
    if not latest.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from ({latest} is missing)")
    try:
        meta = json.loads(latest.read_text(encoding="utf-8"))
        tensors = load_file(str(run_dir / CHECKPOINT_DIR / meta["state"]))
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{latest}: unreadable checkpoint: {err}") from None
    return int(meta["round"]), tensors, meta

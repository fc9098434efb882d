"""A seeded held-out split, optionally stratified by a column (string labels are fine)."""

from __future__ import annotations

from collections.abc import Hashable

import datasets
import numpy as np

from fedlora.errors import DataError

__all__ = ["eval_count", "holdout_split"]


def eval_count(n: int, eval_size: int | float) -> int:
    """Number of held-out examples: an int is a count, a float in (0, 1) a fraction of ``n`` (rounded)."""
    if isinstance(eval_size, bool) or not isinstance(eval_size, int | float):
        raise DataError(f"eval_size must be a count (int) or a fraction in (0, 1), got {eval_size!r}")
    if isinstance(eval_size, float):
        if not 0.0 < eval_size < 1.0:
            raise DataError(f"eval_size {eval_size!r}: a fraction must lie in (0, 1); use an int for a count")
        count = int(round(eval_size * n))
    else:
        count = eval_size
    if count <= 0:
        raise DataError(f"eval_size {eval_size!r} gives {count} held-out examples out of {n}; need at least 1")
    if count >= n:
        raise DataError(
            f"too few examples for the held-out split: eval_size {eval_size!r} needs {count} of {n} examples "
            "and must leave at least one for training"
        )
    return count


def holdout_split(
    dataset: datasets.Dataset, eval_size: int | float, seed: int, stratify_by: str | None = None
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split ``dataset`` into ``(train, eval)``: disjoint, covering it, deterministic per ``seed``.

    With ``stratify_by``, each value of that column gets its share of the eval set (largest-remainder
    rounding, ties broken at random). Both parts keep the dataset's original row order.
    """
    n = len(dataset)
    count = eval_count(n, eval_size)
    rng = np.random.default_rng(seed)
    if stratify_by is None:
        eval_idx = rng.permutation(n)[:count]
    else:
        if stratify_by not in dataset.column_names:
            raise DataError(
                f"stratify_by column {stratify_by!r} not in dataset (columns: {', '.join(dataset.column_names)})"
            )
        eval_idx = _stratified(dataset[stratify_by], count, rng)
    mask = np.zeros(n, dtype=bool)
    mask[eval_idx] = True
    train = dataset.select(np.flatnonzero(~mask).tolist())
    held = dataset.select(np.flatnonzero(mask).tolist())
    return train, held


def _stratified(values: list, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices drawn per group in proportion to group size."""
    groups: dict[Hashable, list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault(v, []).append(i)
    members = list(groups.values())  # order of first appearance: deterministic for a given dataset
    sizes = np.array([len(m) for m in members], dtype=float)
    quota = sizes * count / sizes.sum()
    take = np.floor(quota).astype(int)
    short = count - int(take.sum())
    if short:
        remainder = quota - take
        tiebreak = rng.random(len(members))
        order = np.lexsort((tiebreak, -remainder))
        take[order[:short]] += 1
    picked = [rng.permutation(np.asarray(m))[:k] for m, k in zip(members, take, strict=True) if k]
    return np.concatenate(picked) if picked else np.zeros(0, dtype=int)

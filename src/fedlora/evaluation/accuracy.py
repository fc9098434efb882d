"""Accuracy figures shared by the decoder and encoder evaluations (no model code: plain lists in, numbers out)."""

from __future__ import annotations

from collections import defaultdict


def task_accuracy(tasks: list[str], predicted: list[int], gold: list[int]) -> dict[str, float]:
    """Accuracy per task, tasks in sorted order: ``tasks[i]`` names example i's task, ``predicted[i]`` and
    ``gold[i]`` its chosen and correct option."""
    hits: dict[str, list[int]] = defaultdict(list)
    for task, p, g in zip(tasks, predicted, gold, strict=True):
        hits[task].append(int(p == g))
    return {task: sum(h) / len(h) for task, h in sorted(hits.items())}

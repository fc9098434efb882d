"""A client's own data: one file read with the run's template, checked against it, and split into the rows the
client trains on and its own held-out rows (for federated evaluation).

In-process runs with ``partition.scheme = "files"`` and a Flower node holding its own data (node config ``data``)
make the same call with the same arguments, so they get the same rows in the same order: the in-process twin of
a federation of nodes is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedlora.data.sources import load_source
from fedlora.data.split import holdout_split
from fedlora.data.templates import ClassificationTemplate, Template, validate_columns
from fedlora.errors import DataError

__all__ = ["ClientData", "read_client_data"]


@dataclass(frozen=True)
class ClientData:
    """A client's raw rows: what it trains on, and what it evaluates the global model on (may be empty)."""

    train: list[dict]
    held_out: list[dict]


def read_client_data(
    path: str,
    template: Template,
    *,
    what: str,
    task: str = "classification",
    eval_path: str | None = None,
    holdout: int | float | None = None,
    seed: int = 0,
) -> ClientData:
    """Read ``path`` (any file source ``load_source`` reads), check it fits ``template`` (its columns, and for
    classification its labels), and split it.

    ``eval_path``: the client's own held-out file (checked the same way; the whole data file then trains).
    Otherwise ``holdout`` (a fraction in (0, 1) or a count; None: nothing held out) rows are held out, seeded by
    ``seed`` and stratified by label for classification. Raises DataError naming ``what`` (e.g. "client 2 data
    /x/c.jsonl") and the bad column, label or count, on one line.
    """
    rows = _checked(path, template, what, task)
    if eval_path is not None:
        held = _checked(eval_path, template, f"{what}, held-out file", task)
        return ClientData(list(rows), list(held))
    if holdout is None:
        return ClientData(list(rows), [])
    stratify = template.label_field if isinstance(template, ClassificationTemplate) else None
    try:
        train, held = holdout_split(rows, holdout, seed=seed, stratify_by=stratify)
    except DataError as err:
        raise DataError(f"{what}: eval.client_holdout: {err}") from None
    return ClientData(list(train), list(held))


def _checked(path: str, template: Template, what: str, task: str):
    try:
        dataset = load_source(path, kind=task)
        validate_columns(dataset, template, what)
    except DataError as err:
        text = str(err).removeprefix(f"data source {what}: ")
        raise DataError(text if text.startswith(what) else f"{what}: {text}") from None
    return dataset

"""Splitting a training set over federated clients with flwr-datasets' partitioners.

Schemes:

* ``"iid"``: the dataset is shuffled with ``seed`` and cut into ``num_clients`` contiguous shards of equal
  size (± 1) by ``IidPartitioner`` (which itself has no seed).
* ``"dirichlet"``: ``DirichletPartitioner`` over the ``key`` column (string labels work as they are) with
  concentration ``alpha``; small alpha → each client sees few classes. It redraws (up to 10 times) while a
  client has fewer than ``min_partition_size`` examples, then fails with a :class:`DataError`.
* ``"natural"``: ``NaturalIdPartitioner`` on the ``key`` column (e.g. a task or user id): one client per
  distinct id, clients ordered by sorted id. ``num_clients`` must equal the number of distinct ids; grouping
  several ids per client is deliberately not done here (it would hide which client holds which id).
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import datasets
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

from fedlora.errors import DataError

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "natural")
MAX_DIRICHLET_TRIES = 10  # fixed inside flwr-datasets' DirichletPartitioner
_HINTS = {
    "iid": "use fewer clients or a smaller min_partition_size",
    "dirichlet": "use a larger alpha or fewer clients",
    "natural": "drop rows of that id or use a smaller min_partition_size",
}

__all__ = ["SCHEMES", "describe_partitions", "partition_dataset"]


def partition_dataset(
    dataset: datasets.Dataset,
    num_clients: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    key: str = "label",
    seed: int = 0,
    min_partition_size: int = 1,
) -> list[datasets.Dataset]:
    """One dataset per client; the partitions are disjoint and together hold every row exactly once.

    Deterministic for a given dataset, scheme, options and ``seed``. Raises :class:`DataError` for an
    unknown scheme, a missing ``key`` column, more clients than rows, or a client with fewer than
    ``min_partition_size`` (at least 1) examples.
    """
    if scheme not in SCHEMES:
        raise DataError(f"partition scheme {scheme!r} unknown; expected one of {', '.join(SCHEMES)}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise DataError(f"num_clients must be a positive integer, got {num_clients!r}")
    n = len(dataset)
    if num_clients > n:
        raise DataError(
            f"partition.num_clients: cannot split {n} training examples over {num_clients} clients (fewer examples "
            "than clients); use fewer clients or more data"
        )
    min_size = max(1, int(min_partition_size))

    if scheme == "iid":
        partitioner: Any = IidPartitioner(num_partitions=num_clients)
        partitioner.dataset = dataset.shuffle(seed=seed, keep_in_memory=True)
    else:
        _check_key(dataset, key, scheme)
        if scheme == "dirichlet":
            if not alpha > 0:
                raise DataError(f"dirichlet alpha must be > 0, got {alpha!r}")
            partitioner = DirichletPartitioner(
                num_partitions=num_clients,
                partition_by=key,
                alpha=float(alpha),
                min_partition_size=min_size,
                self_balancing=False,
                shuffle=True,
                seed=seed,
            )
        else:
            ids = dataset.unique(key)
            if len(ids) != num_clients:
                raise DataError(
                    f"partition.num_clients: natural partitioning by column {key!r} finds {len(ids)} distinct ids, "
                    f"so num_clients must be {len(ids)} (got {num_clients})"
                )
            partitioner = NaturalIdPartitioner(partition_by=key)
        partitioner.dataset = dataset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the Dirichlet partitioner warns on each redraw
            parts = [partitioner.load_partition(i) for i in range(num_clients)]
    except ValueError as exc:
        if scheme != "dirichlet":
            raise DataError(f"{scheme} partitioning failed: {exc}") from None
        raise _dirichlet_failure(dataset, num_clients, key, alpha, seed, min_size) from None

    sizes = [len(part) for part in parts]
    smallest = min(range(num_clients), key=lambda i: sizes[i])
    if sizes[smallest] < min_size:
        what = "is empty" if sizes[smallest] == 0 else f"has {sizes[smallest]} examples, fewer than {min_size}"
        natural = f" (id {partitioner.partition_id_to_natural_id[smallest]!r})" if scheme == "natural" else ""
        raise DataError(
            f"partition.min_partition_size: client {smallest}{natural} partition {what} ({scheme}, "
            f"{num_clients} clients); {_HINTS[scheme]}"
        )
    return parts


def _check_key(dataset: datasets.Dataset, key: str, scheme: str) -> None:
    if key not in dataset.column_names:
        raise DataError(
            f"partition.key: {scheme} partitioning by column {key!r}, which the data lacks (columns: "
            f"{', '.join(dataset.column_names)})"
        )
    if any(v is None for v in dataset.unique(key)):
        raise DataError(f"partition.key: {scheme} partitioning by column {key!r}, which has missing values")


def _dirichlet_failure(
    dataset: datasets.Dataset, num_clients: int, key: str, alpha: float, seed: int, min_size: int
) -> DataError:
    """Name the smallest client of the first draw (same seed) when every redraw was too small."""
    probe = DirichletPartitioner(
        num_partitions=num_clients, partition_by=key, alpha=float(alpha), min_partition_size=0, seed=seed
    )
    probe.dataset = dataset
    sizes = [len(probe.load_partition(i)) for i in range(num_clients)]
    worst = min(range(num_clients), key=lambda i: sizes[i])
    return DataError(
        f"partition.alpha: dirichlet partitioning over {key!r} (alpha={alpha}, {num_clients} clients): each of "
        f"{MAX_DIRICHLET_TRIES + 1} draws left a client below min_partition_size {min_size} (first draw: "
        f"client {worst} got {sizes[worst]} examples); use a larger alpha or fewer clients"
    )


def describe_partitions(parts: list[datasets.Dataset], key: str) -> list[dict[str, Any]]:
    """Per client ``{"client": i, "size": n, "label_counts": {value: count}}``, values as sorted strings."""
    out = []
    for i, part in enumerate(parts):
        if key not in part.column_names:
            raise DataError(f"client {i} partition has no column {key!r} (columns: {', '.join(part.column_names)})")
        counts = Counter(str(v) for v in part[key])
        out.append({"client": i, "size": len(part), "label_counts": dict(sorted(counts.items()))})
    return out

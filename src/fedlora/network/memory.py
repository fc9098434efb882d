"""A client's memory cap decides its base precision and its largest rank together (pure; no torch, no I/O).

Inputs are measured footprints: the peak resident memory (MB) of one client step with the base held at precision
p and a LoRA of rank k, at a few ranks per precision (``fedlora.client.footprint``). Between measured ranks the
footprint is interpolated linearly (the LoRA factors, their gradients and Adam moments, and the rank-k activations
all grow linearly in k); beyond the largest measured rank it is not extrapolated.

The rule, for a client with cap M: among the precisions whose footprint at rank ``k_min`` fits M, take the one
that allows the LARGEST rank (at most ``rank``), and among those the most faithful base (fp32, then bf16, int8,
nf4). Since the base dominates the footprint, this is in practice "the most faithful precision whose client step
fits at full rank, else the next one down"; a smaller rank is only chosen when no precision fits the full rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedlora.errors import ConfigError

FIDELITY = ("fp32", "bf16", "int8", "nf4")
"""Precisions from the most faithful base to the smallest."""


class MemoryCapError(ConfigError):
    """A client whose memory cap fits no precision at the smallest allowed rank."""


@dataclass(frozen=True)
class MemoryChoice:
    precision: str
    max_rank: int
    footprint_mb: float
    """The (interpolated) peak memory of a client step at this precision and max_rank."""


def footprint_at(points: Mapping[int, float], k: int) -> float | None:
    """Peak MB at rank ``k`` from measured {rank: MB}, linear between measured ranks; None beyond them."""
    ranks = sorted(points)
    if not ranks or k < ranks[0] or k > ranks[-1]:
        return None
    for lo, hi in zip(ranks, ranks[1:], strict=False):
        if lo <= k <= hi:
            t = (k - lo) / (hi - lo)
            return points[lo] + t * (points[hi] - points[lo])
    return points[ranks[-1]]  # a single measured rank, equal to k


def choose(
    caps_mb: Sequence[float],
    footprints: Mapping[str, Mapping[int, float]],
    k_min: int,
    rank: int,
    setting: str = "fleet.memory_mb",
) -> list[MemoryChoice]:
    """One :class:`MemoryChoice` per client (see the module docstring). Raises MemoryCapError naming the first client
    whose cap fits no precision at rank ``k_min``, with the smallest footprint there."""
    order = [p for p in FIDELITY if p in footprints] + [p for p in footprints if p not in FIDELITY]
    choices = []
    for client, cap in enumerate(caps_mb):
        best: MemoryChoice | None = None
        for precision in order:
            points = footprints[precision]
            fits = [k for k in range(k_min, rank + 1) if (f := footprint_at(points, k)) is not None and f <= cap]
            if fits and (best is None or max(fits) > best.max_rank):
                k = max(fits)
                best = MemoryChoice(precision, k, float(footprint_at(points, k)))
        if best is None:
            least = min((f, p) for p in order if (f := footprint_at(footprints[p], k_min)) is not None)
            raise MemoryCapError(
                f"{setting}: client {client}: {cap:g} MB fits no base precision at rank {k_min} (budgets.k_min); "
                f"the smallest client step measured needs {least[0]:.0f} MB ({least[1]})"
            )
        choices.append(best)
    return choices

"""Input checks shared by the aggregation functions.

Every check runs before any math and raises ``ValueError`` with a one-line message that names the argument
(``Bs``, ``As``, ``weights``, ``tau``, ``rank``) and, for per-client problems, the client index
(``Bs[3]``). Nothing here copies or modifies the caller's tensors or lists.
"""

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Factors:
    """What the checks learned about a valid set of client factors.

    ``m``/``n``: rows of every B_k / columns of every A_k; ``ranks``: r_k per client; ``weights``: the client
    weights as Python floats (as given, never renormalised); ``dtype``/``device``: shared by all factors.
    """

    m: int
    n: int
    ranks: tuple[int, ...]
    weights: tuple[float, ...]
    dtype: torch.dtype
    device: torch.device


def _shape(t: Tensor) -> str:
    return "×".join(str(s) for s in t.shape) or "scalar"


def _check_list(name: str, value: object) -> int:
    if isinstance(value, Tensor) or not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{name}: expected a list of 2-D tensors, got {type(value).__name__}")
    if len(value) == 0:
        raise ValueError(f"{name}: empty list; need one factor per client")
    return len(value)


def check_factors(Bs: Sequence[Tensor], As: Sequence[Tensor], weights: Sequence[float]) -> Factors:
    """Check client factors B_k (m×r_k), A_k (r_k×n) and weights; return their common shapes.

    Raises ValueError naming the argument and client index for: non-list or empty inputs, list lengths that
    differ, non-tensor or non-2-D factors, non-floating dtypes, dtype/device that differ from client 0,
    r_k < 1, B_k columns ≠ A_k rows, m or n that differ from client 0, and weights that are not finite
    non-negative numbers.
    """
    k = _check_list("Bs", Bs)
    if _check_list("As", As) != k:
        raise ValueError(f"As: {len(As)} factors but Bs has {k}; need one (B_k, A_k) pair per client")
    try:
        if isinstance(weights, (str, bytes)):
            raise TypeError
        count = len(weights)
    except TypeError:
        kind = type(weights).__name__
        raise ValueError(f"weights: expected a sequence of {k} numbers, got {kind}") from None
    if count != k:
        raise ValueError(f"weights: {count} weights but {k} clients in Bs/As")

    ref = Bs[0]
    for name, factors in (("Bs", Bs), ("As", As)):
        for i, t in enumerate(factors):
            if not isinstance(t, Tensor):
                raise ValueError(f"{name}[{i}]: expected a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 2:
                raise ValueError(f"{name}[{i}]: expected a 2-D tensor, got shape {_shape(t)}")
            if not t.is_floating_point():
                raise ValueError(f"{name}[{i}]: expected a floating-point tensor, got {t.dtype}")
            if t.dtype != ref.dtype or t.device != ref.device:
                raise ValueError(
                    f"{name}[{i}]: dtype/device {t.dtype}/{t.device} differs from Bs[0] "
                    f"({ref.dtype}/{ref.device}); pass all factors in one dtype on one device"
                )

    m, n = Bs[0].shape[0], As[0].shape[1]
    ranks = []
    for i, (b, a) in enumerate(zip(Bs, As, strict=True)):
        r = b.shape[1]
        if r < 1:
            raise ValueError(f"Bs[{i}]: rank must be >= 1, got shape {_shape(b)}")
        if a.shape[0] != r:
            raise ValueError(f"As[{i}]: has {a.shape[0]} rows but Bs[{i}] has {r} columns (rank mismatch)")
        if b.shape[0] != m or m < 1:
            raise ValueError(f"Bs[{i}]: has {b.shape[0]} rows but Bs[0] has {m} (m must match, >= 1)")
        if a.shape[1] != n or n < 1:
            raise ValueError(f"As[{i}]: has {a.shape[1]} columns but As[0] has {n} (n must match, >= 1)")
        ranks.append(r)

    ws = []
    for i, w in enumerate(weights):
        try:
            x = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"weights[{i}]: expected a number, got {w!r}") from None
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"weights[{i}]: must be finite and >= 0, got {x}")
        ws.append(x)
    return Factors(m, n, tuple(ranks), tuple(ws), ref.dtype, ref.device)


def check_tau(tau: object) -> float:
    """Return ``tau`` as a float if it is a number in (0, 1]; else raise ValueError naming ``tau``."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise ValueError(f"tau: expected a number in (0, 1], got {tau!r}")
    x = float(tau)
    if not 0.0 < x <= 1.0:  # also rejects nan
        raise ValueError(f"tau: energy threshold must be in (0, 1], got {x}")
    return x


def check_rank(rank: object) -> int:
    """Return ``rank`` if it is an integer >= 1 (Python or numpy); else raise ValueError naming ``rank``."""
    try:
        if isinstance(rank, bool):
            raise TypeError
        value = operator.index(rank)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"rank: expected an integer >= 1, got {rank!r}") from None
    if value < 1:
        raise ValueError(f"rank: must be >= 1, got {value}")
    return value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the big (m×R) products run in: float64 stays float64, everything else uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32

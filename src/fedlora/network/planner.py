"""Adaptive planner: each client's sketch size k_i and participation probability q_i, chosen to minimise the
predicted wall-clock time to converge (in the style of arXiv 2505.23555). Pure math on floats (numpy/scipy);
nothing here is wired into runs yet. See docs/planner.md.

Model (r the global LoRA rank, all times in seconds):

    t_i(k, q) = 8·(d0 + d1·k_i) / down_i  +  T_i·(1 + κ·k_i) / ((1 + κ·r)·c_i)  +  8·(u0 + u1·k_i) / up_i

download bytes d0 + d1·k_i on a downlink of down_i bit/s, T_i tokens at c_i tokens/s (measured at rank r; the
per-token cost grows as 1 + κ·k), upload bytes u0 + u1·k_i. The uplink rate up_i is either fixed
(``uplink_bps``) or, over a wireless uplink of total bandwidth B shared by a round's participants, the Shannon
rate on an equal share of B among client i and the expected number of other participants:

    up_i = b_i·log2(1 + a_i / b_i),   b_i = B / (1 + Σ_{j≠i} q_j),   a_i = p_i·g_i / N0 (Hz)

(a planning proxy: at run time the participants who actually joined share B). Client i joins independently with
probability q_i, so the expected round time is the closed form of ``wireless.expected_max_time``:

    E[T](k, q) = Σ_m t_(m)·q_(m)·Π_{l<m} (1 − q_(l))        (times sorted in decreasing order; empty round = 0)

The number of rounds to converge follows the shape of the convergence bound: it grows with the second moment of
the unbiased estimator Σ_{i∈S} (a_i / q_i)·S_i·Δ_i relative to the full-information update, where the FSLoRA
sketch has E‖S_i x‖² = (r / k_i)·‖x‖²:

    R(k, q) = R0·(1 + θ·Σ_i a_i²·ρ_i·(r / (k_i·q_i) − 1)) / s(k),     s(k) = Σ_i a_i·(k_i / r)^β

with ρ_i = E‖Δ_i‖² / ‖Σ_j a_j Δ_j‖² from a pilot run (R = R0 at full rank, full participation). s(k) is the
expected fraction of a full-rank step the round's aggregate makes: with Adam, a client training a rank-k block
of the rank-r adapter moves only ≈ k/r of the coordinates by a normal-sized step, so its expected update is
≈ (k/r)^β times its full-rank one (β = ``rank_exponent``, ≈ 1 for Adam, measured by the pilot; β = 0 is the
unbiased case, s = 1, where R is the bound-shaped variance term alone). The planner
minimises the predicted time to converge

    J(k, q) = R(k, q)·E[T](k, q)

over integer k_i ∈ [k_min_i, k_max_i] and q_i ∈ [q_min, 1] with at least ``min_participants`` = m expected
participants per round, Σ_i q_i ≥ m (``plan_fleet``): the continuous relaxation (k real) minimised from several
starts with the analytic gradient (TNC, bounds only; SLSQP when Σ q ≥ m can bind), the results snapped to
integers (or to grids) and polished by local search (moves of one client's (k_i, q_i), then of two clients' k —
and, when Σ q ≥ m can bind, their q, shifted between them). ``brute_force`` enumerates a grid exactly, for
checking the planner on small fleets.

Why m: R(k, q) assumes a step size tuned to the estimator's noise, but a run applies the (a_i / q_i)-weighted
update at a fixed server learning rate; a plan whose rounds are mostly empty, or hold one client with a huge
weight, does not behave as predicted. Σ q ≥ m keeps the expected load per round at least that of uniform
sampling of m clients (checked to within ``SUM_TOLERANCE``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from fedlora.errors import ConfigError
from fedlora.network.wireless import expected_max_time

MAX_BRUTE_FORCE = 2_000_000  # largest grid brute_force will enumerate
SUM_TOLERANCE = 1e-9  # a plan satisfies Σ q ≥ min_participants if Σ q ≥ min_participants − this (float sums)
_LN2 = math.log(2)
_REL_IMPROVEMENT = 1e-9  # local search takes a move only if it lowers J by more than this fraction
_MAX_SWEEPS = 100
_MAX_K_TRIALS = 64  # single moves try every allowed k_i if a client has at most this many, ...
_K_WINDOW = 4  # ... else those within ± this many allowed values of the current one
_Q_TRIALS = 33  # with continuous q, single moves try this many evenly spaced q_i (and the current one)
_POLISHED = 3  # distinct snapped solutions polished by local search (the best by objective)
_TRANSFER_TRIALS = 33  # continuous q with min_participants: pair moves try q_i at this many evenly spaced values
_PAIR_BATCH = 1 << 20  # with min_participants, pair moves of one client are evaluated ≤ this many floats at a time
_MAX_ROUNDINGS = 4096  # snapping tries every client's rounding down/up if there are at most this many combinations
_PAIR_WINDOW = 1  # pair moves try each of the two k_i within ± this many allowed values of the current one
_CHUNK = 1 << 16  # plans per batched evaluation in exhaustive searches
_SLSQP_FTOL = 1e-9  # constrained relaxation: SLSQP stops when J (1 at its start) changes less than this (its
# default 1e-6 stops after one short step near an optimum, and the local search re-called it sweep after sweep)
_SLSQP_ITERATIONS = 100  # ... or after this many iterations


class InfeasibleFleetError(ConfigError):
    """No plan satisfies the fleet's constraints. The message names the client(s) and the fields."""


@dataclass(frozen=True)
class FleetModel:
    """What the planner knows about a fleet of N clients. Sequences are copied to tuples on construction.

    rank: r, the global LoRA rank (≥ 1).
    weights: a_i, population aggregation weights (N entries, > 0, summing to 1).
    spread: ρ_i ≥ 0, E‖Δ_i‖² / ‖Σ_j a_j Δ_j‖² measured in a pilot run (dimensionless).
    k_min: smallest allowed sketch size k_i per client (integer ≥ 1).
    k_max: largest allowed k_i per client (integer in [0, rank]; the memory cap).
    tokens: tokens client i processes per round (its local steps), ≥ 0.
    tokens_per_s: client i's training throughput at full rank r, tokens/s (> 0).
    rank_cost: κ ≥ 0; the per-token compute cost is proportional to 1 + κ·k.
    bytes_down: (d0, d1) ≥ 0; a rank-k client downloads d0 + d1·k bytes.
    bytes_up: (u0, u1) ≥ 0; a rank-k client uploads u0 + u1·k bytes.
    downlink_bps: per-client downlink rate, bit/s (> 0).
    uplink_bps: fixed per-client uplink rates, bit/s (> 0); give it, or both of the next two.
    received_over_n0: wireless uplink: p_i·g_i / N0 in Hz per client (see ``wireless._rate``).
    bandwidth_hz: wireless uplink: total bandwidth B in Hz (> 0) shared by a round's participants.
    rounds_full: R0 > 0, rounds to converge with full participation at full rank.
    variance_weight: θ ≥ 0, weight of the sampling + sketching variance in the rounds surrogate.
    q_min: smallest allowed participation probability (q_i ∈ [q_min, 1]).
    min_participants: m ≥ 0, the smallest allowed expected number of participants per round: Σ_i q_i ≥ m (the
    expected load of uniform sampling of m clients). The rounds surrogate assumes a step size tuned to the
    estimator's noise, but runs apply the (a_i / q_i)-weighted update at a fixed server learning rate, so plans
    whose rounds are mostly empty or hold one heavily weighted client do not behave as predicted; m rules them
    out. 0 (the default): no constraint beyond q_min.
    rank_exponent: β ≥ 0, how a rank-k client's expected update shrinks relative to its full-rank one,
    ≈ (k/r)^β (Adam normalises step sizes per coordinate, so a rank-k block moves ≈ k/r of the coordinates: β ≈ 1;
    plain SGD with the r/k sketch scale is unbiased: β = 0). The rounds surrogate is divided by the expected
    step fraction s(k) = Σ_i a_i (k_i/r)^β (1 at k = r). 0 (the default): R exactly as without the term.

    Values that make the fleet infeasible rather than malformed (k_max < k_min, q_min outside (0, 1],
    received_over_n0 ≤ 0, min_participants > N) pass here and are reported by ``check_feasible``.
    """

    rank: int
    weights: Sequence[float]
    spread: Sequence[float]
    k_min: Sequence[int]
    k_max: Sequence[int]
    tokens: Sequence[float]
    tokens_per_s: Sequence[float]
    rank_cost: float
    bytes_down: tuple[float, float]
    bytes_up: tuple[float, float]
    downlink_bps: Sequence[float]
    uplink_bps: Sequence[float] | None = None
    received_over_n0: Sequence[float] | None = None
    bandwidth_hz: float | None = None
    rounds_full: float = 1.0
    variance_weight: float = 1.0
    q_min: float = 0.05
    min_participants: float = 0.0
    rank_exponent: float = 0.0

    def __post_init__(self) -> None:
        rank = _integer("rank", self.rank)
        if rank < 1:
            raise ValueError(f"FleetModel.rank must be >= 1, got {self.rank!r}")
        object.__setattr__(self, "rank", rank)
        n = _length("weights", self.weights)
        if n == 0:
            raise ValueError("FleetModel.weights must have at least one client")
        self._set_floats("weights", n, lower=0.0, strict=True)
        total = math.fsum(self.weights)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"FleetModel.weights must sum to 1, got {total!r}")
        self._set_floats("spread", n, lower=0.0)
        self._set_ints("k_min", n, lower=1, upper=None)
        self._set_ints("k_max", n, lower=0, upper=rank)
        self._set_floats("tokens", n, lower=0.0)
        self._set_floats("tokens_per_s", n, lower=0.0, strict=True)
        self._set_floats("downlink_bps", n, lower=0.0, strict=True)
        for name in ("bytes_down", "bytes_up"):
            pair = getattr(self, name)
            if _length(name, pair) != 2:
                raise ValueError(f"FleetModel.{name} must be a pair (bytes at k = 0, bytes per rank unit)")
            self._set_floats(name, 2, lower=0.0)
        for name, lower, strict in (
            ("rank_cost", 0.0, False),
            ("rounds_full", 0.0, True),
            ("variance_weight", 0.0, False),
        ):
            object.__setattr__(self, name, _number(name, getattr(self, name), lower, strict))
        object.__setattr__(self, "q_min", _number("q_min", self.q_min, None, False))
        object.__setattr__(self, "min_participants", _number("min_participants", self.min_participants, 0.0, False))
        object.__setattr__(self, "rank_exponent", _number("rank_exponent", self.rank_exponent, 0.0, False))
        self._check_uplink(n)

    def _check_uplink(self, n: int) -> None:
        wireless = self.received_over_n0 is not None or self.bandwidth_hz is not None
        if self.uplink_bps is not None:
            if wireless:
                raise ValueError(
                    "FleetModel: give either uplink_bps (fixed links) or received_over_n0 and bandwidth_hz "
                    "(wireless), not both"
                )
            self._set_floats("uplink_bps", n, lower=0.0, strict=True)
            return
        if self.received_over_n0 is None or self.bandwidth_hz is None:
            missing = "received_over_n0" if self.received_over_n0 is None else "bandwidth_hz"
            raise ValueError(f"FleetModel.{missing} is needed: give uplink_bps, or received_over_n0 and bandwidth_hz")
        self._set_floats("received_over_n0", n, lower=None)
        object.__setattr__(self, "bandwidth_hz", _number("bandwidth_hz", self.bandwidth_hz, 0.0, True))

    def _set_floats(self, name: str, n: int, lower: float | None, strict: bool = False) -> None:
        values = getattr(self, name)
        if _length(name, values) != n:
            raise ValueError(f"FleetModel.{name} has {_length(name, values)} entries but weights has {n}")
        object.__setattr__(self, name, tuple(_number(f"{name}[{i}]", v, lower, strict) for i, v in enumerate(values)))

    def _set_ints(self, name: str, n: int, lower: int, upper: int | None) -> None:
        values = getattr(self, name)
        if _length(name, values) != n:
            raise ValueError(f"FleetModel.{name} has {_length(name, values)} entries but weights has {n}")
        out = []
        for i, v in enumerate(values):
            iv = _integer(f"{name}[{i}]", v)
            if iv < lower or (upper is not None and iv > upper):
                bound = f"[{lower}, {upper}]" if upper is not None else f">= {lower}"
                raise ValueError(
                    f"FleetModel.{name}[{i}] must be {'in ' if upper is not None else ''}{bound}, got {v!r}"
                )
            out.append(iv)
        object.__setattr__(self, name, tuple(out))

    @property
    def n_clients(self) -> int:
        """N, the number of clients."""
        return len(self.weights)

    @property
    def wireless(self) -> bool:
        """True when uplinks share ``bandwidth_hz`` (Shannon rates), False for fixed ``uplink_bps``."""
        return self.uplink_bps is None


def _length(name: str, values: object) -> int:
    try:
        return len(values)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"FleetModel.{name} must be a sequence, got {type(values).__name__}") from None


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"FleetModel.{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"FleetModel.{name} must be an integer, got {value!r}") from None


def _number(name: str, value: object, lower: float | None, strict: bool) -> float:
    """float(value), checked finite and ≥ lower (> lower when strict); ValueError naming the field otherwise."""
    bound = "" if lower is None else f" {'>' if strict else '>='} {lower:g}"
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"FleetModel.{name} must be a finite number{bound}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(x) or (lower is not None and (x <= lower if strict else x < lower)):
        raise ValueError(f"FleetModel.{name} must be a finite number{bound}, got {value!r}")
    return x


# --- the model, vectorised over a batch of candidate plans ----------------------------------------------------


@dataclass(frozen=True)
class _Arrays:
    """The fleet as numpy vectors (N,): t_i = fixed0 + fixed1·k + (up0 + up1·k) / uplink rate."""

    rank: float
    variance: np.ndarray  # a_i²·ρ_i
    fixed0: np.ndarray  # s: download + compute at k = 0
    fixed1: np.ndarray  # s per rank unit
    up0: np.ndarray  # upload bits at k = 0
    up1: np.ndarray  # upload bits per rank unit
    uplink: np.ndarray | None  # fixed uplink rates, bit/s
    received: np.ndarray | None  # wireless p·g/N0, Hz
    bandwidth: float  # wireless B, Hz (0 for fixed links)
    rounds_full: float
    theta: float
    beta: float  # rank exponent β (0: no step-fraction term)
    share: np.ndarray  # a_i / Σ_j a_j, the weights of s(k) (so that s(r) = 1 exactly up to rounding)


def _arrays(model: FleetModel) -> _Arrays:
    n = model.n_clients
    a = np.asarray(model.weights)
    per_token = np.asarray(model.tokens) / ((1 + model.rank_cost * model.rank) * np.asarray(model.tokens_per_s))
    down = np.asarray(model.downlink_bps)
    d0, d1 = model.bytes_down
    u0, u1 = model.bytes_up
    return _Arrays(
        rank=float(model.rank),
        variance=a * a * np.asarray(model.spread),
        fixed0=8 * d0 / down + per_token,
        fixed1=8 * d1 / down + per_token * model.rank_cost,
        up0=np.full(n, 8 * u0),
        up1=np.full(n, 8 * u1),
        uplink=None if model.uplink_bps is None else np.asarray(model.uplink_bps),
        received=None if model.received_over_n0 is None else np.asarray(model.received_over_n0),
        bandwidth=float(model.bandwidth_hz or 0.0),
        rounds_full=model.rounds_full,
        theta=model.variance_weight,
        beta=model.rank_exponent,
        share=a / a.sum(),
    )


def _uplink_rate(f: _Arrays, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uplink rate in bit/s, bandwidth share b_i in Hz; 0 for fixed links), shapes like q (…, N)."""
    if f.uplink is not None:
        return np.broadcast_to(f.uplink, q.shape), np.zeros_like(q)
    b = f.bandwidth / (1 + q.sum(axis=-1, keepdims=True) - q)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(f.received > 0, b * np.log1p(np.maximum(f.received, 0) / b) / _LN2, 0.0)
    return rate, b


def _times(f: _Arrays, k: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-client round times t_i in s, shape (…, N), for sketch sizes k and probabilities q of that shape."""
    rate, _ = _uplink_rate(f, q)
    bits = f.up0 + f.up1 * k
    with np.errstate(divide="ignore", invalid="ignore"):
        upload = np.where(bits > 0, bits / rate, 0.0)
    return f.fixed0 + f.fixed1 * k + upload


def _step_fraction(f: _Arrays, k: np.ndarray) -> np.ndarray:
    """s(k) = Σ_i a_i (k_i / r)^β, the expected fraction of a full-rank step the aggregate makes, shape (…)."""
    return (f.share * (k / f.rank) ** f.beta).sum(axis=-1)


def _rounds(f: _Arrays, k: np.ndarray, q: np.ndarray) -> np.ndarray:
    """R(k, q) = R0·(1 + θ·Σ_i a_i² ρ_i (r / (k_i q_i) − 1)) / s(k), shape (…); no division when β = 0."""
    rounds = f.rounds_full * (1 + f.theta * (f.variance * (f.rank / (k * q) - 1)).sum(axis=-1))
    return rounds if f.beta == 0 else rounds / _step_fraction(f, k)


def _expected_max(t: np.ndarray, q: np.ndarray) -> np.ndarray:
    """E[max_{i∈S} t_i] for independent joins, batched over leading axes: (…, N) → (…)."""
    order = np.argsort(-t, axis=-1, kind="stable")
    ts = np.take_along_axis(t, order, axis=-1)
    qs = np.take_along_axis(q, order, axis=-1)
    none_before = np.cumprod(1 - qs, axis=-1)
    none_before = np.concatenate([np.ones_like(qs[..., :1]), none_before[..., :-1]], axis=-1)
    return (ts * qs * none_before).sum(axis=-1)


def _objective_batch(f: _Arrays, k: np.ndarray, q: np.ndarray) -> np.ndarray:
    """J = R·E[T] for a batch of plans, (…, N) → (…)."""
    return _rounds(f, k, q) * _expected_max(_times(f, k, q), q)


def _objective_grad(f: _Arrays, k: np.ndarray, q: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(J, ∂J/∂k, ∂J/∂q) at one plan (k, q of shape (N,)), k treated as continuous.

    With the times sorted decreasingly, E = V_0 where V_m = q_m t_m + (1 − q_m) V_{m+1} (V_N = 0) is the expected
    maximum over positions ≥ m given that nobody before m joined. So ∂E/∂t_m = P_m q_m and
    ∂E/∂q_m = P_m (t_m − V_{m+1}) with P_m = Π_{l<m} (1 − q_l) (the order held fixed: E is continuous where
    times tie, its gradient one-sided there). Wireless times also depend on the other clients' q through
    b_i = B / (1 + Σ_{j≠i} q_j): ∂t_i/∂q_j = L_i·r_i'(b_i)·b_i² / (B·r_i²) for j ≠ i. With β > 0,
    R = R0·V / s: ∂R/∂k_i = R0·(∂V/∂k_i) / s − R·(∂s/∂k_i) / s with ∂s/∂k_i = a_i·β·k_i^(β−1) / r^β, and
    ∂R/∂q_i = R0·(∂V/∂q_i) / s.
    """
    n = k.shape[0]
    rate, b = _uplink_rate(f, q)
    bits = f.up0 + f.up1 * k
    t = f.fixed0 + f.fixed1 * k + np.where(bits > 0, bits / rate, 0.0)
    order = np.argsort(-t, kind="stable")
    ts, qs = t[order].tolist(), q[order].tolist()
    later = [0.0] * (n + 1)  # V_m
    for m in range(n - 1, -1, -1):
        later[m] = qs[m] * ts[m] + (1 - qs[m]) * later[m + 1]
    none_before = np.concatenate([[1.0], np.cumprod(1 - q[order])[:-1]])
    de_dt, de_dq = np.empty(n), np.empty(n)
    de_dt[order] = none_before * q[order]
    de_dq[order] = none_before * (t[order] - np.asarray(later[1:]))
    dt_dk = f.fixed1 + np.where(bits > 0, f.up1 / rate, 0.0)
    if f.uplink is None:
        a = f.received
        slope = (np.log1p(a / b) - (a / b) / (1 + a / b)) / _LN2  # dr/db, bit/s per Hz
        cross = np.where(bits > 0, bits * slope * b * b / (f.bandwidth * rate * rate), 0.0)  # ∂t_i/∂q_j, j ≠ i
        weighted = de_dt * cross
        de_dq = de_dq + weighted.sum() - weighted
    expected = later[0]
    rounds = float(_rounds(f, k, q))
    scale = f.rounds_full * f.theta * f.variance * f.rank / (k * q)  # −∂R/∂k·k = −∂R/∂q·q (before / s)
    if f.beta == 0:
        grad_k = -scale / k * expected + rounds * de_dt * dt_dk
    else:
        power = f.share * (k / f.rank) ** f.beta  # a_i (k_i / r)^β
        step = power.sum()  # s(k)
        scale = scale / step
        ds_dk = f.beta * power / k  # a_i β k_i^(β−1) / r^β
        grad_k = -(scale / k + rounds * ds_dk / step) * expected + rounds * de_dt * dt_dk
    grad_q = -scale / q * expected + rounds * de_dq
    return rounds * expected, grad_k, grad_q


# --- public evaluation ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A plan and its predictions.

    k: sketch size per client (N integers). q: participation probability per client (N floats in (0, 1]).
    rounds: predicted rounds to converge R(k, q). round_s: expected round time E[T] in s.
    objective: predicted seconds to converge J = rounds·round_s. client_s: t_i in s if client i participates.
    """

    k: list[int]
    q: list[float]
    rounds: float
    round_s: float
    objective: float
    client_s: list[float]


def _point(model: FleetModel, k: Sequence[float], q: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    n = model.n_clients
    if len(k) != n or len(q) != n:
        raise ValueError(f"k has {len(k)} entries and q has {len(q)}, but the fleet has {n} clients")
    kk = np.asarray(k, dtype=np.float64)
    qq = np.asarray(q, dtype=np.float64)
    for i in range(n):
        if not (kk[i] > 0 and math.isfinite(kk[i])):
            raise ValueError(f"client {i}: k = {k[i]!r} must be a finite number > 0")
        if not 0 < qq[i] <= 1:
            raise ValueError(f"client {i}: q = {q[i]!r} must be in (0, 1]")
    return kk, qq


def client_times(model: FleetModel, k: Sequence[float], q: Sequence[float]) -> list[float]:
    """t_i in s for each client if it participates with sketch size k_i (N entries each; k may be fractional).

    q matters only for wireless uplinks (the bandwidth share b_i = B / (1 + Σ_{j≠i} q_j)). A wireless client with
    received_over_n0 ≤ 0 and something to upload gets t_i = inf.
    """
    kk, qq = _point(model, k, q)
    return _times(_arrays(model), kk, qq).tolist()


def expected_round_s(model: FleetModel, k: Sequence[float], q: Sequence[float]) -> float:
    """E[T] in s: ``wireless.expected_max_time`` of ``client_times`` under independent joins with probabilities q."""
    return expected_max_time(client_times(model, k, q), [float(x) for x in q])


def predicted_rounds(model: FleetModel, k: Sequence[float], q: Sequence[float]) -> float:
    """R(k, q) = R0·(1 + θ·Σ_i a_i² ρ_i (r / (k_i q_i) − 1)) / s(k), s(k) = Σ_i a_i (k_i / r)^β, rounds to converge
    (R0 at k = r, q = 1)."""
    kk, qq = _point(model, k, q)
    return float(_rounds(_arrays(model), kk, qq))


def objective(model: FleetModel, k: Sequence[float], q: Sequence[float]) -> float:
    """J(k, q) = R(k, q)·E[T](k, q), the predicted seconds to converge."""
    return predicted_rounds(model, k, q) * expected_round_s(model, k, q)


def _plan(model: FleetModel, k: Sequence[int], q: Sequence[float]) -> Plan:
    ks = [int(x) for x in k]
    qs = [float(x) for x in q]
    rounds = predicted_rounds(model, ks, qs)
    round_s = expected_round_s(model, ks, qs)
    return Plan(ks, qs, rounds, round_s, rounds * round_s, client_times(model, ks, qs))


def _check_k(model: FleetModel, k: Sequence[int]) -> None:
    if len(k) != model.n_clients:
        raise ValueError(f"k has {len(k)} entries but the fleet has {model.n_clients} clients")
    for i, (v, lo, hi) in enumerate(zip(k, model.k_min, model.k_max, strict=True)):
        try:
            iv = operator.index(v)
        except TypeError:
            raise ValueError(f"client {i}: k = {v!r} must be an integer") from None
        if not lo <= iv <= hi:
            raise ValueError(f"client {i}: k = {v!r} is outside [k_min, k_max] = [{lo}, {hi}]")


def evaluate(model: FleetModel, k: Sequence[int], q: Sequence[float]) -> Plan:
    """The plan (k, q) with its predictions; k_i must be an integer in [k_min_i, k_max_i], q_i in [q_min, 1], and
    Σ_i q_i ≥ min_participants (within ``SUM_TOLERANCE``)."""
    _check_k(model, k)
    if len(q) != model.n_clients:
        raise ValueError(f"q has {len(q)} entries but the fleet has {model.n_clients} clients")
    for i, v in enumerate(q):
        if not model.q_min <= v <= 1:
            raise ValueError(f"client {i}: q = {v!r} is outside [q_min, 1] = [{model.q_min:g}, 1]")
    total = math.fsum(float(v) for v in q)
    if total < model.min_participants - SUM_TOLERANCE:
        raise ValueError(
            f"q sums to {total:g} expected participants per round, below FleetModel.min_participants = "
            f"{model.min_participants:g}"
        )
    return _plan(model, k, q)


def check_feasible(model: FleetModel) -> None:
    """Raise InfeasibleFleetError (one line naming the client(s) and fields) if no plan satisfies the constraints.

    Infeasible: q_min outside (0, 1]; min_participants above the number of clients N (even q_i = 1 for all gives
    only N expected participants); a client with k_max < k_min; a wireless client with something to upload but
    received_over_n0 ≤ 0 (its uplink rate is 0 on any bandwidth, so its upload never finishes).
    """
    problems = []
    if not 0 < model.q_min <= 1:
        problems.append(f"q_min = {model.q_min:g} must be in (0, 1] (FleetModel.q_min)")
    n = model.n_clients
    if model.min_participants > n + SUM_TOLERANCE:
        clients = "client" if n == 1 else "clients"
        problems.append(
            f"min_participants = {model.min_participants:g} exceeds the {n} {clients}: even q_i = 1 for all gives "
            f"{n} expected participant{'' if n == 1 else 's'} (FleetModel.min_participants)"
        )
    for i, (lo, hi) in enumerate(zip(model.k_min, model.k_max, strict=True)):
        if hi < lo:
            problems.append(
                f"client {i}: its memory cap allows rank ≤ {hi} but it must train at least {lo} "
                "(FleetModel.k_max / FleetModel.k_min)"
            )
    if model.received_over_n0 is not None:
        u0, u1 = model.bytes_up
        for i, (a, lo) in enumerate(zip(model.received_over_n0, model.k_min, strict=True)):
            if a <= 0 and u0 + u1 * lo > 0:
                problems.append(
                    f"client {i}: its upload can never finish, received power over noise is {a:g} Hz ≤ 0 "
                    "(FleetModel.received_over_n0)"
                )
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InfeasibleFleetError(f"infeasible fleet: {shown}")


# --- search -----------------------------------------------------------------------------------------------------


def _k_options(model: FleetModel, k_grid: Sequence[int] | None) -> list[np.ndarray]:
    """Allowed k values per client (sorted floats): the integers in [k_min_i, k_max_i], or the grid's."""
    if k_grid is None:
        return [np.arange(lo, hi + 1, dtype=np.float64) for lo, hi in zip(model.k_min, model.k_max, strict=True)]
    grid = sorted({_integer_grid(v) for v in k_grid})
    out = []
    for i, (lo, hi) in enumerate(zip(model.k_min, model.k_max, strict=True)):
        allowed = [v for v in grid if lo <= v <= hi]
        if not allowed:
            raise ValueError(f"client {i}: k_grid has no value in its range [k_min, k_max] = [{lo}, {hi}]")
        out.append(np.asarray(allowed, dtype=np.float64))
    return out


def _integer_grid(value: object) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"k_grid values must be integers, got {value!r}") from None


def _q_options(model: FleetModel, q_grid: Sequence[float] | None) -> np.ndarray | None:
    """Allowed q values (sorted), the grid's in [q_min, 1]; None when q is continuous."""
    if q_grid is None:
        return None
    allowed = sorted({float(v) for v in q_grid if model.q_min <= float(v) <= 1})
    if not allowed:
        raise ValueError(f"q_grid has no value in [q_min, 1] = [{model.q_min:g}, 1]")
    return np.asarray(allowed)


def _bracket(x: float, options: np.ndarray) -> np.ndarray:
    """The allowed values next to x: the largest ≤ x and the smallest ≥ x (one value if x is allowed or outside)."""
    pos = int(np.searchsorted(options, x))  # options[pos - 1] < x <= options[pos]
    if pos < options.size and options[pos] == x:
        return options[pos : pos + 1]
    return options[max(pos - 1, 0) : pos + 1]


def _window(x: float, options: np.ndarray, half: int) -> np.ndarray:
    """The allowed values within ± ``half`` positions of x (x itself allowed)."""
    pos = int(np.searchsorted(options, x))
    return options[max(pos - half, 0) : pos + half + 1]


def _feasible_values(values: np.ndarray, q: np.ndarray, min_sum: float | None) -> np.ndarray:
    """J of a batch with plans whose Σ q falls short of ``min_sum`` (beyond ``SUM_TOLERANCE``) set to inf."""
    if min_sum is None:
        return values
    return np.where(q.sum(axis=-1) >= min_sum - SUM_TOLERANCE, values, np.inf)


def _best_combination(
    f: _Arrays, ks: Sequence[np.ndarray], qs: Sequence[np.ndarray], min_sum: float | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Exhaustive minimum of J over plans that give client i one of its candidate pairs (ks[i][c], qs[i][c]).

    Enumerated in mixed-radix order (client 0 slowest-varying) in batches of ``_CHUNK``; ties go to the first.
    Plans with Σ q < min_sum (when given) are skipped. Returns (J, k, q) of the best plan; J = inf (and the first
    plan) if none is feasible.
    """
    sizes = [x.size for x in ks]
    total = math.prod(sizes)
    strides = [math.prod(sizes[i + 1 :]) for i in range(len(sizes))]
    best_value, best_index = math.inf, 0
    for start in range(0, total, _CHUNK):
        index = np.arange(start, min(start + _CHUNK, total))
        digits = [(index // s) % size for s, size in zip(strides, sizes, strict=True)]
        k = np.stack([x[d] for x, d in zip(ks, digits, strict=True)], axis=-1)
        q = np.stack([x[d] for x, d in zip(qs, digits, strict=True)], axis=-1)
        values = _feasible_values(_objective_batch(f, k, q), q, min_sum)
        j = int(np.argmin(values))
        if values[j] < best_value:
            best_value, best_index = float(values[j]), int(index[j])
    digits = [(best_index // s) % size for s, size in zip(strides, sizes, strict=True)]
    k = np.array([x[d] for x, d in zip(ks, digits, strict=True)])
    q = np.array([x[d] for x, d in zip(qs, digits, strict=True)])
    return best_value, k, q


def _best_plan(f: _Arrays, k: np.ndarray, q: np.ndarray, min_sum: float | None) -> tuple[float, np.ndarray, np.ndarray]:
    """The best of a batch of whole plans k, q of shape (B, N) (the first on ties; J = inf if none is feasible)."""
    values = _feasible_values(_objective_batch(f, k, q), q, min_sum)
    j = int(np.argmin(values))
    return float(values[j]), k[j].copy(), q[j].copy()


def _project(q: np.ndarray, lo: float, hi: float, min_sum: float | None) -> np.ndarray:
    """Euclidean projection of q onto {lo ≤ q_i ≤ hi, Σ q ≥ min_sum} (no sum constraint if min_sum is None):
    clip(q + λ, lo, hi) with the smallest λ ≥ 0 reaching the sum, found exactly on the piecewise-linear
    λ ↦ Σ clip(q + λ, lo, hi) (assumes N·hi ≥ min_sum; the sum is then min_sum up to rounding)."""
    out = np.clip(q, lo, hi)
    if min_sum is None or out.sum() >= min_sum:
        return out
    kinks = np.concatenate([lo - q, hi - q])
    kinks = np.unique(kinks[kinks > 0])
    sums = np.clip(q + kinks[:, None], lo, hi).sum(axis=1)  # nondecreasing in λ
    j = min(int(np.searchsorted(sums, min_sum)), kinks.size - 1)  # first kink whose sum reaches min_sum
    lam0, sum0 = (0.0, float(out.sum())) if j == 0 else (float(kinks[j - 1]), float(sums[j - 1]))
    lam = lam0 + (kinks[j] - lam0) * min((min_sum - sum0) / (sums[j] - sum0), 1.0)
    return np.clip(q + lam, lo, hi)


def _repair(
    f: _Arrays, k: np.ndarray, q: np.ndarray, q_opts: np.ndarray | None, q_hi: float, min_sum: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Make an allowed plan with Σ q < min_sum feasible by raising q greedily: each step raises the one client (to
    its next grid value, or by the whole deficit up to q_hi) whose raise gives the lowest J. Returns (J, k, q)."""
    q = q.copy()
    while q.sum() < min_sum - SUM_TOLERANCE:
        if q_opts is None:
            up = np.minimum(q + (min_sum - q.sum()), q_hi)
        else:
            up = q_opts[np.minimum(np.searchsorted(q_opts, q, side="right"), q_opts.size - 1)]
        raised = np.flatnonzero(up > q)
        if raised.size == 0:  # everyone at q_hi: N·q_hi ≥ min_sum was checked (``_binding_sum``)
            break
        trials = np.tile(q, (raised.size, 1))
        trials[np.arange(raised.size), raised] = up[raised]
        q = trials[int(np.argmin(_objective_batch(f, np.broadcast_to(k, trials.shape), trials)))]
    return float(_objective_batch(f, k, q)), k, q


def _pairs(k_values: np.ndarray, q_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (k, q) combinations of the given values, as two parallel arrays."""
    k, q = np.meshgrid(k_values, q_values, indexing="ij")
    return k.ravel(), q.ravel()


def _round(
    f: _Arrays,
    k: np.ndarray,
    q: np.ndarray,
    k_opts: list[np.ndarray],
    q_opts: np.ndarray | None,
    min_sum: float | None = None,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Snap a relaxed (k, q) to allowed values: the best of every client's rounding down or up (k, and q on a grid)
    if there are at most ``_MAX_ROUNDINGS`` combinations, else each to the nearest allowed value. With min_sum,
    only roundings with Σ q ≥ min_sum count (rounding every q up keeps a feasible q feasible); if none does,
    the nearest values are made feasible by ``_repair``."""
    ks = [_bracket(x, o) for x, o in zip(k, k_opts, strict=True)]
    qs = [np.array([x]) if q_opts is None else _bracket(x, q_opts) for x in q]
    if math.prod(a.size * b.size for a, b in zip(ks, qs, strict=True)) > _MAX_ROUNDINGS:
        ks = [a[np.argmin(np.abs(a - x))][None] for a, x in zip(ks, k, strict=True)]
        qs = [a[np.argmin(np.abs(a - x))][None] for a, x in zip(qs, q, strict=True)]
    pairs = [_pairs(a, b) for a, b in zip(ks, qs, strict=True)]
    value, k_new, q_new = _best_combination(f, [p[0] for p in pairs], [p[1] for p in pairs], min_sum)
    if min_sum is not None and not math.isfinite(value):
        k_new = np.array([a[np.argmin(np.abs(a - x))] for a, x in zip(ks, k, strict=True)])
        q_new = np.array([a[np.argmin(np.abs(a - x))] for a, x in zip(qs, q, strict=True)])
        value, k_new, q_new = _repair(f, k_new, q_new, q_opts, 1.0 if q_opts is None else float(q_opts[-1]), min_sum)
    return value, k_new, q_new


def _relax(
    f: _Arrays,
    k0: np.ndarray,
    q0: np.ndarray,
    k_bounds: list[tuple[float, float]],
    q_bounds: tuple[float, float],
    min_sum: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise J over continuous k (k_bounds) and q (q_bounds) from (k0, q0); fixed k where its bounds are equal.

    scipy's TNC (truncated Newton, bounds) with the analytic gradient, on k / r and q, J scaled by its value at
    the start. Not L-BFGS-B: since scipy 1.15 it calls LAPACK, and with a multi-threaded OpenBLAS its time on
    these tiny problems grows ~10× on a loaded machine (scipy issue #22438); TNC makes no BLAS calls.
    With min_sum (Σ q ≥ min_sum can bind), ``_relax_constrained`` (SLSQP) instead.
    """
    if min_sum is not None:
        return _relax_constrained(f, k0, q0, k_bounds, q_bounds, min_sum)
    n = k0.shape[0]
    ref = float(_objective_batch(f, k0, q0))
    ref = ref if ref > 0 and math.isfinite(ref) else 1.0

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, gk, gq = _objective_grad(f, x[:n] * f.rank, x[n:])
        return value / ref, np.concatenate([gk * f.rank, gq]) / ref

    bounds = [(lo / f.rank, hi / f.rank) for lo, hi in k_bounds] + [q_bounds] * n
    x0 = np.concatenate([k0 / f.rank, q0])
    res = minimize(fun, x0, jac=True, method="TNC", bounds=bounds)
    lo, hi = np.array(bounds).T
    x = np.clip(res.x, lo, hi)
    return x[:n] * f.rank, x[n:]


def _relax_constrained(
    f: _Arrays,
    k0: np.ndarray,
    q0: np.ndarray,
    k_bounds: list[tuple[float, float]],
    q_bounds: tuple[float, float],
    min_sum: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``_relax`` subject to Σ q ≥ min_sum: scipy's SLSQP (bounds and the linear inequality) with the analytic
    gradient, on the free k / r and q, J scaled by its value at the start; the start is projected onto the
    feasible set, the result clipped to the bounds and projected onto it (``_project``: SLSQP may end a hair
    outside).

    SLSQP calls LAPACK on every iteration (since scipy 1.16), so it shares L-BFGS-B's sensitivity to a
    multi-threaded OpenBLAS on a loaded machine: ~3× slower per call with one core busy (2 vCPUs). It is kept
    because the BLAS-free alternatives tried were no better even then (18 constrained N = 30 plans): an augmented
    Lagrangian over TNC took ~2× SLSQP's time on an idle machine, about SLSQP's under load, and ended up to 2.4 %
    higher; a TNC search for the Lagrange multiplier, or TNC's bounded optimum projected onto the constraint,
    took 1.7–2× as long (more local search) and ended up to 12 % higher; spectral projected gradient converged
    slower than SLSQP and to higher values.
    """
    n = k0.shape[0]
    lo, hi = np.array(k_bounds).T
    free = np.flatnonzero(lo < hi)  # k variables; the others stay at their bound
    nf = free.size
    k_start = np.clip(k0, lo, hi)
    q0 = _project(q0, *q_bounds, min_sum)
    ref = float(_objective_batch(f, k_start, q0))
    ref = ref if ref > 0 and math.isfinite(ref) else 1.0

    def split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = k_start.copy()
        k[free] = x[:nf] * f.rank
        return k, x[nf:]

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, gk, gq = _objective_grad(f, *split(x))
        return value / ref, np.concatenate([gk[free] * f.rank, gq]) / ref

    bounds = [(lo[i] / f.rank, hi[i] / f.rank) for i in free] + [q_bounds] * n
    grad_sum = np.concatenate([np.zeros(nf), np.ones(n)])
    constraint = {"type": "ineq", "fun": lambda x: x[nf:].sum() - min_sum, "jac": lambda x: grad_sum}
    x0 = np.concatenate([k_start[free] / f.rank, q0])
    options = {"ftol": _SLSQP_FTOL, "maxiter": _SLSQP_ITERATIONS}
    res = minimize(fun, x0, jac=True, method="SLSQP", bounds=bounds, constraints=[constraint], options=options)
    x = res.x if np.all(np.isfinite(res.x)) else x0
    b_lo, b_hi = np.array(bounds).T
    k, q = split(np.clip(x, b_lo, b_hi))
    return k, _project(q, *q_bounds, min_sum)


def _polish(
    f: _Arrays,
    k: np.ndarray,
    q: np.ndarray,
    k_opts: list[np.ndarray],
    q_opts: np.ndarray | None,
    q_bounds: tuple[float, float],
    min_sum: float | None = None,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Local search from an allowed (k, q); returns (J, k, q). A move is taken only if it lowers J (and keeps
    Σ q ≥ min_sum, when given: a start must satisfy it).

    Single moves: per client i, the best (k_i, q_i) with the others fixed, over k_i ∈ allowed values (all of them
    if at most ``_MAX_K_TRIALS``, else the current ± ``_K_WINDOW``) × q_i ∈ q grid (continuous q:
    ``_Q_TRIALS`` evenly spaced values in [q_min, 1], the current q_i and, with min_sum, the smallest q_i that
    keeps Σ q ≥ min_sum), in one batched evaluation. With continuous q, each sweep of single moves ends with a
    relaxation (``_relax``) over all q at fixed k. When single moves stall, pair moves: per pair of clients, the
    best (k_i, k_j) within ± ``_PAIR_WINDOW`` allowed values of the current ones at fixed q (e.g. two equally
    slow clients that must grow together). With min_sum, where single moves cannot lower a q_i once Σ q = min_sum,
    the pair moves also shift q between the two, with k_i and k_j in the same windows: on a q grid, every
    (q_i, q_j) grid pair that keeps Σ q ≥ min_sum; with continuous q, (q_i + δ, q_j − δ) for q_i + δ at
    ``_TRANSFER_TRIALS`` evenly spaced values, the current q_i and the values putting q_j at a bound; client i
    then takes the best such move over all j > i (one batched evaluation). Stops when neither improves J.
    """
    k, q = k.copy(), q.copy()
    n = k.shape[0]
    value = float(_objective_batch(f, k, q))
    q_trials = q_opts if q_opts is not None else np.linspace(*q_bounds, _Q_TRIALS)
    q_lo, q_hi = q_bounds
    transfer_trials = np.linspace(q_lo, q_hi, _TRANSFER_TRIALS)

    def better(v: float) -> bool:
        return v < value * (1 - _REL_IMPROVEMENT)

    def move(changes: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        nonlocal value, k, q
        ks = [changes[i][0] if i in changes else k[i : i + 1] for i in range(n)]
        qs = [changes[i][1] if i in changes else q[i : i + 1] for i in range(n)]
        v, k_new, q_new = _best_combination(f, ks, qs, min_sum)
        if better(v):
            value, k, q = v, k_new, q_new

    def single_q(i: int) -> np.ndarray:
        if q_opts is not None:
            return q_trials
        extra = [q[i]]
        if min_sum is not None:  # lowest q_i keeping Σ q ≥ min_sum
            extra.append(min(max(min_sum - (q.sum() - q[i]), q_lo), q_hi))
        return np.append(q_trials, extra)

    def pair_candidates(i: int, j: int) -> tuple[np.ndarray, ...]:
        """With min_sum: (k_i, q_i, k_j, q_j) candidates of a pair move, k_i and k_j within their windows; on a q
        grid any two grid values, with continuous q (q_i + δ, q_j − δ) at fixed q_i + q_j."""
        wi, wj = _window(k[i], k_opts[i], _PAIR_WINDOW), _window(k[j], k_opts[j], _PAIR_WINDOW)
        if q_opts is not None:
            return tuple(x.ravel() for x in np.meshgrid(wi, q_opts, wj, q_opts, indexing="ij"))
        total = q[i] + q[j]
        qi = np.unique(np.clip(np.append(transfer_trials, [q[i], total - q_lo, total - q_hi]), q_lo, q_hi))
        qj = total - qi
        keep = (qj >= q_lo) & (qj <= q_hi)
        ki, qi, kj = np.meshgrid(wi, qi[keep], wj, indexing="ij")
        return ki.ravel(), qi.ravel(), kj.ravel(), np.broadcast_to(qj[keep][None, :, None], ki.shape).ravel()

    def pair_moves(i: int) -> None:
        """With min_sum: the best pair move of client i with any j > i, evaluated in batches of plans."""
        nonlocal value, k, q
        best = (math.inf, k, q)
        parts: list[tuple[int, tuple[np.ndarray, ...]]] = []
        rows = 0
        for j in range(i + 1, n + 1):
            if j < n:
                parts.append((j, pair_candidates(i, j)))
                rows += parts[-1][1][0].size
            if parts and (j == n or rows * n >= _PAIR_BATCH):
                kb, qb = np.tile(k, (rows, 1)), np.tile(q, (rows, 1))
                start = 0
                for jj, (ki, qi, kj, qj) in parts:
                    rows_j = slice(start, start + ki.size)
                    kb[rows_j, i], qb[rows_j, i], kb[rows_j, jj], qb[rows_j, jj] = ki, qi, kj, qj
                    start += ki.size
                cand = _best_plan(f, kb, qb, min_sum)
                if cand[0] < best[0]:
                    best = cand
                parts, rows = [], 0
        if better(best[0]):
            value, k, q = best

    for _ in range(_MAX_SWEEPS):
        before = value
        for i in range(n):
            opts = k_opts[i] if k_opts[i].size <= _MAX_K_TRIALS else _window(k[i], k_opts[i], _K_WINDOW)
            move({i: _pairs(opts, single_q(i))})
        if q_opts is None:
            _, q_new = _relax(f, k, q, [(x, x) for x in k], q_bounds, min_sum)
            v = float(_objective_batch(f, k, q_new))
            if better(v):
                value, q = v, q_new
        if value < before * (1 - _REL_IMPROVEMENT):
            continue
        for i in range(n):
            if min_sum is not None:
                pair_moves(i)
                continue
            for j in range(i + 1, n):
                wi, wj = _window(k[i], k_opts[i], _PAIR_WINDOW), _window(k[j], k_opts[j], _PAIR_WINDOW)
                move({i: (wi, np.full(wi.size, q[i])), j: (wj, np.full(wj.size, q[j]))})
        if value >= before * (1 - _REL_IMPROVEMENT):
            break
    return value, k, q


def _starts(model: FleetModel, k_opts: list[np.ndarray], restarts: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """Starting points: (k_max, q = 1), (k_max, mid q), (k_min, q = 1), then ``restarts`` seeded random ones."""
    lo = np.array([o[0] for o in k_opts])
    hi = np.array([o[-1] for o in k_opts])
    n = lo.shape[0]
    q_min = model.q_min
    starts = [(hi, np.ones(n)), (hi, np.full(n, (q_min + 1) / 2)), (lo, np.ones(n))]
    rng = np.random.default_rng(seed)
    for _ in range(restarts):
        starts.append((rng.uniform(lo, hi), rng.uniform(q_min, 1.0, size=n)))
    return starts


def plan_fleet(
    model: FleetModel,
    *,
    k_grid: Sequence[int] | None = None,
    q_grid: Sequence[float] | None = None,
    restarts: int = 8,
    seed: int = 0,
) -> Plan:
    """The plan (k, q) minimising J = R·E[T] over integer k_i ∈ [k_min_i, k_max_i] and q_i ∈ [q_min, 1] with
    Σ_i q_i ≥ min_participants (within ``SUM_TOLERANCE``).

    k_grid / q_grid: if given, k_i (resp. q_i) takes only grid values within the client's bounds.
    restarts: seeded random starting points, on top of three fixed ones (k_max with q = 1 and with q midway
    between q_min and 1; k_min with q = 1). seed: for those starts; the result is deterministic given it.

    Method: from each start, the continuous relaxation (k real) minimised by TNC with the analytic gradient;
    the start and the relaxed point are each snapped to allowed values (``_round``), and with continuous q, q is
    then re-optimised at the snapped k. The ``_POLISHED`` best distinct snapped points are polished by local
    search (``_polish``) and the best result is returned. A local method: no global-optimality guarantee, but
    never worse than its snapped starts (so never worse than k = k_max, q = 1 when those are allowed).

    Σ q ≥ m = min_participants is enforced only where it can bind (m > N·q_lo, q_lo the smallest allowed q;
    otherwise every plan satisfies it and the search is the unconstrained one, unchanged): the starts' q are
    projected onto it (``_project``), the relaxations use SLSQP (``_relax_constrained``), snapping and local
    search skip plans that break it, and pair moves also shift q between two clients. With continuous q, only
    the snapped relaxed points get their q re-optimised then (not the snapped starts: SLSQP calls are the dear
    part, and skipping those changed no result on the fleets tried).
    Raises InfeasibleFleetError (see ``check_feasible``; also if N times the largest allowed grid q is below
    min_participants), ValueError if a grid has no value in a client's range.
    """
    check_feasible(model)
    if restarts < 0:
        raise ValueError(f"restarts must be >= 0, got {restarts!r}")
    f = _arrays(model)
    k_opts = _k_options(model, k_grid)
    q_opts = _q_options(model, q_grid)
    q_lo = model.q_min if q_opts is None else float(q_opts[0])
    q_hi = 1.0 if q_opts is None else float(q_opts[-1])
    k_bounds = [(float(o[0]), float(o[-1])) for o in k_opts]
    min_sum = _binding_sum(model, q_opts)

    # --- continuous relaxation from every start; the start and the result snapped to allowed values
    snapped: dict[tuple, tuple[float, np.ndarray, np.ndarray]] = {}
    for k0, q0 in _starts(model, k_opts, restarts, seed):
        q0 = np.clip(q0, q_lo, q_hi) if min_sum is None else _project(q0, q_lo, q_hi, min_sum)
        for relaxed, (k, q) in enumerate(((k0, q0), _relax(f, k0, q0, k_bounds, (q_lo, q_hi), min_sum))):
            value, ks, qs = _round(f, k, q, k_opts, q_opts, min_sum)
            if q_opts is None and (relaxed or min_sum is None):  # with min_sum, SLSQP calls are the dear part
                _, q_new = _relax(f, ks, qs, [(x, x) for x in ks], (q_lo, q_hi), min_sum)
                v = float(_objective_batch(f, ks, q_new))
                if v < value:  # the relaxation might stop on a worse point
                    value, qs = v, q_new
            snapped.setdefault((tuple(ks), tuple(np.round(qs, 6))), (value, ks, qs))

    # --- local search from the best distinct snapped points
    best = None
    for _, ks, qs in sorted(snapped.values(), key=lambda c: c[0])[:_POLISHED]:
        cand = _polish(f, ks, qs, k_opts, q_opts, (q_lo, q_hi), min_sum)
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None
    return _plan(model, [round(x) for x in best[1]], best[2].tolist())


def _binding_sum(model: FleetModel, q_opts: np.ndarray | None) -> float | None:
    """min_participants if Σ q ≥ it can bind over the allowed q (> N·smallest allowed q), else None.

    Raises InfeasibleFleetError if it exceeds N·largest allowed q (only possible with a q grid below 1:
    ``check_feasible`` has already ruled out min_participants > N).
    """
    m, n = model.min_participants, model.n_clients
    q_lo = model.q_min if q_opts is None else float(q_opts[0])
    q_hi = 1.0 if q_opts is None else float(q_opts[-1])
    if m > n * q_hi + SUM_TOLERANCE:
        raise InfeasibleFleetError(
            f"infeasible fleet: min_participants = {m:g} but the largest allowed q_grid value {q_hi:g} gives at "
            f"most {n}·{q_hi:g} = {n * q_hi:g} expected participants (FleetModel.min_participants)"
        )
    return m if m > n * q_lo + SUM_TOLERANCE else None


def brute_force(model: FleetModel, k_grid: Sequence[int], q_grid: Sequence[float]) -> Plan:
    """Exhaustive search of J over the grid (k_grid ∩ [k_min_i, k_max_i]) × (q_grid ∩ [q_min, 1]) per client,
    skipping combinations with Σ q < min_participants.

    For small fleets: raises ValueError if the grid has more than ``MAX_BRUTE_FORCE`` combinations. Ties go to
    the first combination in lexicographic order (client 0 slowest-varying; k before q). Raises
    InfeasibleFleetError (see ``check_feasible``) or if no grid combination has Σ q ≥ min_participants.
    """
    check_feasible(model)
    f = _arrays(model)
    k_opts = _k_options(model, k_grid)
    q_opts = _q_options(model, q_grid)
    assert q_opts is not None
    total = math.prod(o.size * q_opts.size for o in k_opts)
    if total > MAX_BRUTE_FORCE:
        raise ValueError(f"brute_force: the grid has {total} combinations, more than {MAX_BRUTE_FORCE}")
    min_sum = _binding_sum(model, q_opts)
    pairs = [_pairs(o, q_opts) for o in k_opts]
    value, k, q = _best_combination(f, [p[0] for p in pairs], [p[1] for p in pairs], min_sum)
    if min_sum is not None and not math.isfinite(value):  # not expected after _binding_sum
        raise InfeasibleFleetError(
            f"infeasible fleet: no grid plan has Σ q ≥ min_participants = {model.min_participants:g} "
            "(FleetModel.min_participants)"
        )
    return _plan(model, [round(x) for x in k], q.tolist())


def uniform_baseline(model: FleetModel, clients_per_round: int, k: Sequence[int]) -> Plan:
    """Uniform sampling of m = ``clients_per_round`` clients with sketch sizes k, for comparison tables.

    Every q_i = m / N (q_min and min_participants do not apply; Σ q = m here; k must lie in [k_min_i, k_max_i]).
    Caveat: uniform sampling draws exactly m clients without replacement, but the round time is predicted with
    the independent-joins closed form (E[T] of ``expected_round_s``: variable round size, empty rounds possible)
    and the rounds with the same surrogate R(k, q), so both are approximations for the baseline; wireless shares
    use the same B / (1 + Σ_{j≠i} q_j) = B / (1 + (N − 1)·m / N) proxy.
    """
    n = model.n_clients
    m = operator.index(clients_per_round)
    if not 1 <= m <= n:
        raise ValueError(f"clients_per_round must be in [1, {n}], got {clients_per_round!r}")
    _check_k(model, k)
    return _plan(model, k, [m / n] * n)

"""Wireless uplink model: path loss, Shannon rates on allocated bandwidth, min-max bandwidth allocation.

Pure functions on floats (float64); nothing here is wired into the round loop yet.

Channel model (3GPP-like urban macro path loss, as used in most federated-learning-over-wireless papers):

    PL_dB(d) = ref_loss_db + 10·α·log10(d / ref_distance_m)      (default 128.1 + 37.6·log10(d / 1 km))
    g        = 10^(−PL_dB / 10)                                  (linear power gain, dimensionless)
    snr(b)   = p·g / (N0·b)                                      (p in W, N0 in W/Hz, b in Hz)
    r(b)     = b·log2(1 + p·g / (N0·b))                          (bit/s; r(0) = 0)

r is increasing and concave in b and bounded: r(b) → p·g / (N0·ln 2) as b → ∞, so an upload of L bits can never
take less than L·N0·ln 2 / (p·g) seconds however much bandwidth it gets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.optimize import brentq

NOISE_PSD_W_PER_HZ = 10 ** (-174 / 10) / 1000  # −174 dBm/Hz thermal noise at room temperature, in W/Hz


@dataclass(frozen=True)
class Channel:
    """One client's uplink to the server.

    distance_m: client–server distance in metres (> 0).
    tx_power_w: transmit power in watts (> 0).
    noise_psd_w_per_hz: noise power spectral density N0 in W/Hz (default −174 dBm/Hz).
    path_loss_exponent: α; the path loss grows by 10·α dB per decade of distance (default 3.76).
    ref_loss_db: path loss in dB at ``ref_distance_m`` (default 128.1 dB at 1 km).
    ref_distance_m: reference distance in metres (default 1000).
    """

    distance_m: float
    tx_power_w: float
    noise_psd_w_per_hz: float = NOISE_PSD_W_PER_HZ
    path_loss_exponent: float = 3.76
    ref_loss_db: float = 128.1
    ref_distance_m: float = 1000.0

    def __post_init__(self) -> None:
        for name in ("distance_m", "tx_power_w", "noise_psd_w_per_hz", "ref_distance_m"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Channel.{name} must be a positive finite number, got {value!r}")
        for name in ("path_loss_exponent", "ref_loss_db"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"Channel.{name} must be finite, got {value!r}")


def path_loss_db(ch: Channel) -> float:
    """Path loss in dB: ref_loss_db + 10·α·log10(distance / ref_distance)."""
    return ch.ref_loss_db + 10 * ch.path_loss_exponent * math.log10(ch.distance_m / ch.ref_distance_m)


def channel_gain(ch: Channel) -> float:
    """Linear (dimensionless) power gain g = 10^(−PL_dB / 10)."""
    return 10 ** (-path_loss_db(ch) / 10)


def _check_bandwidth(bandwidth_hz: float) -> None:
    if not (bandwidth_hz >= 0 and math.isfinite(bandwidth_hz)):
        raise ValueError(f"bandwidth_hz must be a finite number >= 0, got {bandwidth_hz!r}")


def snr(ch: Channel, bandwidth_hz: float) -> float:
    """Signal-to-noise ratio p·g / (N0·b) (dimensionless) on ``bandwidth_hz`` Hz; inf for b = 0."""
    _check_bandwidth(bandwidth_hz)
    if bandwidth_hz == 0:
        return math.inf
    return ch.tx_power_w * channel_gain(ch) / (ch.noise_psd_w_per_hz * bandwidth_hz)


def _rate(received_over_n0: float, bandwidth_hz: float) -> float:
    """b·log2(1 + a/b) in bit/s for a = p·g/N0 in Hz; 0 at b = 0."""
    if bandwidth_hz <= 0:
        return 0.0
    return bandwidth_hz * math.log1p(received_over_n0 / bandwidth_hz) / math.log(2)


def shannon_rate_bps(ch: Channel, bandwidth_hz: float) -> float:
    """Achievable rate b·log2(1 + p·g / (N0·b)) in bit/s on ``bandwidth_hz`` Hz (0 for b = 0)."""
    _check_bandwidth(bandwidth_hz)
    return _rate(ch.tx_power_w * channel_gain(ch) / ch.noise_psd_w_per_hz, bandwidth_hz)


def rate_limit_bps(ch: Channel) -> float:
    """Supremum of the rate over all bandwidths, p·g / (N0·ln 2), in bit/s."""
    return ch.tx_power_w * channel_gain(ch) / (ch.noise_psd_w_per_hz * math.log(2))


def upload_time_s(bits: float, ch: Channel, bandwidth_hz: float) -> float:
    """Seconds to upload ``bits`` bits on ``bandwidth_hz`` Hz: bits / rate (0 for 0 bits, inf for b = 0)."""
    if not (bits >= 0 and math.isfinite(bits)):
        raise ValueError(f"bits must be a finite number >= 0, got {bits!r}")
    if bits == 0:
        return 0.0
    rate = shannon_rate_bps(ch, bandwidth_hz)
    return math.inf if rate == 0 else bits / rate


def equal_shares(total_bandwidth_hz: float, n: int) -> list[float]:
    """Split ``total_bandwidth_hz`` Hz into ``n`` equal shares (Hz each)."""
    if not (total_bandwidth_hz > 0 and math.isfinite(total_bandwidth_hz)):
        raise ValueError(f"total_bandwidth_hz must be a positive finite number, got {total_bandwidth_hz!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    return [total_bandwidth_hz / n] * n if n else []


def _bandwidth_for_rate(received_over_n0: float, target_bps: float) -> float:
    """Smallest b (Hz) with b·log2(1 + a/b) ≥ target; inf when the target is at or above the rate limit."""
    if target_bps <= 0:
        return 0.0
    if target_bps >= received_over_n0 / math.log(2):
        return math.inf
    hi = max(target_bps, 1.0)
    for _ in range(2100):  # doubling from ≥ 1 Hz reaches float max in < 1100 steps
        if _rate(received_over_n0, hi) >= target_bps:
            break
        hi *= 2
        if not math.isfinite(hi):
            return math.inf
    else:
        return math.inf
    return brentq(lambda b: _rate(received_over_n0, b) - target_bps, 0.0, hi, xtol=1e-12, maxiter=500)


def min_max_allocation(
    fixed_s: Sequence[float],
    bits: Sequence[float],
    channels: Sequence[Channel],
    total_bandwidth_hz: float,
    tol: float = 1e-9,
) -> tuple[list[float], float]:
    """Split ``total_bandwidth_hz`` to minimise the round time max_i (fixed_s[i] + bits[i] / rate_i(b_i)).

    fixed_s: seconds each participant spends before uploading (download + computation), ≥ 0.
    bits: upload size of each participant in bits, ≥ 0.
    channels: each participant's uplink.
    total_bandwidth_hz: B in Hz, > 0.
    tol: relative tolerance on the round time and on Σ b_i = B.

    At the optimum every participant with bits > 0 finishes at the same time T (giving one of them more bandwidth
    would otherwise shorten the maximum), so T solves Σ_i b_i(T) = B with b_i(T) the bandwidth at which
    participant i finishes exactly at T. Σ_i b_i(T) decreases in T: bisect T between max_i (fixed_i + bits_i /
    rate limit_i) (infinite bandwidth needed) and the equal-shares round time (feasible); b_i(T) is found by
    Brent's method since the rate is increasing in b. Participants with bits = 0 get 0 Hz and finish at
    fixed_s[i]; if nobody has bits to send, every share is 0.

    Returns (allocation in Hz, round time in s = max over all participants of their finish time).
    """
    n = len(fixed_s)
    if len(bits) != n:
        raise ValueError(f"bits has {len(bits)} entries but fixed_s has {n}")
    if len(channels) != n:
        raise ValueError(f"channels has {len(channels)} entries but fixed_s has {n}")
    if not (total_bandwidth_hz > 0 and math.isfinite(total_bandwidth_hz)):
        raise ValueError(f"total_bandwidth_hz must be a positive finite number, got {total_bandwidth_hz!r}")
    if not (0 < tol < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    for i, (f, L) in enumerate(zip(fixed_s, bits, strict=True)):
        if not (f >= 0 and math.isfinite(f)):
            raise ValueError(f"fixed_s[{i}] must be a finite number >= 0, got {f!r}")
        if not (L >= 0 and math.isfinite(L)):
            raise ValueError(f"bits[{i}] must be a finite number >= 0, got {L!r}")
    for i, ch in enumerate(channels):
        if not isinstance(ch, Channel):
            raise ValueError(f"channels[{i}] must be a Channel, got {type(ch).__name__}")

    fixed = [float(f) for f in fixed_s]
    sizes = [float(L) for L in bits]
    active = [i for i in range(n) if sizes[i] > 0]
    idle_time = max((fixed[i] for i in range(n) if sizes[i] == 0), default=0.0)
    alloc = [0.0] * n
    if not active:
        return alloc, idle_time

    a = {i: channels[i].tx_power_w * channel_gain(channels[i]) / channels[i].noise_psd_w_per_hz for i in active}

    def needed(t: float) -> dict[int, float]:
        out = {}
        for i in active:
            if t <= fixed[i]:
                out[i] = math.inf
            else:
                out[i] = _bandwidth_for_rate(a[i], sizes[i] / (t - fixed[i]))
        return out

    def finish(i: int, b: float) -> float:
        rate = _rate(a[i], b)
        return math.inf if rate == 0 else fixed[i] + sizes[i] / rate

    share = total_bandwidth_hz / len(active)
    lo = max(fixed[i] + sizes[i] * math.log(2) / a[i] for i in active)  # infeasible: needs infinite bandwidth
    hi = max(finish(i, share) for i in active)  # feasible: equal shares among the active participants
    best = needed(hi)
    for _ in range(400):
        used = sum(best.values())
        if (hi - lo <= tol * hi and total_bandwidth_hz - used <= tol * total_bandwidth_hz) or hi - lo <= 4e-16 * hi:
            break
        mid = 0.5 * (lo + hi)
        b_mid = needed(mid)
        if sum(b_mid.values()) <= total_bandwidth_hz:
            hi, best = mid, b_mid
        else:
            lo = mid
    used = sum(best.values())
    scale = total_bandwidth_hz / used if used > 0 else 1.0  # ≥ 1: hand out the leftover, which only speeds up
    for i in active:
        alloc[i] = best[i] * scale
    round_s = max(max(finish(i, alloc[i]) for i in active), idle_time)
    return alloc, round_s


def expected_max_time(times: Sequence[float], probs: Sequence[float]) -> float:
    """E[max_{i∈S} t_i] in seconds when client i is in S independently with probability probs[i].

    The max over an empty S is 0. With times sorted in decreasing order t_(1) ≥ t_(2) ≥ ..., the i-th is the
    maximum exactly when it joins and none before it does:

        E = Σ_i t_(i) · q_(i) · Π_{j<i} (1 − q_(j)).

    The per-client times must be fixed in advance. When the bandwidth split depends on who joined (as with
    ``min_max_allocation`` over the realised participants), the round time is not a max of fixed per-client times
    and this function does not give its expectation.
    """
    if len(probs) != len(times):
        raise ValueError(f"probs has {len(probs)} entries but times has {len(times)}")
    for i, (t, q) in enumerate(zip(times, probs, strict=True)):
        if math.isnan(t):
            raise ValueError(f"times[{i}] is NaN")
        if not (0 <= q <= 1):
            raise ValueError(f"probs[{i}] must be in [0, 1], got {q!r}")
    order = sorted(range(len(times)), key=lambda i: times[i], reverse=True)
    total = 0.0
    none_before = 1.0  # probability that no client with a larger time joined
    for i in order:
        q = float(probs[i])
        if q > 0:
            total += float(times[i]) * q * none_before
        none_before *= 1.0 - q
    return total

"""The system model behind ``sim_round_s``: how long a round would take on the clients' hardware and links.

Participant i of a round, training rank k_i on T_i tokens, takes

    t_i = 8·D_i / R_i^down  +  T_i·(1 + κ·k_i) / ((1 + κ·r)·c_i)  +  8·U_i / R_i^up

seconds: download D_i bytes, compute (c_i = its tokens/s at the full rank r, κ = ``rank_cost``), upload U_i bytes.
Bytes are the actual serialised payloads. R_i^up is a fixed rate, or (wireless) the Shannon rate on the
bandwidth the round's participants get from the total B: equal shares B/|S|, or the min-max split under which
everyone finishes together. The round ends with its slowest participant, max_i t_i (0 for an empty round).
Nothing here measures wall-clock time, so reruns report identical simulated times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from fedlora.network.wireless import Channel, equal_shares, min_max_allocation, shannon_rate_bps


def dbm_to_w(dbm: float) -> float:
    """Power in watts of ``dbm`` dBm (also W/Hz from dBm/Hz)."""
    return 10 ** (dbm / 10) / 1000


@dataclass(frozen=True)
class ClientProfile:
    """One client's hardware and links.

    tokens_per_s: local training throughput at the full rank, tokens/s.
    downlink_bps / uplink_bps: fixed link rates in bit/s (uplink_bps unused on a wireless uplink).
    channel: its wireless uplink (None for a fixed uplink).
    max_rank: the largest rank its memory allows.
    """

    tokens_per_s: float
    downlink_bps: float
    uplink_bps: float
    channel: Channel | None = None
    max_rank: int | None = None

    def summary(self) -> dict:
        out = {
            "tokens_per_s": self.tokens_per_s,
            "downlink_mbps": self.downlink_bps / 1e6,
            "max_rank": self.max_rank,
        }
        if self.channel is None:
            out["uplink_mbps"] = self.uplink_bps / 1e6
        else:
            out["distance_m"] = self.channel.distance_m
            out["tx_power_w"] = self.channel.tx_power_w
        return out


@dataclass(frozen=True)
class RoundTiming:
    """round_s: the round's simulated seconds; client_s: each participant's t_i; bandwidth_hz: its uplink share
    (wireless) or None."""

    round_s: float
    client_s: list[float]
    bandwidth_hz: list[float] | None = None


@dataclass(frozen=True)
class SystemModel:
    profiles: list[ClientProfile]
    rank: int
    rank_cost: float = 0.0
    uplink: Literal["fixed", "wireless"] = "fixed"
    bandwidth_hz: float = 10e6
    allocation: Literal["equal", "min_max"] = "equal"

    def __post_init__(self) -> None:
        if self.uplink == "wireless" and any(p.channel is None for p in self.profiles):
            raise ValueError("a wireless uplink needs a channel for every client")

    def compute_s(self, client_id: int, tokens: float, rank: int) -> float:
        """Seconds of local training: T·(1 + κ·k) / ((1 + κ·r)·c_i)."""
        kappa = self.rank_cost
        return tokens * (1 + kappa * rank) / ((1 + kappa * self.rank) * self.profiles[client_id].tokens_per_s)

    def before_upload_s(self, client_id: int, bytes_down: float, tokens: float, rank: int) -> float:
        """Download + computation, seconds."""
        return 8 * bytes_down / self.profiles[client_id].downlink_bps + self.compute_s(client_id, tokens, rank)

    def round(
        self,
        participants: Sequence[int],
        ranks: Sequence[int],
        bytes_down: Sequence[float],
        bytes_up: Sequence[float],
        tokens: Sequence[float],
    ) -> RoundTiming:
        """The simulated time of one round with these participants (lists aligned with ``participants``)."""
        if not participants:
            return RoundTiming(0.0, [], [] if self.uplink == "wireless" else None)
        fixed = [
            self.before_upload_s(cid, down, tok, k)
            for cid, k, down, tok in zip(participants, ranks, bytes_down, tokens, strict=True)
        ]
        bits = [8.0 * up for up in bytes_up]
        if self.uplink == "fixed":
            times = [f + b / self.profiles[cid].uplink_bps for cid, f, b in zip(participants, fixed, bits, strict=True)]
            return RoundTiming(max(times), times)
        channels = [self.profiles[cid].channel for cid in participants]
        if self.allocation == "min_max":
            shares, _ = min_max_allocation(fixed, bits, channels, self.bandwidth_hz)
        else:
            shares = equal_shares(self.bandwidth_hz, len(participants))
        times = [
            f + (0.0 if b == 0 else b / _positive(shannon_rate_bps(ch, share)))
            for f, b, ch, share in zip(fixed, bits, channels, shares, strict=True)
        ]
        return RoundTiming(max(times), times, list(shares))


def _positive(rate: float) -> float:
    return rate if rate > 0 else math.ulp(0.0)

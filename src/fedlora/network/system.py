"""The system model behind ``sim_round_s``: how long a round would take on the clients' hardware and links.

A client's round time is download + computation + upload:
    t_i = 8·bytes_down_i / downlink_i + tokens_i / throughput_i + 8·bytes_up_i / uplink_i
(bytes from the actual serialised payloads, links in bit/s, throughput in tokens/s). The round time is the
slowest participant's, max_i t_i: the server waits for everyone it sampled. It is deterministic (no wall-clock
measurement), so reruns report the same simulated time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientProfile:
    uplink_bps: float
    downlink_bps: float
    tokens_per_s: float


def profiles_from_lists(
    uplink_mbps: list[float], downlink_mbps: list[float], tokens_per_s: list[float]
) -> list[ClientProfile]:
    return [
        ClientProfile(up * 1e6, down * 1e6, tps)
        for up, down, tps in zip(uplink_mbps, downlink_mbps, tokens_per_s, strict=True)
    ]


def client_round_time(profile: ClientProfile, bytes_down: int, bytes_up: int, tokens: int) -> float:
    """Seconds for one client: download + local computation + upload."""
    return 8 * bytes_down / profile.downlink_bps + tokens / profile.tokens_per_s + 8 * bytes_up / profile.uplink_bps


def round_time(client_times: list[float]) -> float:
    """The round ends when its slowest participant has uploaded."""
    return max(client_times, default=0.0)

"""Client-level differential privacy: clip each client's update, add Gaussian noise to the aggregate, account ε.

For the methods whose aggregate is a weighted sum of client deltas (FSLoRA, FedIT, FFA-LoRA; docs/privacy.md):

1. clip: client i's update u_i = trained − sent (every factor it trained, all modules together) is scaled to
   norm ≤ C: u_i ← u_i · min(1, C / ‖u_i‖₂) (:func:`clip_update`);
2. aggregate as usual: Δ = Σ_i w_i scatter(u_i);
3. noise: Δ ← Δ + N(0, (σ · C · w_max)² I) on every trained coordinate (:class:`GaussianNoise`), w_max the largest
   weight one client can get in the round, so σ is the noise multiplier of a Gaussian mechanism whose
   sensitivity is w_max · C;
4. account (:func:`epsilon`): uniform sampling (m distinct clients out of N) is sampling without replacement
   under replace-one adjacency (Wang, Balle, Kasiviswanathan 2019), where replacing a client moves the sum by
   up to 2 · w_max · C, so the accountant sees noise multiplier σ/2; independent sampling is Poisson
   subsampling at rate q_i under add/remove adjacency (Mironov, Talwar, Zhang 2019), reported for the worst
   client (largest q_i: every client's ε is at most that). Both via Google's ``dp-accounting`` RDP accountant.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedlora.lora.state import Factors
from fedlora.validation import update_norm

RDP_ORDERS = (*range(2, 65), 80, 96, 128)
"""Integer Rényi orders the accountant optimises over (integers: exact formulas, and fast)."""


def clip_update(sent: Factors, trained: Factors, clip_norm: float) -> tuple[Factors, float]:
    """(sent + u · min(1, C/‖u‖), ‖u‖) with u = trained − sent over every module's B and A together.

    An update already within the bound is returned as is (the same tensors); otherwise new tensors. Factors
    that did not train (trained is sent) stay exactly as sent."""
    norm = update_norm(sent, trained)
    if norm <= clip_norm:
        return trained, norm
    factor = clip_norm / norm
    clipped: Factors = {}
    for name, (sent_B, sent_A) in sent.items():
        B, A = trained[name]
        clipped[name] = (sent_B + factor * (B - sent_B), sent_A + factor * (A - sent_A))
    return clipped, norm


@dataclass(frozen=True)
class GaussianNoise:
    """Noise of standard deviation ``std`` on each coordinate, drawn from ``generator`` (seeded per round)."""

    std: float
    generator: torch.Generator

    def perturb(self, factors: Factors, B: bool = True, A: bool = True) -> Factors:
        """New factors: each B (if ``B``) and A (if ``A``) plus i.i.d. N(0, std²) noise, drawn module by module in
        ``factors``' order, B before A. With std = 0 the factors are returned unchanged (the same tensors)."""
        if self.std == 0:
            return dict(factors)
        noisy: Factors = {}
        for name, (b, a) in factors.items():
            if B:
                b = b + self.std * torch.randn(b.shape, generator=self.generator, dtype=b.dtype)
            if A:
                a = a + self.std * torch.randn(a.shape, generator=self.generator, dtype=a.dtype)
            noisy[name] = (b, a)
        return noisy


def noise_std(clip_norm: float, noise_multiplier: float, max_weight: float) -> float:
    """σ · C · w_max: the std of the noise added to the aggregate Σ w_i clip(u_i)."""
    return noise_multiplier * clip_norm * max_weight


@functools.lru_cache(maxsize=64)
def _round_rdp(sampling: tuple, noise_multiplier: float) -> tuple[float, ...]:
    """RDP at ``RDP_ORDERS`` of one round: ("uniform", N, m) or ("poisson", q)."""
    import dp_accounting  # imported here: it takes ~0.7 s and only DP runs need it
    from dp_accounting import rdp

    gaussian = dp_accounting.GaussianDpEvent
    if sampling[0] == "uniform":
        _, population, per_round = sampling
        accountant = rdp.RdpAccountant(list(RDP_ORDERS), dp_accounting.NeighboringRelation.REPLACE_ONE)
        accountant.compose(
            dp_accounting.SampledWithoutReplacementDpEvent(population, per_round, gaussian(noise_multiplier / 2))
        )
    else:
        accountant = rdp.RdpAccountant(list(RDP_ORDERS))
        accountant.compose(dp_accounting.PoissonSampledDpEvent(sampling[1], gaussian(noise_multiplier)))
    return tuple(float(x) for x in accountant.rdp)


def epsilon(
    rounds: int,
    noise_multiplier: float,
    delta: float,
    *,
    num_clients: int,
    clients_per_round: int | None = None,
    probs: Sequence[float] | None = None,
) -> float:
    """ε of ``rounds`` rounds of the clipped Gaussian mechanism at δ = ``delta`` (RDP accountant, integer orders).

    Uniform sampling: ``clients_per_round`` of ``num_clients`` without replacement (replace-one adjacency; the
    sum's sensitivity is 2C, so the accountant's noise multiplier is σ/2). Independent sampling (``probs``, q_i
    per client): Poisson subsampling at the largest q_i (add/remove adjacency), an upper bound for every client.
    Returns ``math.inf`` for σ = 0 and 0.0 for no rounds.
    """
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from dp_accounting.rdp import rdp_privacy_accountant

    if probs is not None:
        sampling: tuple = ("poisson", float(max(probs)))
    elif clients_per_round is not None:
        sampling = ("uniform", int(num_clients), int(clients_per_round))
    else:
        raise ValueError("epsilon: give clients_per_round (uniform sampling) or probs (independent sampling)")
    rdp = [rounds * x for x in _round_rdp(sampling, float(noise_multiplier))]
    eps, _ = rdp_privacy_accountant.compute_epsilon(list(RDP_ORDERS), rdp, delta)
    return float(eps)

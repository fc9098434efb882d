"""Wireless system model and independent sampling, checked against hand values, brute force and Monte Carlo."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.network.sampling import sample_independent, unbiased_weights
from fedlora.network.wireless import (
    Channel,
    channel_gain,
    equal_shares,
    expected_max_time,
    min_max_allocation,
    shannon_rate_bps,
    snr,
    upload_time_s,
)

distances = st.floats(10.0, 1000.0)
powers = st.floats(0.01, 1.0)


# --- channel and rate -------------------------------------------------------------------------------------------


def test_hand_computed_rate():
    # 100 m: PL = 128.1 + 37.6·log10(0.1) = 90.5 dB; N0 = −174 dBm/Hz = 10^−20.4 W/Hz; p = 0.2 W; b = 1 MHz
    # snr = 0.2 · 10^−9.05 / (10^−20.4 · 10^6) = 0.2 · 10^5.35 ≈ 44774; rate = 10^6 · log2(1 + snr) ≈ 15.45 Mbit/s
    ch = Channel(distance_m=100.0, tx_power_w=0.2)
    assert channel_gain(ch) == pytest.approx(10**-9.05, rel=1e-12)
    assert snr(ch, 1e6) == pytest.approx(0.2 * 10**5.35, rel=1e-12)
    assert shannon_rate_bps(ch, 1e6) == pytest.approx(1e6 * math.log2(1 + 0.2 * 10**5.35), rel=1e-12)
    assert shannon_rate_bps(ch, 1e6) == pytest.approx(15.4506e6, rel=1e-4)
    assert upload_time_s(8e6, ch, 1e6) == pytest.approx(8e6 / shannon_rate_bps(ch, 1e6), rel=1e-15)


def test_zero_bandwidth():
    ch = Channel(distance_m=200.0, tx_power_w=0.1)
    assert shannon_rate_bps(ch, 0.0) == 0.0
    assert upload_time_s(1e6, ch, 0.0) == math.inf
    assert upload_time_s(0.0, ch, 0.0) == 0.0


@settings(max_examples=50, deadline=None)
@given(distances, powers)
def test_rate_increasing_and_concave_in_bandwidth(d, p):
    ch = Channel(distance_m=d, tx_power_w=p)
    grid = np.linspace(0.0, 2e7, 201)
    rates = np.array([shannon_rate_bps(ch, float(b)) for b in grid])
    first = np.diff(rates)
    second = np.diff(rates, n=2)
    assert np.all(first > 0)
    assert np.all(second <= 1e-9 * rates.max())  # concave (second differences ≤ 0 up to rounding)


def test_equal_shares():
    assert equal_shares(10.0, 4) == [2.5] * 4
    assert equal_shares(10.0, 0) == []


# --- min-max bandwidth allocation ---------------------------------------------------------------------------------


@st.composite
def allocation_problems(draw):
    n = draw(st.integers(1, 8))
    fixed = draw(st.lists(st.floats(0.0, 10.0), min_size=n, max_size=n))
    bits = draw(st.lists(st.one_of(st.just(0.0), st.floats(1e4, 1e8)), min_size=n, max_size=n))
    chans = [Channel(distance_m=draw(distances), tx_power_w=draw(powers)) for _ in range(n)]
    total = draw(st.floats(1e5, 1e8))
    return fixed, bits, chans, total


def _finish(fixed, bits, chans, alloc):
    return [f + upload_time_s(L, ch, b) for f, L, ch, b in zip(fixed, bits, chans, alloc, strict=True)]


@settings(max_examples=80, deadline=None)
@given(allocation_problems())
def test_min_max_allocation_equalises_and_beats_equal_shares(problem):
    fixed, bits, chans, total = problem
    alloc, t = min_max_allocation(fixed, bits, chans, total)
    active = [i for i in range(len(bits)) if bits[i] > 0]
    assert all(b >= 0 for b in alloc)
    assert all(alloc[i] == 0 for i in range(len(bits)) if bits[i] == 0)
    finish = _finish(fixed, bits, chans, alloc)
    assert t == pytest.approx(max(finish), rel=1e-12)
    if active:
        assert math.fsum(alloc) == pytest.approx(total, rel=1e-9)
        times = [finish[i] for i in active]
        assert max(times) - min(times) <= 1e-6 * max(times)  # everyone with bits finishes together
    equal = max(_finish(fixed, bits, chans, equal_shares(total, len(bits))))
    assert t <= equal * (1 + 1e-9)


def test_min_max_allocation_nobody_uploads():
    chans = [Channel(100.0, 0.1), Channel(300.0, 0.1)]
    assert min_max_allocation([1.0, 2.0], [0.0, 0.0], chans, 1e6) == ([0.0, 0.0], 2.0)
    assert min_max_allocation([], [], [], 1e6) == ([], 0.0)


def test_min_max_allocation_favours_far_client():
    chans = [Channel(50.0, 0.2), Channel(800.0, 0.2)]
    alloc, t = min_max_allocation([0.0, 0.0], [1e7, 1e7], chans, 1e7)
    assert alloc[1] > alloc[0]
    assert t < max(_finish([0.0, 0.0], [1e7, 1e7], chans, [5e6, 5e6]))


# --- expected round time under independent sampling -------------------------------------------------------------


def _enumerate_expected_max(times, probs):
    total = 0.0
    for mask in itertools.product([0, 1], repeat=len(times)):
        p = math.prod(q if m else 1 - q for q, m in zip(probs, mask, strict=True))
        total += p * max((t for t, m in zip(times, mask, strict=True) if m), default=0.0)
    return total


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 6).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.0, 100.0), min_size=n, max_size=n),
    st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n),
)))  # fmt: skip
def test_expected_max_time_matches_enumeration(case):
    times, probs = case
    assert expected_max_time(times, probs) == pytest.approx(_enumerate_expected_max(times, probs), rel=1e-12, abs=1e-12)


def test_expected_max_time_matches_monte_carlo():
    rng = np.random.default_rng(0)
    times = rng.uniform(1.0, 20.0, size=10)
    times[3] = times[7]  # a tie
    probs = rng.uniform(0.05, 1.0, size=10)
    draws = 200_000
    joined = rng.random((draws, 10)) < probs
    round_times = np.where(joined, times, 0.0).max(axis=1)  # empty round → 0
    se = round_times.std(ddof=1) / math.sqrt(draws)
    exact = expected_max_time(times.tolist(), probs.tolist())
    assert abs(round_times.mean() - exact) < 5 * se  # 5 standard errors: false alarm ≈ 6e-7 (fixed seed anyway)


# --- independent sampling and unbiased weights ------------------------------------------------------------------


def test_sample_independent_extremes():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        assert sample_independent([1.0, 1.0, 1.0], g) == [0, 1, 2]
    assert sample_independent([], g) == []
    seen_empty = any(sample_independent([0.05, 0.05], g) == [] for _ in range(50))
    assert seen_empty


def test_unbiased_aggregate():
    gen = torch.Generator().manual_seed(0)
    n, dim, draws = 6, 5, 20_000
    xs = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    a = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    q = [0.15, 0.3, 0.5, 0.7, 0.9, 1.0]
    target = (a[:, None] * xs).sum(0)
    acc = torch.zeros(dim, dtype=torch.float64)
    for _ in range(draws):
        s = sample_independent(q, gen)
        w = unbiased_weights(s, a.tolist(), q)
        if s:
            acc += (torch.tensor(w, dtype=torch.float64)[:, None] * xs[s]).sum(0)
    mean = acc / draws
    # per coordinate Var = Σ_i (a_i x_i)² (1 − q_i) / q_i; allow 5 standard errors
    qt = torch.tensor(q, dtype=torch.float64)
    var = ((a[:, None] * xs) ** 2 * ((1 - qt) / qt)[:, None]).sum(0)
    se = (var / draws).sqrt()
    assert torch.all((mean - target).abs() < 5 * se)


def test_unbiased_weights_values():
    assert unbiased_weights([0, 2], [0.2, 0.3, 0.5], [0.5, 1.0, 0.25]) == [0.4, 2.0]
    assert unbiased_weights([], [0.2], [0.5]) == []


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: Channel(distance_m=0.0, tx_power_w=0.1), "distance_m"),
        (lambda: Channel(distance_m=10.0, tx_power_w=-1.0), "tx_power_w"),
        (lambda: shannon_rate_bps(Channel(10.0, 0.1), -1.0), "bandwidth_hz"),
        (lambda: upload_time_s(-1.0, Channel(10.0, 0.1), 1e6), "bits"),
        (lambda: equal_shares(0.0, 3), "total_bandwidth_hz"),
        (lambda: min_max_allocation([0.0], [-1.0], [Channel(10.0, 0.1)], 1e6), "bits"),
        (lambda: min_max_allocation([-1.0], [1.0], [Channel(10.0, 0.1)], 1e6), "fixed_s"),
        (lambda: min_max_allocation([0.0], [1.0], [Channel(10.0, 0.1)], 0.0), "total_bandwidth_hz"),
        (lambda: min_max_allocation([0.0, 0.0], [1.0], [Channel(10.0, 0.1)], 1e6), "bits"),
        (lambda: min_max_allocation([0.0], [1.0], [], 1e6), "channels"),
        (lambda: expected_max_time([1.0, 2.0], [0.5]), "probs"),
        (lambda: expected_max_time([1.0], [1.5]), "probs"),
        (lambda: sample_independent([0.5, 0.0], torch.Generator()), "probs"),
        (lambda: sample_independent([1.2], torch.Generator()), "probs"),
        (lambda: unbiased_weights([0], [1.0], [0.0]), "probs"),
        (lambda: unbiased_weights([0], [1.0, 2.0], [0.5]), "base_weights"),
        (lambda: unbiased_weights([3], [1.0], [0.5]), "participants"),
    ],
)
def test_bad_input_names_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --- edges the mutation run found unguarded (docs/testing.md) ------------------------------------------------------


def test_snr_at_one_hertz_is_the_formula():
    ch = Channel(distance_m=100.0, tx_power_w=0.2)
    expected = ch.tx_power_w * channel_gain(ch) / (ch.noise_psd_w_per_hz * 1.0)
    assert snr(ch, 1.0) == pytest.approx(expected, rel=1e-12) and math.isfinite(snr(ch, 1.0))
    assert snr(ch, 0.0) == math.inf


def test_bandwidth_for_rate_edges():
    """0 bit/s needs 0 Hz; a rate below 1 bit/s (root below 1 Hz) and one just above 1 bit/s are solved exactly:
    the rate at the returned bandwidth is the target, to 1e-9."""
    from fedlora.network.wireless import _bandwidth_for_rate, _rate

    a = 1e6  # p·g/N0 in Hz
    assert _bandwidth_for_rate(a, 0.0) == 0.0
    for target in (1e-3, 0.5, 1.5, 3e5):
        b = _bandwidth_for_rate(a, target)
        assert 0 < b < math.inf
        assert _rate(a, b) == pytest.approx(target, rel=1e-9)
    assert _bandwidth_for_rate(a, a / math.log(2)) == math.inf  # the rate limit itself is out of reach


@pytest.mark.parametrize("tol", [0.0, 1.0, 1.5, -0.1])
def test_min_max_allocation_rejects_tol_outside_0_1(tol):
    with pytest.raises(ValueError, match=r"^tol must be in \(0, 1\), got"):
        min_max_allocation([0.0], [1.0], [Channel(10.0, 0.1)], 1e6, tol=tol)


def test_min_max_allocation_bad_inputs_name_the_entry():
    ch = Channel(10.0, 0.1)
    with pytest.raises(ValueError, match=r"^channels\[1\] must be a Channel, got str$"):
        min_max_allocation([0.0, 0.0], [1.0, 1.0], [ch, "ch"], 1e6)
    with pytest.raises(ValueError, match=r"^total_bandwidth_hz must be a positive finite number, got 0.0$"):
        min_max_allocation([0.0], [1.0], [ch], 0.0)


def test_min_max_allocation_small_numbers_are_not_special():
    """Half a hertz in total and half a bit each are valid: both participants get bandwidth, all of it is used,
    and they finish together."""
    chans = [Channel(10.0, 0.1), Channel(50.0, 0.1)]
    alloc, t = min_max_allocation([0.0, 0.0], [0.5, 0.5], chans, 0.5)
    assert all(b > 0 for b in alloc) and sum(alloc) == pytest.approx(0.5, rel=1e-6)
    finish = [0.5 / shannon_rate_bps(ch, b) for ch, b in zip(chans, alloc, strict=True)]
    assert finish == pytest.approx([t, t], rel=1e-6)


def test_expected_max_time_names_a_nan_time():
    with pytest.raises(ValueError, match=r"^times\[1\] is NaN$"):
        expected_max_time([1.0, math.nan], [0.5, 0.5])


def test_sample_independent_single_client_and_reproducible():
    assert sample_independent([1.0], torch.Generator().manual_seed(0)) == [0]  # one client is not "no client"
    draws = [sample_independent([0.5] * 20, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert draws[0] == draws[1]  # the caller's generator decides, nothing else
    torch.manual_seed(0)
    a = sample_independent([0.5] * 20, torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    assert sample_independent([0.5] * 20, torch.Generator().manual_seed(3)) == a  # the global RNG plays no part


@pytest.mark.parametrize("bad", ["a", 1.5, 4, -1])
def test_unbiased_weights_rejects_ids_that_are_not_clients(bad):
    with pytest.raises(ValueError, match=r"participants contains .*, not a client id in \[0, 4\)"):
        unbiased_weights([bad], [0.25] * 4, [0.5] * 4)

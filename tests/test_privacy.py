"""Client-level DP: clipping, the noise's scale, the accountant's ε, exactness without noise, config errors."""

import json
import math
from pathlib import Path

import pytest
import torch
from scipy.special import comb

from fedlora import federation, privacy, rundir
from fedlora.config import load_config
from fedlora.errors import ConfigError
from fedlora.lora.state import unflatten_factors
from fedlora.validation import update_norm

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
FAST = ["data.max_examples=48", "train.local_steps=2", "eval.before=false", "eval.every=9", "server.weighting=uniform"]


def _factors(seed: int, scale: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {name: (scale * torch.randn(8, 3, generator=g), scale * torch.randn(3, 5, generator=g)) for name in "ab"}


# ------------------------------------------------------------------------------------------- clipping


def test_clipping_bounds_each_update_and_keeps_its_direction():
    sent = _factors(0)
    step = _factors(1, 5.0)
    trained = {name: (B + step[name][0], A + step[name][1]) for name, (B, A) in sent.items()}
    norm = update_norm(sent, trained)
    assert norm > 10
    clipped, reported = privacy.clip_update(sent, trained, clip_norm=2.0)
    assert reported == pytest.approx(norm)
    assert update_norm(sent, clipped) == pytest.approx(2.0, rel=1e-6)
    for name in sent:
        for i in range(2):
            expected = sent[name][i] + (2.0 / norm) * (trained[name][i] - sent[name][i])
            torch.testing.assert_close(clipped[name][i], expected)
    same, _ = privacy.clip_update(sent, trained, clip_norm=norm * 1.01)  # within the bound: untouched
    assert all(same[n][i] is trained[n][i] for n in sent for i in range(2))


def test_clipping_leaves_untrained_factors_exactly_as_sent():
    sent = _factors(0)
    trained = {name: (B + 10.0, A) for name, (B, A) in sent.items()}  # A frozen (FFA-LoRA)
    clipped, _ = privacy.clip_update(sent, trained, clip_norm=1.0)
    assert all(torch.equal(clipped[n][1], sent[n][1]) for n in sent)


# ---------------------------------------------------------------------------------------------- noise


def test_noise_has_the_requested_std():
    """10 000 draws: the sample std is within 3 % of σ (its relative s.e. is 1/√(2n) ≈ 0.7 %), the mean ≈ 0."""
    zeros = {"m": (torch.zeros(100, 40), torch.zeros(40, 150))}
    noisy = privacy.GaussianNoise(0.37, torch.Generator().manual_seed(3)).perturb(zeros)
    values = torch.cat([noisy["m"][0].flatten(), noisy["m"][1].flatten()]).double()
    assert values.numel() == 10_000
    assert float(values.std()) == pytest.approx(0.37, rel=0.03)
    assert abs(float(values.mean())) < 4 * 0.37 / 100
    frozen = privacy.GaussianNoise(0.37, torch.Generator().manual_seed(3)).perturb(zeros, A=False)
    assert not frozen["m"][1].any() and torch.equal(frozen["m"][0], noisy["m"][0])
    assert zeros["m"][0].abs().sum() == 0  # the caller's tensors are not touched


def _global(out: Path) -> dict:
    _, tensors, _ = rundir.load_checkpoint(out)
    return unflatten_factors(tensors, prefix="global.")


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / rundir.METRICS_FILE).read_text().splitlines()]


@pytest.mark.parametrize("method", ["fedit", "ffa"])
def test_a_dp_round_adds_noise_of_std_sigma_c_over_participants(tmp_path, method):
    """Same round with σ = 0.5 and σ = 0 (noise has its own generator, clients train the same): the globals
    differ by the noise alone, whose std is σ · C / |participants| (FedIT at lr 1: global = old + Δ + noise)."""
    common = [*FAST, f"method={method}", "rounds=1", "privacy.clip_norm=0.05"]
    federation.run(load_config(TINY, [*common, "privacy.noise_multiplier=0.5"]), tmp_path / "noisy")
    federation.run(load_config(TINY, [*common, "privacy.noise_multiplier=0"]), tmp_path / "quiet")
    record = _records(tmp_path / "noisy")[0]
    assert record["dp_noise_std"] == pytest.approx(0.5 * 0.05 / 3)
    assert record["dp_clipped"] == 3  # this tight C clips every client
    noisy, quiet = _global(tmp_path / "noisy"), _global(tmp_path / "quiet")
    diffs_B = torch.cat([(noisy[n][0] - quiet[n][0]).flatten() for n in noisy]).double()
    diffs_A = torch.cat([(noisy[n][1] - quiet[n][1]).flatten() for n in noisy]).double()
    assert diffs_B.numel() > 1500
    assert float(diffs_B.std()) == pytest.approx(record["dp_noise_std"], rel=0.08)
    if method == "ffa":
        assert not diffs_A.any()  # A is frozen: no noise on it
    else:
        assert float(diffs_A.std()) == pytest.approx(record["dp_noise_std"], rel=0.08)


@pytest.mark.parametrize("method", ["fedit", "fslora"])
def test_no_noise_and_a_huge_clip_bound_is_exactly_the_non_dp_run(tmp_path, method):
    common = [*FAST, f"method={method}", "rounds=2"]
    federation.run(load_config(TINY, common), tmp_path / "plain")
    federation.run(load_config(TINY, [*common, "privacy.clip_norm=1e9", "privacy.noise_multiplier=0"]), tmp_path / "dp")
    adapter = "adapter/adapter_model.safetensors"
    assert (tmp_path / "dp" / adapter).read_bytes() == (tmp_path / "plain" / adapter).read_bytes()
    records = _records(tmp_path / "dp")
    assert [r["dp_clipped"] for r in records] == [0, 0] and records[0]["dp_epsilon"] is None  # σ = 0: no ε


def test_epsilon_is_reported_and_grows_with_rounds(tmp_path):
    out = tmp_path / "eps"
    summary = federation.run(
        load_config(TINY, [*FAST, "method=fedit", "rounds=2", "privacy.clip_norm=1", "privacy.noise_multiplier=2"]),
        out,
    )
    eps = [r["dp_epsilon"] for r in _records(out)]
    assert 0 < eps[0] < eps[1] and math.isfinite(eps[1])
    assert summary["privacy"]["epsilon"] == pytest.approx(eps[1])
    assert summary["privacy"]["delta"] == 1e-5 and "RDP" in summary["privacy"]["accounting"]
    expected = privacy.epsilon(2, 2.0, 1e-5, num_clients=4, clients_per_round=3)
    assert eps[1] == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ accountant


def test_epsilon_decreases_with_sigma_and_increases_with_rounds_and_sampling():
    sigmas = [0.5, 1.0, 2.0, 4.0, 8.0]
    uniform = [privacy.epsilon(20, s, 1e-5, num_clients=100, clients_per_round=10) for s in sigmas]
    poisson = [privacy.epsilon(20, s, 1e-5, num_clients=100, probs=[0.1] * 100) for s in sigmas]
    for series in (uniform, poisson):
        assert all(a > b > 0 for a, b in zip(series[:-1], series[1:], strict=True))
    assert privacy.epsilon(40, 1.0, 1e-5, num_clients=100, probs=[0.1]) > poisson[1]
    assert privacy.epsilon(20, 1.0, 1e-5, num_clients=100, probs=[0.05, 0.3]) > poisson[1]  # the worst q counts
    assert privacy.epsilon(20, 0.0, 1e-5, num_clients=100, probs=[0.1]) == math.inf
    assert privacy.epsilon(0, 1.0, 1e-5, num_clients=100, probs=[0.1]) == 0.0


def _poisson_rdp(q: float, sigma: float, alpha: int) -> float:
    """RDP of the Poisson-subsampled Gaussian at integer order α (Mironov, Talwar, Zhang 2019, Sec. 3.3):
    log(Σ_k C(α,k) (1−q)^(α−k) q^k exp((k² − k) / (2σ²))) / (α − 1)."""
    total = sum(
        comb(alpha, k, exact=True) * (1 - q) ** (alpha - k) * q**k * math.exp((k * k - k) / (2 * sigma**2))
        for k in range(alpha + 1)
    )
    return math.log(total) / (alpha - 1)


def test_the_accountant_matches_the_closed_form_rdp():
    rdp = privacy._round_rdp(("poisson", 0.05), 1.3)
    for alpha in (2, 5, 16, 32):
        assert rdp[privacy.RDP_ORDERS.index(alpha)] == pytest.approx(_poisson_rdp(0.05, 1.3, alpha), rel=1e-6)
    # everyone sampled (m = N), replace-one: the plain Gaussian at σ/2, RDP α / (2 (σ/2)²)
    full = privacy._round_rdp(("uniform", 10, 10), 2.0)
    for alpha in (2, 7, 64):
        assert full[privacy.RDP_ORDERS.index(alpha)] == pytest.approx(alpha / (2 * 1.0**2), rel=1e-6)


def test_epsilon_is_within_the_classic_conversion_of_the_closed_form():
    """DP-SGD's textbook case (q = 256/60000, σ = 1.1, 60 epochs, δ = 1e-5): ε ≈ 2.6 with dp-accounting's
    conversion, at most the classic min_α T·RDP(α) + log(1/δ)/(α − 1) (≈ 2.9, Abadi et al. report 2.9 with
    a coarser bound)."""
    q, sigma, steps = 256 / 60000, 1.1, int(60 * 60000 / 256)
    eps = privacy.epsilon(steps, sigma, 1e-5, num_clients=60000, probs=[q])
    classic = min(steps * _poisson_rdp(q, sigma, a) + math.log(1e5) / (a - 1) for a in range(2, 33))
    assert 2.4 < eps <= classic < 3.3


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("method", ["flora", "florist", "flexlora", "hetlora", "fedex"])
def test_dp_with_a_non_averaging_method_is_a_config_error(method):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [f"method={method}", "privacy.clip_norm=1", "server.weighting=uniform"])
    message = str(err.value)
    assert message.startswith("config: privacy.clip_norm: client-level DP needs a method that averages")
    assert f"; {method} " in message and "\n" not in message


def test_dp_under_uniform_sampling_needs_uniform_weights():
    with pytest.raises(ConfigError, match="server.weighting: client-level DP under uniform sampling"):
        load_config(TINY, ["method=fedit", "privacy.clip_norm=1"])
    load_config(TINY, ["method=fedit", "privacy.clip_norm=1", "sampling.scheme=independent", "sampling.probs=0.5"])


# ------------------------------------------------- non-uniform weights, independent sampling, m < N


def test_noise_under_independent_sampling_uses_the_largest_weight_of_all_clients(tmp_path):
    """Independent sampling, q = (0.3, 1, 1, 1), weights a_i = n_i / Σ n (shards of 7, 16, 4, 5 examples): the
    weights a_i / q_i are (0.73, 0.5, 0.125, 0.16) and round 1's participants are clients 1, 2, 3. The noise std
    must be σ · C · 0.73 (client 0's weight, who did not take part: who joins must not change the noise), not
    the participants' largest (0.5, 31 % less) nor their mean (0.26). Checked on the record and on the noise
    itself (noisy minus quiet global of the same round, > 1500 coordinates: the sample std's s.e. is < 2 %)."""
    from fedlora.setup import build

    probs = [0.3, 1.0, 1.0, 1.0]
    common = [
        "data.max_examples=48",
        "train.local_steps=2",
        "eval.before=false",
        "eval.every=9",
        "method=fedit",
        "rounds=1",
        "server.weighting=num_examples",
        "sampling.scheme=independent",
        f"sampling.probs={probs}",
        "privacy.clip_norm=0.05",
    ]
    config = load_config(TINY, [*common, "privacy.noise_multiplier=0.5"])
    sizes = [len(x) for x in build(config, tmp_path / "setup", resume=False).client_examples]
    w = [n / sum(sizes) / q for n, q in zip(sizes, probs, strict=True)]
    federation.run(config, tmp_path / "noisy")
    federation.run(load_config(TINY, [*common, "privacy.noise_multiplier=0"]), tmp_path / "quiet")
    record = _records(tmp_path / "noisy")[0]
    participants = record["participants"]
    assert 0 not in participants and max(w) > 1.3 * max(w[i] for i in participants)  # the case under test
    assert record["dp_noise_std"] == pytest.approx(0.5 * 0.05 * max(w), rel=1e-12)
    noisy, quiet = _global(tmp_path / "noisy"), _global(tmp_path / "quiet")
    diffs = torch.cat([(noisy[n][i] - quiet[n][i]).flatten() for n in noisy for i in range(2)]).double()
    assert diffs.numel() > 1500
    assert float(diffs.std()) == pytest.approx(0.5 * 0.05 * max(w), rel=0.08)


def _dp_accounting_epsilon(event, rounds: int, delta: float, replace_one: bool) -> float:
    """ε straight from Google's dp-accounting's own composition of ``rounds`` events, over fedlora's integer Rényi
    orders (dp-accounting's default orders include fractional ones and give an ε up to ≈ 4 % smaller)."""
    import dp_accounting
    from dp_accounting import rdp

    relation = dp_accounting.NeighboringRelation
    neighbours = relation.REPLACE_ONE if replace_one else relation.ADD_OR_REMOVE_ONE
    accountant = rdp.RdpAccountant(list(privacy.RDP_ORDERS), neighboring_relation=neighbours)
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))


def test_epsilon_of_a_run_with_m_of_n_clients_matches_dp_accounting(tmp_path):
    """3 of 4 clients per round, σ = 2, 3 rounds: each round's ε equals dp-accounting's own composition of the
    sampled-without-replacement Gaussian at σ/2 (replace-one: sensitivity 2C) to 1e-9. The likely slips are far
    off: σ instead of σ/2 gives less than half the ε, Poisson at m/N about 11 % less."""
    import dp_accounting

    out = tmp_path / "eps"
    federation.run(
        load_config(TINY, [*FAST, "method=fedit", "rounds=3", "privacy.clip_norm=1", "privacy.noise_multiplier=2"]), out
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(4, 3, dp_accounting.GaussianDpEvent(2.0 / 2))
    for record in _records(out):
        expected = _dp_accounting_epsilon(event, record["round"], 1e-5, replace_one=True)
        assert record["dp_epsilon"] == pytest.approx(expected, rel=1e-9)


def test_epsilon_under_independent_sampling_matches_dp_accounting():
    """Poisson subsampling at the largest q (the worst client), add/remove adjacency, noise multiplier σ."""
    import dp_accounting

    probs = [0.05, 0.2, 0.1]
    for sigma, rounds in [(1.0, 10), (2.5, 50)]:
        ours = privacy.epsilon(rounds, sigma, 1e-5, num_clients=3, probs=probs)
        event = dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(sigma))
        assert ours == pytest.approx(_dp_accounting_epsilon(event, rounds, 1e-5, replace_one=False), rel=1e-9)


def _fedsb_R(out: Path) -> torch.Tensor:
    _, tensors, _ = rundir.load_checkpoint(out)
    return torch.cat([v.flatten() for k, v in sorted(tensors.items()) if k.startswith("R.")]).double()


def test_fedsb_dp_noise_is_on_R_alone_with_std_sigma_c_over_participants(tmp_path):
    """Fed-SB under DP: the clipped deltas are R_k − R (r×r), the noise N(0, (σ·C/|P|)²) goes on their sum, and the
    fixed frame B, A is untouched (same seed: σ = 0.5 and σ = 0 runs differ by the noise alone)."""
    common = [*FAST, "method=fedsb", "budgets.per_client=[8,8,8,8]", "rounds=1", "privacy.clip_norm=0.05"]
    federation.run(load_config(TINY, [*common, "privacy.noise_multiplier=0.5"]), tmp_path / "noisy")
    federation.run(load_config(TINY, [*common, "privacy.noise_multiplier=0"]), tmp_path / "quiet")
    record = _records(tmp_path / "noisy")[0]
    assert record["dp_noise_std"] == pytest.approx(0.5 * 0.05 / 3) and record["dp_clipped"] == 3
    diffs = _fedsb_R(tmp_path / "noisy") - _fedsb_R(tmp_path / "quiet")
    assert diffs.numel() == 4 * 8 * 8  # 4 modules, r = 8
    assert float(diffs.std()) == pytest.approx(record["dp_noise_std"], rel=0.2)  # 256 draws: ±4.4 % one s.e.
    frames = [rundir.load_checkpoint(tmp_path / d)[1] for d in ("noisy", "quiet")]
    assert all(torch.equal(frames[0][k], frames[1][k]) for k in frames[0] if k.startswith("frame."))


def test_fedsb_no_noise_and_a_huge_clip_bound_is_exactly_the_non_dp_run(tmp_path):
    common = [*FAST, "method=fedsb", "budgets.per_client=[8,8,8,8]", "rounds=2"]
    federation.run(load_config(TINY, common), tmp_path / "plain")
    federation.run(load_config(TINY, [*common, "privacy.clip_norm=1e9", "privacy.noise_multiplier=0"]), tmp_path / "dp")
    adapter = "adapter/adapter_model.safetensors"
    assert (tmp_path / "dp" / adapter).read_bytes() == (tmp_path / "plain" / adapter).read_bytes()

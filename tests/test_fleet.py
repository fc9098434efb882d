"""Client populations, the round-time system model, independent sampling in a run, and plan files."""

import json
import math
from pathlib import Path

import pytest
import tomli_w

from fedlora import federation
from fedlora.config import load_config, validate
from fedlora.errors import ConfigError
from fedlora.network.system import ClientProfile, SystemModel, dbm_to_w
from fedlora.network.wireless import Channel, min_max_allocation, shannon_rate_bps
from fedlora.setup import client_profiles, system_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
FAST = ["rounds=2", "data.max_examples=48", "train.local_steps=2"]


# ------------------------------------------------------------------------------------------ populations


def test_population_is_drawn_seeded_and_written_resolved(tmp_path):
    overrides = [
        "partition.num_clients=6",
        "budgets.per_client=[1,2,3,4,5,6]",
        'fleet.tokens_per_s={dist="lognormal", median=100.0, sigma=0.5}',
        'fleet.distance_m={dist="uniform", low=50.0, high=500.0}',
        'fleet.max_rank={dist="choice", values=[6, 8]}',
    ]
    a = load_config(TINY, overrides)
    b = load_config(TINY, overrides)
    assert a == b  # same seed, same population
    assert isinstance(a.fleet.tokens_per_s, list) and len(a.fleet.tokens_per_s) == 6
    assert all(50 <= d <= 500 for d in a.fleet.distance_m)
    assert set(a.fleet.max_rank) <= {6, 8}
    c = load_config(TINY, [*overrides, "seed=1"])
    assert c.fleet.tokens_per_s != a.fleet.tokens_per_s
    # the resolved config lists the drawn values and reloads to the same config
    from fedlora.config import dump_config

    path = tmp_path / "resolved.toml"
    path.write_text(dump_config(a))
    assert "dist =" not in path.read_text()
    assert load_config(path) == a


@pytest.mark.parametrize(
    "data, field",
    [
        ({"fleet": {"tokens_per_s": {"dist": "uniform", "low": 1.0}}}, "high"),
        ({"fleet": {"distance_m": {"dist": "gauss"}}}, "fleet.distance_m"),
        ({"fleet": {"max_rank": [4] * 9}}, "fleet.max_rank"),
        ({"fleet": {"max_rank": [2] * 10}, "budgets": {"per_client": [4] * 10}}, "fleet.max_rank[0]"),
        ({"method": "fedit", "fleet": {"max_rank": [8] * 10}}, "fleet.max_rank"),
        ({"sampling": {"scheme": "independent"}}, "sampling.probs"),
        ({"sampling": {"scheme": "independent", "probs": 1.5}}, "sampling.probs"),
        ({"sampling": {"scheme": "independent", "probs": [0.5] * 3}}, "sampling.probs"),
    ],
)
def test_bad_fleet_and_sampling_name_the_field(data, field):
    with pytest.raises(ConfigError) as info:
        validate(data)
    assert field in str(info.value) and "\n" not in str(info.value)


def test_profiles_from_config():
    config = load_config(TINY)
    profiles = client_profiles(config)
    assert [p.tokens_per_s for p in profiles] == [40, 100, 200, 400]
    assert [p.max_rank for p in profiles] == [8, 8, 8, 8]  # no memory caps: lora.rank
    assert profiles[0].channel.distance_m == 450 and math.isclose(profiles[0].channel.tx_power_w, 0.1)


# ------------------------------------------------------------------------------------------ system model


def _wireless(allocation: str) -> SystemModel:
    profiles = [ClientProfile(100.0, 50e6, 0.0, Channel(d, dbm_to_w(20)), 16) for d in (100.0, 300.0, 600.0)]
    return SystemModel(profiles, rank=16, rank_cost=0.05, uplink="wireless", bandwidth_hz=2e6, allocation=allocation)


def test_round_time_by_hand_fixed_uplink():
    system = SystemModel([ClientProfile(200.0, 8e6, 1e6), ClientProfile(100.0, 8e6, 2e6)], rank=8, rank_cost=0.5)
    timing = system.round([0, 1], [4, 8], [1e6, 1e6], [2.5e5, 5e5], [1000, 1000])
    t0 = 1.0 + 1000 * (1 + 2) / (5 * 200) + 2.0
    t1 = 1.0 + 1000 * (1 + 4) / (5 * 100) + 2.0
    assert timing.client_s == pytest.approx([t0, t1]) and timing.round_s == pytest.approx(max(t0, t1))
    assert system.round([], [], [], [], []).round_s == 0.0


def test_min_max_round_is_never_slower_than_equal_and_finishes_together():
    args = ([0, 1, 2], [16, 8, 4], [1e6] * 3, [4e6, 2e6, 1e6], [3000, 3000, 3000])
    equal = _wireless("equal").round(*args)
    minmax = _wireless("min_max").round(*args)
    assert minmax.round_s <= equal.round_s * (1 + 1e-9)
    assert max(minmax.client_s) - min(minmax.client_s) <= 1e-6 * minmax.round_s
    assert sum(minmax.bandwidth_hz) == pytest.approx(2e6)
    assert equal.bandwidth_hz == pytest.approx([2e6 / 3] * 3)
    # equal shares by hand for client 2
    system = _wireless("equal")
    ch = system.profiles[2].channel
    fixed = 8e6 / 50e6 + 3000 * (1 + 0.05 * 4) / ((1 + 0.05 * 16) * 100.0)
    assert equal.client_s[2] == pytest.approx(fixed + 8e6 / shannon_rate_bps(ch, 2e6 / 3))
    _, expected = min_max_allocation(
        [system.before_upload_s(i, 1e6, 3000, k) for i, k in zip(range(3), [16, 8, 4], strict=True)],
        [3.2e7, 1.6e7, 8e6],
        [p.channel for p in system.profiles],
        2e6,
    )
    assert minmax.round_s == pytest.approx(expected)


# ------------------------------------------------------------------------------------ independent sampling


def test_independent_sampling_run(tmp_path):
    out = tmp_path / "indep"
    overrides = [*FAST, "rounds=6", 'sampling.scheme="independent"', "sampling.probs=[0.3, 0.5, 0.9, 1.0]"]
    summary = federation.run(load_config(TINY, overrides), out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(3 in r["participants"] for r in records)  # q = 1 always joins
    sizes = [c["size"] for c in summary["clients"]]
    a = [n / sum(sizes) for n in sizes]
    q = [0.3, 0.5, 0.9, 1.0]
    total = 0.0
    for r in records:
        assert r["weights"] == pytest.approx([a[c] / q[c] for c in r["participants"]])
        assert r["sim_time_s"] == pytest.approx(total + r["sim_round_s"])
        total = r["sim_time_s"]
        assert len(r["client_bandwidth_hz"]) == len(r["participants"])
    # rerun: same participants, same numbers
    out2 = tmp_path / "indep2"
    federation.run(load_config(TINY, overrides), out2)
    again = [json.loads(line) for line in (out2 / "metrics.jsonl").read_text().splitlines()]
    strip = ("wall_s",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in records] == [
        {k: v for k, v in r.items() if k not in strip} for r in again
    ]


def test_empty_round_keeps_the_model(tmp_path):
    out = tmp_path / "empty"
    overrides = [*FAST, "rounds=3", 'sampling.scheme="independent"', "sampling.probs=0.05", "seed=3"]
    federation.run(load_config(TINY, overrides), out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    empty = [r for r in records if not r["participants"]]
    assert empty, "seed 3 with q = 0.05 should give an empty round"
    for r in empty:
        assert r["sim_round_s"] == 0.0 and r["bytes_up"] == 0 and r["train_loss"] is None


# ------------------------------------------------------------------------------------------ plan files


def _plan(tmp_path, settings, num_clients=4):
    path = tmp_path / "p.plan.toml"
    path.write_text(tomli_w.dumps({"made_for": {"num_clients": num_clients}, "settings": settings}))
    return path


def test_plan_file_is_applied_and_recorded(tmp_path):
    settings = {
        "sampling.scheme": "independent",
        "sampling.probs": [0.5, 0.6, 0.7, 1.0],
        "budgets.per_client": [1, 2, 3, 4],
        "network.allocation": "min_max",
    }
    path = _plan(tmp_path, settings)
    config = load_config(TINY, [f"plan={path}"])
    assert config.sampling.probs == [0.5, 0.6, 0.7, 1.0] and config.budgets.per_client == [1, 2, 3, 4]
    assert config.network.allocation == "min_max" and config.plan_source == str(path.resolve())
    # an override after plan= wins; the system model follows the plan
    assert load_config(TINY, [f"plan={path}", "budgets.per_client=[4,4,4,4]"]).budgets.per_client == [4] * 4
    assert system_model(config).allocation == "min_max"


def test_bad_plan_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(TINY, [f"plan={tmp_path / 'none.toml'}"])
    with pytest.raises(ConfigError, match="made for 7 clients"):
        load_config(TINY, [f"plan={_plan(tmp_path, {}, num_clients=7)}"])
    junk = tmp_path / "junk.toml"
    junk.write_text("x = 1")
    with pytest.raises(ConfigError, match="not a fedlora plan"):
        load_config(TINY, [f"plan={junk}"])
    # a plan that breaks a memory cap is rejected by the config's own checks
    with pytest.raises(ConfigError, match="fleet.max_rank"):
        load_config(TINY, ["fleet.max_rank=[4,8,8,8]", f"plan={_plan(tmp_path, {'budgets.per_client': [8] * 4})}"])


# ------------------------------------------------------------------------------------------ fedlora plan


def _cli(*args):
    from typer.testing import CliRunner

    from fedlora.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_plan_then_run_end_to_end(tmp_path):
    """`fedlora plan examples/tiny.toml` then `fedlora run examples/tiny.toml plan=PLAN`."""
    import tomllib

    plan_path = tmp_path / "tiny.plan.toml"
    caps = ["fleet.max_rank=[4,8,8,8]"]
    result = _cli("plan", TINY, *caps, "--out", plan_path)
    assert result.exit_code == 0, result.output
    plan = tomllib.loads(plan_path.read_text())
    settings = plan["settings"]
    k, q = settings["budgets.per_client"], settings["sampling.probs"]
    # every constraint: memory caps, k_min, q in [q_min, 1], expected participants ≥ clients_per_round (3)
    assert all(1 <= ki <= cap for ki, cap in zip(k, [4, 8, 8, 8], strict=True))
    assert all(0.05 <= qi <= 1 for qi in q) and sum(q) >= 3 - 1e-6
    assert settings["network.allocation"] in ("equal", "min_max")
    assert plan["prediction"]["round_s_by_policy"]["min_max"] <= plan["prediction"]["round_s_by_policy"]["equal"]
    assert len(plan["pilot"]["spread"]) == 4 and all(s > 0 for s in plan["pilot"]["spread"])

    out = tmp_path / "planned"
    result = _cli("run", TINY, *caps, f"plan={plan_path}", *FAST, "--out", out)
    assert result.exit_code == 0, result.output
    resolved = load_config(out / "config.resolved.toml")
    assert resolved.budgets.per_client == k and resolved.sampling.probs == pytest.approx(q)
    assert resolved.plan_source == str(plan_path.resolve())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["ranks"] == [k[c] for c in r["participants"]] for r in records)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["budgets.k_min=4", "fleet.max_rank=[2,8,8,8]"], ["client 0", "fleet.max_rank", "budgets.k_min"]),
        (["planner.min_participants=5"], ["planner.min_participants"]),
    ],
)
def test_plan_rejects_an_infeasible_fleet(tmp_path, overrides, words):
    result = _cli("plan", TINY, *overrides, "--out", tmp_path / "p.toml")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert all(w in message for w in words) and "\n" not in message
    assert not (tmp_path / "p.toml").exists()


def test_rank_exponent_from_projections():
    from fedlora.planning import rank_exponent

    # a rank-4 slice of rank 16 that keeps a quarter of the update (Adam-like) is β = 1; all of it (unbiased) β = 0
    assert rank_exponent([0.25, 0.25], [1.0, 1.0], [0.25, 0.25], [0.5, 0.5]) == pytest.approx(1.0)
    assert rank_exponent([2.0], [2.0], [0.25], [1.0]) == pytest.approx(0.0)
    assert rank_exponent([], [], [], []) == 0.0 and rank_exponent([-1.0], [1.0], [0.25], [1.0]) == 0.0
    assert rank_exponent([1e-9], [1.0], [0.25], [1.0]) == 2.0  # clipped


def _sim_time_to_reach(records: list[dict], loss: float) -> float:
    """Simulated seconds (Σ sim_round_s) until the first evaluated round with eval_loss ≤ ``loss`` (inf if never)."""
    elapsed = 0.0
    for record in records:
        elapsed += record["sim_round_s"]
        if record.get("eval_loss", math.inf) <= loss:
            return elapsed
    return math.inf


def test_the_plan_beats_uniform_sampling_in_a_simulated_run(tmp_path):
    """The planner (pilot + search, ``planning.make_plan``) against the baseline it reports (uniform sampling of 3
    of 4 clients, k = 8 for all, equal bandwidth shares) in real runs of the tiny model on the tiny fleet (client 0
    slow and far): the planned run reaches the held-out loss the uniform run ends with after 6 rounds (5.231) in
    less simulated time, at most 95 % of it. Measured: 68.0 s against 78.2 s (87 %) — per round the plan learns a
    little slower (≈ 3 clients per round in expectation, the slow one rarely), but its rounds are mostly 7.2 s
    instead of 15.9 s. Both runs are seeded; the pilot's timing enters only through κ (rank cost), 0 here."""
    from fedlora.planning import make_plan

    common = ["data.max_examples=48", "train.local_steps=2", "rounds=6", "eval.every=1"]
    plan = make_plan(load_config(TINY, common), str(TINY), tmp_path / "pilot")
    settings = plan["settings"]
    assert plan["prediction"]["baseline"]["description"] == "uniform sampling of 3 clients, k = 8 for all, equal shares"
    planned = [f"{key}={json.dumps(value)}" for key, value in settings.items()]
    baseline = ["budgets.per_client=[8, 8, 8, 8]", "network.allocation=equal"]
    federation.run(load_config(TINY, [*common, *planned, "rounds=9"]), tmp_path / "planned")
    federation.run(load_config(TINY, [*common, *baseline]), tmp_path / "uniform")
    uniform = _records(tmp_path / "uniform")
    target, uniform_s = uniform[-1]["eval_loss"], sum(r["sim_round_s"] for r in uniform)
    planned_records = _records(tmp_path / "planned")
    assert _sim_time_to_reach(planned_records, target) <= 0.95 * uniform_s


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_given_rank_cost_is_what_the_plan_uses_whatever_the_timings(tmp_path, monkeypatch):
    """``planner.rank_cost`` pins κ: the pilot's timed steps (load-dependent: 0.0007 idle, 0.0023–0.0029 beside two
    runs on this machine) then move neither the plan nor its prediction, and the search sees the given κ (a larger
    one predicts slower rounds). Without it, κ comes from the timings."""
    from fedlora import planning

    timings = iter([2e-3, 9e-3, 3e-3, 5e-3, 1e-3, 8e-3, 4e-3, 6e-3, 7e-3, 2e-3])  # s per token, as under load
    monkeypatch.setattr(planning, "_time_rank", lambda *args: next(timings))
    common = ["data.max_examples=48", "train.local_steps=2"]

    def plan(*overrides: str) -> dict:
        return planning.make_plan(load_config(TINY, [*common, *overrides]), str(TINY), tmp_path / "pilot")

    first, second = plan("planner.rank_cost=0.05"), plan("planner.rank_cost=0.05")
    assert first["settings"] == second["settings"] and first["prediction"] == second["prediction"]
    assert first["settings"]["network.rank_cost"] == first["pilot"]["rank_cost"] == 0.05
    assert first["pilot"]["local_tokens_per_s"] != second["pilot"]["local_tokens_per_s"]  # the timings did differ
    free = plan()
    assert free["settings"]["network.rank_cost"] not in (0.0, 0.05)  # calibrated from the (patched) timings
    cheap, dear = plan("planner.rank_cost=0")["settings"], plan("planner.rank_cost=5")["settings"]
    assert sum(dear["budgets.per_client"]) < sum(cheap["budgets.per_client"])  # costly rank: smaller sketches

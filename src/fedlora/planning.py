"""``fedlora plan``: a short real pilot run, the planner's search, and the plan file ``fedlora run`` takes.

1. Pilot: every client trains ``planner.pilot_rounds`` rounds at its largest allowed rank on the real model and
   data. It measures each client's tokens per round, the payload bytes, and the spread ρ_i = E‖x_i‖² / ‖Σ a_j x_j‖²
   of the clients' updates x_i (the constants of the rounds surrogate); timed local steps at two ranks calibrate
   how compute grows with the rank (``network.rank_cost``).
2. Search: ``fedlora.network.planner.plan_fleet`` picks integer k_i and q_i minimising predicted rounds × expected
   round time (docs/planner.md).
3. Bandwidth policy: for the chosen k, q the expected round time under each run-time policy (equal shares,
   min-max) is estimated by Monte Carlo over independent participation draws with the same system model a run
   uses; the faster one goes into the plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fedlora import payload, seeding
from fedlora.config import RunConfig
from fedlora.engines.inprocess import InProcessEngine
from fedlora.lora.state import flatten_factors, init_factors
from fedlora.methods import build_method
from fedlora.methods.base import ClientPlan
from fedlora.network import planner
from fedlora.network.system import SystemModel
from fedlora.network.wireless import channel_gain
from fedlora.setup import build, client_bases, rank_caps


def full_rank(config: RunConfig) -> bool:
    """Whether every client of the run's method trains lora.rank (FedIT, FFA-LoRA): no budgets to plan."""
    return config.spec.ranks == "full"


@dataclass
class PilotResult:
    """What the pilot measured (lists have one entry per client)."""

    weights: list[float]
    """a_i, the population aggregation weights."""
    spread: list[float]
    """ρ_i = E‖x_i‖² / ‖Σ_j a_j x_j‖², averaged over the pilot's rounds."""
    tokens: list[float]
    """Tokens each client processed per round (mean over the pilot's rounds)."""
    ranks: list[int]
    bytes_down: tuple[float, float]
    """(d0, d1): download bytes ≈ d0 + d1·k."""
    bytes_up: tuple[float, float]
    rank_cost: float
    """κ: per-token compute ∝ 1 + κ·k, from timed local steps."""
    rank_exponent: float
    """β: a rank-k slice's expected update is ≈ (k / k_full)^β of the full-rank one (0: unbiased sketch)."""
    local_tokens_per_s: float
    """This machine's training throughput at the full rank (tokens/s)."""
    seconds: float


def _update_vector(update_space: str, plan: ClientPlan, trained, rank: int) -> torch.Tensor:
    """x_i: the client's update as one flat vector (``update_space`` "factors": factor space, the scattered ΔB, ΔA
    of the factor-averaging methods; "product": model space s·(B'A' − B A) per module)."""
    from fedlora import sketch

    parts = []
    for name, (sent_B, sent_A) in plan.factors.items():
        new_B, new_A = trained[name]
        if update_space == "factors":
            dB, dA = sketch.scatter_block(new_B - sent_B, new_A - sent_A, plan.context[name], rank)
            parts += [dB.flatten(), dA.flatten()]
        else:
            parts.append((plan.scale * (new_B @ new_A - sent_B @ sent_A)).flatten())
    return torch.cat(parts).double()


def _fit_bytes(ranks: list[int], sizes: list[float], generic: Callable[[int], float]) -> tuple[float, float]:
    """(c0, c1) with size ≈ c0 + c1·k: least squares over the pilot's ranks, or (one rank only) the generic
    payload's shape scaled to the measured mean."""
    if len(set(ranks)) >= 2:
        c1, c0 = np.polyfit(np.asarray(ranks, float), np.asarray(sizes, float), 1)
        return float(max(c0, 0.0)), float(max(c1, 0.0))
    k = ranks[0]
    g1 = generic(2) - generic(1)
    g0 = generic(1) - g1
    ratio = float(np.mean(sizes)) / (g0 + g1 * k)
    return g0 * ratio, g1 * ratio


def _time_rank(engine: InProcessEngine, client: int, shapes, rank: int, scale: float, seed: int) -> float:
    """Seconds per token of one client's local training at ``rank`` (best of two)."""
    from fedlora.federation import download_blob

    best = math.inf
    for rep in range(2):
        plan = ClientPlan(client, rank, scale, init_factors(shapes, rank, torch.Generator().manual_seed(seed)))
        plan.fresh_seed = seed + rep
        blob = download_blob(plan, 0, seed)
        started = time.perf_counter()
        upload = engine.run_client(client, blob)
        elapsed = time.perf_counter() - started
        _, meta = payload.unpack(upload)
        best = min(best, elapsed / max(int(meta["tokens"]), 1))
    return best


def _low_rank_dot(config, method, engine, plan: ClientPlan, full: torch.Tensor, k_lo: int) -> float | None:
    """⟨x_i(k_lo), x_i(k_i)⟩: the client trains a rank-k_lo slice from the same global as its full-rank ``plan``
    (None when it cannot: FedIT / FFA-LoRA always train the full rank, or k_i ≤ k_lo)."""
    from fedlora.federation import download_blob, read_upload

    if full_rank(config) or getattr(method, "budgets", None) is None or plan.rank <= k_lo:
        return None
    saved = method.budgets[plan.client_id]
    method.budgets[plan.client_id] = k_lo
    try:
        low = method.plan(plan.client_id, 1, seeding.generator(config.seed, "pilot", 0, plan.client_id))
    finally:
        method.budgets[plan.client_id] = saved
    blob = download_blob(low, 1, seeding.derive_seed(config.seed, "pilot", 1, plan.client_id))
    trained, _ = read_upload(low, engine.run_client(plan.client_id, blob))
    return float(_update_vector(config.spec.update_space, low, trained, config.lora.rank) @ full)


def rank_exponent(dots: list[float], norms: list[float], ratios: list[float], weights: list[float]) -> float:
    """β in E[x_i(k)] ≈ (k / k_i)^β · x_i(k_i), from clients that trained both a rank-k slice and their full rank:
    β = log(Σ a_i ⟨x_i(k), x_i(k_i)⟩ / Σ a_i ‖x_i(k_i)‖²) / log(mean k / k_i), clipped to [0, 2]; 0 (the unbiased
    sketch) when nothing was measured."""
    dot = sum(a * d for a, d in zip(weights, dots, strict=True))
    norm = sum(a * v for a, v in zip(weights, norms, strict=True))
    if not ratios or norm <= 0 or dot <= 0:
        return 0.0
    return float(min(max(math.log(dot / norm) / math.log(float(np.mean(ratios))), 0.0), 2.0))


def run_pilot(config: RunConfig, work_dir: Path, log: Callable[[str], None] = lambda _: None) -> PilotResult:
    """Train every client ``planner.pilot_rounds`` rounds at its largest allowed rank and measure (see module).

    Each pilot round is the run's own phases (``fedlora.federation``: plan_round → train_clients → aggregate →
    merge_pending) over every client, with the pilot's seeds and no faults tolerated; the measurements are taken
    from each upload as it arrives."""
    from fedlora.federation import aggregation_weights, merge_pending, plan_round, train_clients

    started = time.perf_counter()
    setup = build(config, work_dir, resume=False)
    n, r = config.partition.num_clients, config.lora.rank
    cap = rank_caps(config)
    setup.budgets = [r] * n if full_rank(config) else cap
    states = work_dir / "pilot-client-states"  # clients that keep state between rounds (FedSA-LoRA) keep it here
    method = build_method(config, setup, client_states=states)
    engine = InProcessEngine(
        setup.model,
        setup.layers,
        setup.client_examples,
        setup.training,
        setup.pad_id,
        fail_fast=True,  # a client's error stops the pilot with its traceback
        bases=client_bases(setup),
        client_states=states,
    )
    weights = aggregation_weights(config.weighting, [len(ex) for ex in setup.client_examples])

    spreads, tokens, downs, ups = np.zeros(n), np.zeros(n), [], []
    k_lo = max(config.budgets.k_min, r // 4)
    dots, dot_norms, ratios, dot_weights = [], [], [], []
    rounds = config.planner.pilot_rounds
    for round_idx in range(1, rounds + 1):
        planned = plan_round(method, config.seed, round_idx, list(range(n)), purposes=("pilot", "pilot"))
        plans = [plan for plan, _ in planned]
        uploads, norms, mean = [], [], None
        trained_clients = train_clients(engine, planned, round_idx, max_update_norm=None, fail_fast=True)
        for (plan, blob, upload, (trained, meta)), a in zip(trained_clients, weights, strict=True):
            uploads.append(trained)
            # one vector at a time: model space can be large
            x = _update_vector(config.spec.update_space, plan, trained, r)
            norms.append(float(x @ x))
            mean = a * x if mean is None else mean.add_(x, alpha=a)
            if round_idx == 1:
                dot = _low_rank_dot(config, method, engine, plan, x, k_lo)
                if dot is not None:
                    dots.append(dot)
                    dot_norms.append(norms[-1])
                    ratios.append(k_lo / plan.rank)
                    dot_weights.append(a)
            del x
            tokens[plan.client_id] += int(meta["tokens"]) / rounds
            downs.append(len(blob))
            ups.append(len(upload))
            log(f"pilot round {round_idx}: client {plan.client_id} rank {plan.rank} loss {meta['train_loss']:.4f}")
        signal = float(mean @ mean)
        for plan, norm in zip(plans, norms, strict=True):
            sketch_share = plan.rank / r if config.spec.sketched else 1.0  # E‖S x‖² = (r/k)‖x‖²
            spreads[plan.client_id] += sketch_share * norm / max(signal, 1e-300) / rounds
        method.aggregate(plans, uploads, weights)  # the pilot measures; it adds no DP noise
        merge_pending(method, setup.layers)
    beta = rank_exponent(dots, dot_norms, ratios, dot_weights)
    if ratios:
        log(f"pilot: rank-{k_lo} slices move {sum(dots) / sum(dot_norms):.3f} of the full-rank update: β = {beta:.3f}")

    pilot_ranks = [plan.rank for plan in plans] * rounds  # same ranks every round

    def generic(k: int) -> float:
        """Bytes of a plain rank-k factor payload (the shape of every method's payload)."""
        factors = init_factors(setup.shapes, k, torch.Generator().manual_seed(0))
        return float(len(payload.pack(flatten_factors(factors), {"round": 1, "rank": k})))

    bytes_down = _fit_bytes(pilot_ranks, downs, generic)
    bytes_up = _fit_bytes(pilot_ranks, ups, generic)

    # compute calibration: seconds per token at a small and the full rank, on the largest client
    client = max(range(n), key=lambda c: len(setup.client_examples[c]))
    low = max(1, min(cap))
    low = 1 if low == r else low
    scale = config.scale_rule
    if config.planner.rank_cost is not None:  # κ given: time the full rank only (the tokens/s reported)
        per_token_full = _time_rank(engine, client, setup.shapes, r, scale(r), config.seed + 7)
        rank_cost = config.planner.rank_cost
        log(f"calibration: {per_token_full * 1e3:.3f} ms/token at rank {r}; κ = {rank_cost:.4g} (planner.rank_cost)")
    else:
        per_token_low = _time_rank(engine, client, setup.shapes, low, scale(low), config.seed)
        per_token_full = _time_rank(engine, client, setup.shapes, r, scale(r), config.seed + 7)
        denom = per_token_low * r - per_token_full * low
        rank_cost = max(0.0, (per_token_full - per_token_low) / denom) if denom > 0 else 0.0
        log(f"calibration: {per_token_low * 1e3:.3f} ms/token at rank {low}, {per_token_full * 1e3:.3f} at rank {r}")
    return PilotResult(
        weights=weights,
        spread=[float(s) for s in spreads],
        tokens=[float(t) for t in tokens],
        ranks=list(setup.budgets),
        bytes_down=bytes_down,
        bytes_up=bytes_up,
        rank_cost=rank_cost,
        rank_exponent=beta,
        local_tokens_per_s=1.0 / per_token_full,
        seconds=time.perf_counter() - started,
    )


def reported_profiles(run_dir: Path, num_clients: int) -> dict[int, dict[str, float]]:
    """What each client's node declared or measured about itself in a Flower run (RUN_DIR/nodes.json, written by
    the run): client id → {fleet field: value}. One-line errors name the file."""
    import json

    from fedlora.errors import ConfigError

    path = run_dir / "nodes.json"
    try:
        nodes = json.loads(path.read_text(encoding="utf-8"))
        clients = nodes["clients"]
        declared = {int(cid): dict(entry.get("declared") or {}) for cid, entry in clients.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"--profiles {path}: not a Flower run's nodes.json ({type(err).__name__}: {err})") from None
    outside = [cid for cid in declared if not 0 <= cid < num_clients]
    if outside:
        raise ConfigError(f"--profiles {path}: client {outside[0]} is outside partition.num_clients={num_clients}")
    return declared


def fleet_model(config: RunConfig, system: SystemModel, pilot: PilotResult) -> planner.FleetModel:
    """The planner's view of the fleet: the config's system model plus the pilot's measurements."""
    n, r = config.partition.num_clients, config.lora.rank
    cap = rank_caps(config)
    if full_rank(config):
        k_min, k_max = [r] * n, [r] * n
    else:
        k_min = [config.budgets.k_min] * n
        k_max = cap
    wireless = system.uplink == "wireless"
    return planner.FleetModel(
        rank=r,
        weights=pilot.weights,
        spread=pilot.spread,
        k_min=k_min,
        k_max=k_max,
        tokens=pilot.tokens,
        tokens_per_s=[p.tokens_per_s for p in system.profiles],
        rank_cost=pilot.rank_cost,
        bytes_down=pilot.bytes_down,
        bytes_up=pilot.bytes_up,
        downlink_bps=[p.downlink_bps for p in system.profiles],
        uplink_bps=None if wireless else [p.uplink_bps for p in system.profiles],
        received_over_n0=(
            [p.channel.tx_power_w * channel_gain(p.channel) / p.channel.noise_psd_w_per_hz for p in system.profiles]
            if wireless
            else None
        ),
        bandwidth_hz=system.bandwidth_hz if wireless else None,
        rounds_full=config.planner.rounds_full or float(config.rounds),
        variance_weight=config.planner.variance_weight,
        q_min=config.planner.q_min,
        min_participants=min_participants(config),
        rank_exponent=pilot.rank_exponent,
    )


def min_participants(config: RunConfig) -> float:
    """Σ q_i must reach this: planner.min_participants, else the uniform baseline's clients_per_round."""
    if config.planner.min_participants is not None:
        return float(config.planner.min_participants)
    return float(min(config.sampling.clients_per_round, config.partition.num_clients))


def simulated_round_s(
    system: SystemModel,
    model: planner.FleetModel,
    k: list[int],
    q: list[float] | None,
    per_round: int | None = None,
    draws: int = 400,
    seed: int = 0,
) -> float:
    """Monte Carlo E[round time] with the run's system model: independent participation with probabilities ``q``
    (or ``per_round`` clients uniformly), payload bytes and tokens from the pilot. Empty rounds count 0 s."""
    rng = np.random.default_rng(seed)
    n = len(k)
    d0, d1 = model.bytes_down
    u0, u1 = model.bytes_up
    total = 0.0
    for _ in range(draws):
        if q is not None:
            ids = [i for i in range(n) if rng.random() < q[i]]
        else:
            ids = sorted(rng.choice(n, size=per_round, replace=False).tolist())
        timing = system.round(
            ids,
            [k[i] for i in ids],
            [d0 + d1 * k[i] for i in ids],
            [u0 + u1 * k[i] for i in ids],
            [model.tokens[i] for i in ids],
        )
        total += timing.round_s
    return total / draws


def memory_plan(config: RunConfig, log: Callable[[str], None] = lambda _: None) -> tuple[RunConfig, dict | None]:
    """With ``fleet.memory_mb``: measure one client step per precision × rank (``fedlora.client.footprint``), choose
    each client's precision and largest rank together (``fedlora.network.memory.choose``), and return the config
    with them applied (fleet.precision, fleet.max_rank, never above a max_rank the config already had) and the
    plan's [memory] table. Without it: the config as it is and None."""
    from fedlora.client.footprint import footprints
    from fedlora.config import validate
    from fedlora.models import resolve_device
    from fedlora.models.precision import PRECISIONS, runnable
    from fedlora.network import memory
    from fedlora.setup import merges_into_base, per_client, server_precision

    if config.fleet.memory_mb is None:
        return config, None
    n, r = config.partition.num_clients, config.lora.rank
    device = str(resolve_device(config.model.device))
    if merges_into_base(config):  # the base takes merges only at the server's precision (setup.check_precisions)
        precisions = [server_precision(config)]
    else:
        precisions = [p for p in PRECISIONS if runnable(p, device) is None]
    k_min = r if full_rank(config) else config.budgets.k_min
    ranks = sorted({k_min, max(k_min, r // 2), r})
    log(f"memory: measuring one client step at ranks {ranks} with the base in {', '.join(precisions)}")
    measured = footprints(config, precisions, ranks)
    for precision, peaks in measured.items():
        log(f"memory: {precision}: " + ", ".join(f"rank {k} {mb:.0f} MB" for k, mb in sorted(peaks.items())))
    caps = [float(c) for c in per_client(config.fleet.memory_mb, n)]
    choices = memory.choose(caps, measured, k_min, r)
    max_rank = [min(c.max_rank, cap) for c, cap in zip(choices, rank_caps(config), strict=True)]
    data = config.model_dump(mode="json", exclude_none=True)
    data["fleet"].update(precision=[c.precision for c in choices], max_rank=max_rank)
    data.get("budgets", {}).pop("per_client", None)  # the plan chooses the budgets within the new caps
    table = {
        "caps_mb": caps,
        "ranks": ranks,
        "footprints_mb": {p: {str(k): round(mb, 1) for k, mb in sorted(ks.items())} for p, ks in measured.items()},
        "precision": [c.precision for c in choices],
        "max_rank": max_rank,
        "footprint_mb": [round(c.footprint_mb, 1) for c in choices],
        "rule": "per client: the precision allowing the largest rank within its cap, then the most faithful base",
    }
    return validate(data), table


def make_plan(config: RunConfig, config_path: str, work_dir: Path, log: Callable[[str], None] = lambda _: None) -> dict:
    """Pilot, search and policy choice; returns the plan file's content (TOML-ready). With ``fleet.memory_mb`` each
    client's precision and largest rank are chosen first (:func:`memory_plan`) and the pilot runs with them."""
    from fedlora.setup import check_precisions, system_model

    config, memory_table = memory_plan(config, log)
    check_precisions(config)
    system = system_model(config)
    probe = fleet_model(config, system, _placeholder_pilot(config))
    try:
        planner.check_feasible(probe)  # reject an infeasible fleet before spending time on the pilot
    except planner.InfeasibleFleetError as err:
        raise planner.InfeasibleFleetError(f"plan: {config_names(str(err))}") from None

    pilot = run_pilot(config, work_dir, log)
    model = fleet_model(config, system, pilot)
    chosen = planner.plan_fleet(model, seed=config.seed)
    n, r = config.partition.num_clients, config.lora.rank

    policies = ["equal", "min_max"] if system.uplink == "wireless" else [system.allocation]
    timed = {}
    calibrated = replace(system, rank_cost=pilot.rank_cost)  # the run will use the pilot's κ (plan settings)
    for policy in policies:
        sys_p = replace(calibrated, allocation=policy)
        timed[policy] = simulated_round_s(sys_p, model, chosen.k, chosen.q, seed=config.seed)
    policy = min(timed, key=timed.get)

    # the baseline the plan is compared with: uniform sampling of clients_per_round, equal k, equal shares
    m = min(config.sampling.clients_per_round, n)
    k_equal = [min(model.k_max)] * n if not full_rank(config) else [r] * n
    base = planner.uniform_baseline(model, m, k_equal)
    sys_eq = replace(calibrated, allocation="equal")
    base_round_s = simulated_round_s(sys_eq, model, k_equal, None, per_round=m, seed=config.seed)

    settings: dict = {
        "sampling.scheme": "independent",
        "sampling.probs": [round(float(x), 6) for x in chosen.q],
        "network.rank_cost": float(pilot.rank_cost),
    }
    if not full_rank(config):
        settings["budgets.per_client"] = [int(x) for x in chosen.k]
    if system.uplink == "wireless":
        settings["network.allocation"] = policy
    if memory_table is not None:
        settings["fleet.precision"] = memory_table["precision"]
        settings["fleet.max_rank"] = memory_table["max_rank"]
    extra = {"memory": memory_table} if memory_table is not None else {}
    return {
        "made_for": {"config": str(config_path), "num_clients": n, "method": config.method, "rank": r},
        "settings": settings,
        "prediction": {
            "rounds": chosen.rounds,
            "round_s_model": chosen.round_s,
            "round_s": timed[policy],
            "round_s_by_policy": timed,
            "wallclock_s": chosen.rounds * timed[policy],
            "baseline": {
                "description": f"uniform sampling of {m} clients, k = {k_equal[0]} for all, equal shares",
                "rounds": base.rounds,
                "round_s": base_round_s,
                "wallclock_s": base.rounds * base_round_s,
            },
            "client_s": chosen.client_s,
        },
        "pilot": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(pilot).items()},
        **extra,
    }


CONFIG_NAMES = {
    "FleetModel.k_max": "fleet.max_rank",
    "FleetModel.k_min": "budgets.k_min",
    "FleetModel.min_participants": "planner.min_participants",
    "FleetModel.q_min": "planner.q_min",
    "FleetModel.received_over_n0": "fleet.distance_m / fleet.tx_power_dbm",
}


def config_names(message: str) -> str:
    """The planner's message with its FleetModel field names replaced by the config keys behind them."""
    for field, key in CONFIG_NAMES.items():
        message = message.replace(field, key)
    return message


def _placeholder_pilot(config: RunConfig) -> PilotResult:
    """Neutral measurements, only for checking feasibility before the pilot runs."""
    n = config.partition.num_clients
    return PilotResult(
        weights=[1.0 / n] * n,
        spread=[1.0] * n,
        tokens=[1.0] * n,
        ranks=[1] * n,
        bytes_down=(0.0, 1.0),
        bytes_up=(0.0, 1.0),
        rank_cost=0.0,
        rank_exponent=0.0,
        local_tokens_per_s=1.0,
        seconds=0.0,
    )

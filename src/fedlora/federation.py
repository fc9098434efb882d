"""The round loop, written once, in named phases (each a function below, in this order):

    open_run (open or resume) → [evaluate before training] → per round (run_round):
        round_participants (sample) → plan_round → train_clients / collect_uploads (run clients, check uploads)
        → aggregate (DP) → merge_pending → the round's record → evaluate_round → checkpoint_round
    → write_outputs (adapter, summary)

The planner's pilot (``fedlora.planning.run_pilot``) runs its rounds with the same plan_round, train_clients and
merge_pending.

It knows nothing of transport: it serialises each client's payload, hands the blob to an engine, and reads
the blob the engine hands back. Every number a run reports comes from here and goes to the run folder.

A client that fails (the engine's ``ClientFailure``) or whose upload fails validation (``fedlora.validation``)
is left out of the round and recorded; the others are aggregated with the weights of the successful clients
(docs/methods.md, "Client faults"). With ``[privacy]`` the updates are clipped and the aggregate noised
(``fedlora.privacy``, docs/privacy.md).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Protocol

import torch

from fedlora import __version__, crashpoints, payload, privacy, rundir, seeding
from fedlora.client.app import eval_blob, install_adapter, personal_eval_blob
from fedlora.client.train import round_lr
from fedlora.config import RunConfig, dump_config
from fedlora.engines.base import ClientFailure, Engine, NoFederatedEvaluation
from fedlora.engines.inprocess import ClientEvaluation, InProcessEngine
from fedlora.errors import CheckpointError, ConfigError, FedloraError
from fedlora.evaluation.heldout import evaluate_heldout
from fedlora.lora.export import save_peft_adapter
from fedlora.lora.layer import merge_update
from fedlora.lora.state import Factors, flatten_factors
from fedlora.methods import build_method
from fedlora.methods.base import ClientPlan, Method
from fedlora.network.sampling import sample_independent, unbiased_weights
from fedlora.setup import RunSetup, build, check_precisions, client_bases
from fedlora.validation import UpdateRejected, read_upload


class Reporter(Protocol):
    """Progress callbacks (the CLI draws them with rich); all optional to implement."""

    def run_started(self, config: RunConfig, setup: RunSetup, start_round: int) -> None: ...
    def round_started(self, round_idx: int, participants: list[int]) -> None: ...
    def client_done(self, round_idx: int, client_id: int, rank: int, train_loss: float) -> None: ...
    def round_done(self, record: dict) -> None: ...
    def evaluated(self, label: str, result: dict) -> None: ...


class SilentReporter:
    def run_started(self, config, setup, start_round) -> None: ...
    def round_started(self, round_idx, participants) -> None: ...
    def client_done(self, round_idx, client_id, rank, train_loss) -> None: ...
    def round_done(self, record) -> None: ...
    def evaluated(self, label, result) -> None: ...


def sample_clients(num_clients: int, per_round: int, generator: torch.Generator) -> list[int]:
    """``per_round`` distinct client ids, uniformly at random, sorted."""
    return sorted(torch.randperm(num_clients, generator=generator)[:per_round].tolist())


def aggregation_weights(kind: str, num_examples: list[int]) -> list[float]:
    """a_i over the given clients (a round's participants, or the whole population), summing to 1."""
    if not num_examples:
        return []
    if kind == "uniform":
        return [1.0 / len(num_examples)] * len(num_examples)
    total = sum(num_examples)
    if total <= 0:
        raise ValueError("aggregation weights: the clients hold no examples")
    return [n / total for n in num_examples]


def participation_probs(config: RunConfig) -> list[float] | None:
    """q_i per client under independent sampling (None under uniform sampling)."""
    s = config.sampling
    if s.scheme != "independent":
        return None
    return list(s.probs) if isinstance(s.probs, list) else [float(s.probs)] * config.partition.num_clients


def round_participants(config: RunConfig, round_idx: int) -> list[int]:
    """This round's participants (sorted client ids; possibly empty under independent sampling)."""
    generator = seeding.generator(config.seed, "sample", round_idx)
    probs = participation_probs(config)
    if probs is None:
        return sample_clients(config.partition.num_clients, config.sampling.clients_per_round, generator)
    return sample_independent(probs, generator)


def round_weights(config: RunConfig, participants: list[int], num_examples: list[int]) -> list[float]:
    """Aggregation weights of the participants: a_i renormalised over them (uniform sampling), or a_i / q_i with
    a_i the population weight (independent sampling: unbiased, not renormalised)."""
    probs = participation_probs(config)
    if probs is None:
        return aggregation_weights(config.weighting, [num_examples[c] for c in participants])
    population = aggregation_weights(config.weighting, num_examples)
    return unbiased_weights(participants, population, probs)


def download_blob(plan: ClientPlan, round_idx: int, train_seed: int, lr: float | None = None) -> bytes:
    """What travels to the client: its starting factors (unless it draws them from ``fresh_seed``), the base
    update to fold in (merge-into-base methods), and the round's settings; ``lr``: the round's client lr under a
    decay over rounds (None: the client trains at its configured lr, and the download does not carry one)."""
    tensors = {} if plan.fresh_seed is not None else flatten_factors(plan.factors, prefix="adapter.")
    if plan.keep_B:  # the client trains from its own stored B: only A travels
        tensors = {k: v for k, v in tensors.items() if not k.endswith(".lora_B")}
    if plan.frame is not None:  # Fed-SB: the fixed frame, and the inner B (R); the inner A is the identity
        tensors = {k: v for k, v in tensors.items() if not k.endswith(".lora_A")}
        tensors.update(flatten_factors(plan.frame, prefix="frame."))
    if plan.base_sync is not None:
        tensors.update(flatten_factors(plan.base_sync, prefix="sync."))
    return payload.pack(
        tensors,
        {
            "fresh_seed": plan.fresh_seed,
            "round": round_idx,
            "client": plan.client_id,
            "rank": plan.rank,
            "scale": plan.scale,
            "train_A": plan.train_A,
            "train_B": plan.train_B,
            "seed": train_seed,
            # absent otherwise: the other methods' downloads keep their bytes
            **({"keep_B": True} if plan.keep_B else {}),
            **({"framed": True} if plan.frame is not None else {}),
            **({"lr": lr} if lr is not None else {}),
        },
    )


def receive_upload(
    plan: ClientPlan, result: bytes | ClientFailure, max_update_norm: float | None
) -> tuple[Factors, dict] | str:
    """The client's checked factors and metadata (``fedlora.validation.read_upload``), or why it failed: the
    engine's ``ClientFailure`` reason, or "rejected: ..." for an upload that fails validation."""
    if isinstance(result, ClientFailure):
        return result.reason
    try:
        return read_upload(plan, result, max_update_norm)
    except UpdateRejected as err:
        return f"rejected: {err}"


def aggregate_privately(
    config: RunConfig,
    method,
    plans: list[ClientPlan],
    uploads: list[Factors],
    weights: list[float],
    num_examples: list[int],
    round_idx: int,
) -> tuple[dict, dict]:
    """Client-level DP aggregation (docs/privacy.md): clip each update to privacy.clip_norm, aggregate, and let the
    method add N(0, (σ·C·w_max)²) to its aggregate (only FactorAveraging methods take ``noise``; the config allows
    DP for no other). Returns (the method's facts, the DP facts for the round's record)."""
    clip = config.privacy.clip_norm
    clipped = [privacy.clip_update(p.factors, u, clip) for p, u in zip(plans, uploads, strict=True)]
    w_max = max_client_weight(config, weights, num_examples)
    std = privacy.noise_std(clip, config.privacy.noise_multiplier, w_max)
    noise = privacy.GaussianNoise(std, seeding.generator(config.seed, "dp-noise", round_idx))
    facts = method.aggregate(plans, [c for c, _ in clipped], weights, noise=noise)
    return facts, {"dp_noise_std": std, "dp_clipped": sum(norm > clip for _, norm in clipped)}


def max_client_weight(config: RunConfig, weights: list[float], num_examples: list[int]) -> float:
    """w_max, the largest aggregation weight one client can get this round (the DP sensitivity is w_max · C): the
    participants' common weight under uniform sampling (DP requires server.weighting = "uniform"), the largest
    a_i / q_i over ALL clients under independent sampling (who took part must not change the noise)."""
    if participation_probs(config) is None:
        return max(weights, default=0.0)
    everyone = list(range(config.partition.num_clients))
    return max(round_weights(config, everyone, num_examples))


def privacy_summary(config: RunConfig) -> dict | None:
    """summary.json's DP entry: the settings, the final ε at δ, and how it was accounted (None without DP)."""
    p = config.privacy
    if p.clip_norm is None:
        return None
    if participation_probs(config) is None:
        sampling = (
            f"{config.sampling.clients_per_round} of {config.partition.num_clients} clients without replacement, "
            "replace-one adjacency (accountant noise multiplier sigma/2)"
        )
    else:
        sampling = "independent (Poisson) sampling at the largest q_i, add/remove adjacency (worst client)"
    return {
        "clip_norm": p.clip_norm,
        "noise_multiplier": p.noise_multiplier,
        "delta": p.delta,
        "epsilon": round_epsilon(config, config.rounds),
        "accounting": f"RDP (dp-accounting), {sampling}, {config.rounds} rounds",
    }


def round_epsilon(config: RunConfig, rounds: int) -> float | None:
    """The accountant's ε after ``rounds`` DP rounds at privacy.delta (None when σ = 0: no guarantee)."""
    p = config.privacy
    eps = privacy.epsilon(
        rounds,
        p.noise_multiplier,
        p.delta,
        num_clients=config.partition.num_clients,
        clients_per_round=config.sampling.clients_per_round,
        probs=participation_probs(config),
    )
    return None if eps == float("inf") else eps


def evaluate_global(setup: RunSetup, method, config: RunConfig) -> dict[str, float]:
    view = method.eval_adapter()
    if view is None:  # the base holds the whole global model
        for layer in setup.layers.values():
            layer.clear_adapter()
    else:
        install_adapter(setup.layers, *view, train_B=False, train_A=False)
    return heldout(setup, config)


def heldout(setup: RunSetup, config: RunConfig) -> dict[str, float]:
    """The model as installed now, on the server's held-out set."""
    return evaluate_heldout(
        setup.model,
        setup.tokenizer,
        setup.eval_set,
        config.eval.batch_size,
        setup.pad_id,
        length_normalize=config.eval.length_normalize,
    )


def mean_figures(weights: list[float], figures: list[dict], prefix: str) -> dict[str, float]:
    """{prefix + "eval_loss"[, prefix + "eval_accuracy"]}: the figures' weighted means (keys all of them have)."""
    means = {}
    for key in ("eval_loss", "eval_accuracy"):
        if figures and all(key in f for f in figures):
            value = weighted_mean(weights, [f[key] for f in figures])
            if value is not None:
                means[f"{prefix}{key}"] = value
    return means


def evaluate_federated(
    engine, method, fail_fast: bool, blob: bytes | None = None
) -> tuple[dict, list[dict], list[dict]]:
    """Federated evaluation: every client with a held-out set of its own evaluates the global model on it
    (``engine.evaluate_clients``); the figures are averaged weighted by the clients' held-out example counts.

    Returns ({"fed_eval_loss"[, "fed_eval_accuracy"]} (empty when no client answered), the per-client figures
    [{"client", "n", "eval_loss"[, "eval_accuracy"]}], the failures [{"client", "reason"}])."""
    blob = eval_blob(method.eval_adapter()) if blob is None else blob
    try:
        results = engine.evaluate_clients(blob)
    except NoFederatedEvaluation:
        raise ConfigError("eval.federated: this engine cannot ask its clients to evaluate") from None
    figures, failures = [], []
    for cid, result in sorted(results.items()):
        if isinstance(result, ClientFailure):
            if fail_fast:
                raise FedloraError(f"client {cid} failed in federated evaluation: {result.reason}")
            failures.append({"client": cid, "reason": result.reason})
        else:
            figures.append({"client": cid, **result})
    aggregate = mean_figures([float(f["n"]) for f in figures], figures, "fed_")
    return aggregate, figures, failures


def evaluate_round(setup: RunSetup, method, config: RunConfig, engine) -> tuple[dict, dict]:
    """Server-side evaluation (on the server's own held-out set, when it has one) and federated evaluation (when
    on): (the figures for the record and the reporter, the per-client figures and failures for the record).

    A method with personalised models (FedSA-LoRA's ``personal_adapters``) is also evaluated per client: each
    client's own model on the server's held-out set ("personal_eval_*", the plain mean over the clients that
    have one, per client in "client_personal_eval"), and with federated evaluation on the client's own
    held-out split ("fed_personal_eval_*"), next to the shared view's figures."""
    result: dict = {}
    details: dict = {}
    personal = method.personal_adapters()
    if setup.eval_set is not None:
        result.update(evaluate_global(setup, method, config))
        if personal is not None:
            figures, details["client_personal_eval"] = evaluate_personal(setup, method, config, personal)
            result.update(figures)
    if config.federated_eval():
        federated, figures, failures = evaluate_federated(engine, method, config.faults.fail_fast)
        result.update(federated)
        details.update({"client_eval": figures, **({"client_eval_failures": failures} if failures else {})})
        shared = method.personal_eval_shared()
        if shared is not None:
            blob = personal_eval_blob(*shared)
            federated, figures, failures = evaluate_federated(engine, method, config.faults.fail_fast, blob)
            result.update({k.replace("fed_", "fed_personal_", 1): v for k, v in federated.items()})
            details["client_personal_fed_eval"] = figures
    return result, details


def evaluate_personal(setup: RunSetup, method, config: RunConfig, adapters: dict) -> tuple[dict, list[dict]]:
    """Each client's personalised adapter on the server's held-out set: ({"personal_eval_loss"[, "..._accuracy"]}
    averaged over the clients (each counts once: the mean client's figure), [{"client", "eval_loss"[, ...]}])."""
    per_client = []
    for cid, (factors, scales) in sorted(adapters.items()):
        install_adapter(setup.layers, factors, scales, train_B=False, train_A=False)
        result = heldout(setup, config)
        # as the server's own figures (evaluate_round): plain floats, and a {task: accuracy} dict for task mixtures
        per_client.append({"client": cid, **{k: v for k, v in result.items() if k.startswith("eval_")}})
    return mean_figures([1.0] * len(per_client), per_client, "personal_"), per_client


def client_summaries(config: RunConfig, setup: RunSetup, engine: Engine) -> list[dict]:
    """Each client's data summary: from the setup, or as the clients reported it (partition.scheme "nodes": the
    server has none of their data)."""
    if config.partition.scheme != "nodes":
        return setup.client_summaries
    return list(engine.client_summaries() or [])


def method_options(config: RunConfig, method) -> dict:
    return {
        "rank": config.lora.rank,
        **config.scale_rule.describe(),
        "target_modules": config.model.target_modules,
        "weighting": config.weighting,
        "sampling": config.sampling.model_dump(exclude_none=True),
        **method.options(),
    }


def weighted_mean(weights: list[float], values: list[float]) -> float | None:
    """Σ w_i v_i / Σ w_i (None for an empty round)."""
    total = sum(weights)
    if not values or total == 0:
        return None
    return sum(w * v for w, v in zip(weights, values, strict=True)) / total


def _totals(records: list[dict]) -> dict:
    return {
        "client_failures": sum(len(r.get("failures", [])) for r in records),
        "skipped_rounds": sum("skipped" in r for r in records),
        "bytes_up": sum(r["bytes_up"] for r in records),
        "bytes_down": sum(r["bytes_down"] for r in records),
        "sim_s": sum(r["sim_round_s"] for r in records),
        "wall_s": sum(r["wall_s"] for r in records),
    }


# ==================================================================================== the round loop's phases


@dataclass
class RunState:
    """What the round loop carries from round to round (built by :func:`open_run`)."""

    config: RunConfig
    run_dir: Path
    setup: RunSetup
    method: Method
    engine: Engine
    summaries: list[dict]
    """Each client's data summary (``client_summaries``)."""
    num_examples: list[int]
    start_round: int
    resumed: bool = False
    """Whether a checkpoint was restored."""
    records: list[dict] = field(default_factory=list)
    initial_eval: dict | None = None
    initial_details: dict = field(default_factory=dict)


@dataclass
class Received:
    """One round's uploads that passed validation (in participant order), and what failed."""

    plans: list[ClientPlan] = field(default_factory=list)
    uploads: list[Factors] = field(default_factory=list)
    metas: list[dict] = field(default_factory=list)
    downloads: list[int] = field(default_factory=list)
    """Download bytes of each successful client."""
    failures: list[dict] = field(default_factory=list)
    bytes_up: int = 0
    """Upload bytes of every client that returned one (failed validation or not)."""


def open_run(config: RunConfig, run_dir: Path, resume: bool, engine: Engine | None) -> RunState:
    """Open or resume (the first phase): refuse what cannot run, write the config, load model and data, build the
    method and the engine, and (resuming) restore the method's state, the merged base and the records up to the
    checkpoint."""
    check_precisions(config)  # a precision that cannot run here is refused before anything is written
    if config.partition.scheme == "nodes" and (engine is None or engine.client_summaries() is None):
        raise ConfigError(
            'partition.scheme = "nodes": each client\'s data is on its own Flower node (node config data=PATH); '
            'run it with `flwr run` (docs/flower.md), or in-process with partition.scheme = "files"'
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume and (run_dir / rundir.CHECKPOINT_DIR).exists():
        raise CheckpointError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
    checkpoint = rundir.load_checkpoint(run_dir) if resume and rundir.has_checkpoint(run_dir) else None
    if checkpoint is not None and checkpoint[0] > config.rounds:  # checked before anything is loaded or written
        raise ConfigError(f"rounds: {config.rounds} is below the {checkpoint[0]} rounds {run_dir} has already done")
    if checkpoint is None:  # the config first: a run killed from here on can be resumed
        rundir.write_config(run_dir, dump_config(config))
    setup = build(config, run_dir, resume)
    if checkpoint is not None:  # once model and data have loaded (a failed resume leaves the folder as it was)
        rundir.write_config(run_dir, dump_config(config))  # e.g. more rounds
    # the clients' state stores are readable here only when the clients run here (in-process)
    states = client_states_dir(run_dir) if engine is None else None
    engine = engine if engine is not None else inprocess_engine(config, setup, states)
    nodes = engine.describe_nodes()
    if nodes is not None:  # a federation: which node runs each client, what it reported or refused
        rundir.write_json(run_dir / "nodes.json", nodes)
    method = build_method(config, setup, client_states=states)
    summaries = client_summaries(config, setup, engine)
    engine.attach_base_history(method.base_history)  # engines whose clients own a base copy send what they missed
    state = RunState(config, run_dir, setup, method, engine, summaries, [int(s["size"]) for s in summaries], 1)
    if checkpoint is not None:  # (a run killed before its first checkpoint starts over)
        last, tensors, meta = checkpoint
        method.load_state_tensors(tensors, meta["method_steps"])
        for update in method.base_history():
            merge_update(setup.layers, update)
        state.records = rundir.keep_metrics_through(run_dir, last)
        state.initial_eval = meta.get("initial_eval")
        state.initial_details = meta.get("initial_details") or {}
        state.start_round = last + 1
        state.resumed = True
    else:  # no checkpoint yet: lines of an attempt that crashed before its first checkpoint cannot be resumed
        rundir.atomic_write_text(run_dir / rundir.METRICS_FILE, "")
    return state


def inprocess_engine(config: RunConfig, setup: RunSetup, client_states: Path | None = None) -> InProcessEngine:
    """The default engine: every client in this process, on the server's model (or a base at its precision);
    ``client_states``: where clients keep state between rounds (FedSA-LoRA's own B), or None."""
    return InProcessEngine(
        setup.model,
        setup.layers,
        setup.client_examples,
        setup.training,
        setup.pad_id,
        deadline_s=config.faults.round_deadline_s,
        fail_fast=config.faults.fail_fast,
        bases=client_bases(setup),
        evaluation=ClientEvaluation(
            setup.tokenizer, setup.client_eval_sets, config.eval.batch_size, config.eval.length_normalize
        ),
        client_states=client_states,
    )


def plan_round(
    method: Method,
    seed: int,
    round_idx: int,
    participants: list[int],
    purposes: tuple[str, str] = ("sketch", "train"),
    lr: float | None = None,
) -> list[tuple[ClientPlan, bytes]]:
    """Plan: each participant's assignment (its random draws from ``purposes[0]``) and its
    download blob (its training seed from ``purposes[1]``); the planner's pilot passes ("pilot", "pilot").
    ``lr``: the round's client lr when it decays over rounds (:func:`fedlora.client.train.round_lr`), else None."""
    planned = []
    for cid in participants:
        plan = method.plan(cid, round_idx, seeding.generator(seed, purposes[0], round_idx, cid))
        train_seed = seeding.derive_seed(seed, purposes[1], round_idx, cid)
        planned.append((plan, download_blob(plan, round_idx, train_seed, lr)))
    return planned


def train_clients(
    engine: Engine,
    planned: list[tuple[ClientPlan, bytes]],
    round_idx: int,
    max_update_norm: float | None,
    fail_fast: bool,
) -> Iterator[tuple[ClientPlan, bytes, bytes | ClientFailure, tuple[Factors, dict] | str]]:
    """Clients train: run the round's clients on ``engine`` and check each upload as it arrives; yields
    (plan, download, what came back, its checked factors and metadata or why it failed). ``fail_fast``: a failure
    raises FedloraError naming the client instead."""
    jobs = [(plan.client_id, blob) for plan, blob in planned]
    for (plan, download), result in zip(planned, engine.run_clients(jobs), strict=True):
        received = receive_upload(plan, result, max_update_norm)
        if isinstance(received, str) and fail_fast:
            raise FedloraError(f"client {plan.client_id} failed in round {round_idx}: {received}")
        yield plan, download, result, received


def collect_uploads(
    state: RunState, planned: list[tuple[ClientPlan, bytes]], round_idx: int, reporter: Reporter
) -> Received:
    """Clients train (``train_clients``), collected: the successful uploads and the failures, counted."""
    faults, got = state.config.faults, Received()
    for plan, download, result, received in train_clients(
        state.engine, planned, round_idx, faults.max_update_norm, faults.fail_fast
    ):
        got.bytes_up += len(result) if isinstance(result, bytes) else 0
        if isinstance(received, str):
            got.failures.append({"client": plan.client_id, "reason": received})
            continue
        factors, meta = received
        meta["bytes_up"] = len(result)
        got.plans.append(plan)
        got.uploads.append(factors)
        got.metas.append(meta)
        got.downloads.append(len(download))
        reporter.client_done(round_idx, plan.client_id, plan.rank, float(meta["train_loss"]))
    return got


def aggregate(
    config: RunConfig,
    method: Method,
    plans: list[ClientPlan],
    uploads: list[Factors],
    weights: list[float],
    num_examples: list[int],
    round_idx: int,
) -> tuple[dict, dict]:
    """Aggregate (with [privacy]: clipped and noised, ``aggregate_privately``): (the method's facts, the
    DP facts for the round's record)."""
    dp_facts: dict = {}
    if config.privacy.clip_norm is None or not plans:
        method_facts = method.aggregate(plans, uploads, weights)
    else:
        method_facts, dp_facts = aggregate_privately(config, method, plans, uploads, weights, num_examples, round_idx)
    if config.privacy.clip_norm is not None:
        dp_facts["dp_epsilon"] = round_epsilon(config, round_idx)
    return method_facts, dp_facts


def merge_pending(method: Method, layers) -> None:
    """Merge: fold the method's global update of this round into the base (merge-into-base methods)."""
    update = method.pending_base_update()
    if update is not None:
        merge_update(layers, update)


def run_round(state: RunState, round_idx: int, reporter: Reporter) -> dict:
    """One round, its phases in order: sample → plan → clients train → aggregate (DP) → merge → record → evaluate.
    Returns the round's record (not yet written)."""
    config, method, started = state.config, state.method, time.perf_counter()
    participants = round_participants(config, round_idx)
    reporter.round_started(round_idx, participants)
    lr = round_lr(config.train.lr, config.train.round_lr_schedule, round_idx, config.rounds)
    planned = plan_round(method, config.seed, round_idx, participants, lr=lr)
    got = collect_uploads(state, planned, round_idx, reporter)
    crashpoints.reached("round:trained")

    successful = [plan.client_id for plan in got.plans]
    timing = state.setup.system.round(
        successful,
        [plan.rank for plan in got.plans],
        got.downloads,
        [m["bytes_up"] for m in got.metas],
        [int(m["tokens"]) for m in got.metas],
    )
    weights = round_weights(config, successful, state.num_examples)  # a_i over the successful clients (docs)
    train_loss = weighted_mean(weights, [float(m["train_loss"]) for m in got.metas])
    skipped = None
    plans, uploads = got.plans, got.uploads
    if participants and len(plans) < config.faults.min_successful:  # the global model stays as it is
        skipped = (
            f"{len(plans)} of {len(participants)} clients succeeded "
            f"(faults.min_successful={config.faults.min_successful})"
        )
        plans, uploads, weights = [], [], []
    method_facts, dp_facts = aggregate(config, method, plans, uploads, weights, state.num_examples, round_idx)
    merge_pending(method, state.setup.layers)

    record = {
        "round": round_idx,
        "method": config.method,
        "participants": participants,
        "ranks": [plan.rank for plan, _ in planned],
        "scales": [plan.scale for plan, _ in planned],
        "successful": successful,
        "failures": got.failures,
        "weights": weights,
        "bytes_up": got.bytes_up,
        "bytes_down": sum(len(blob) for _, blob in planned),
        "sim_round_s": timing.round_s,
        "sim_time_s": (state.records[-1]["sim_time_s"] if state.records else 0.0) + timing.round_s,
        "client_sim_s": timing.client_s,
        "train_loss": train_loss,
        "client_train_loss": [float(m["train_loss"]) for m in got.metas],
        **method_facts,
        **dp_facts,
    }
    if skipped is not None:
        record["skipped"] = skipped
    if timing.bandwidth_hz is not None:
        record["client_bandwidth_hz"] = timing.bandwidth_hz
    record.update(state.engine.round_facts())  # transport facts of engines that have them (Flower: catch-up bytes)
    if round_idx % config.eval.every == 0 or round_idx == config.rounds:
        result, details = evaluate_round(state.setup, method, config, state.engine)
        record.update(result)
        record.update(details)
    record["wall_s"] = time.perf_counter() - started
    return record


def checkpoint_round(state: RunState, record: dict) -> None:
    """Record and checkpoint: the round's line in metrics.jsonl, then the state a resume needs."""
    rundir.append_metrics(state.run_dir, record)
    state.records.append(record)
    meta = {
        "method_steps": state.method.step_count,
        "initial_eval": state.initial_eval,
        "initial_details": state.initial_details,
    }
    rundir.save_checkpoint(state.run_dir, record["round"], state.method.state_tensors(), meta)


def write_outputs(state: RunState) -> dict:
    """Outputs (the last phase): the PEFT adapter and summary.json; returns the summary."""
    config, setup, method, records = state.config, state.setup, state.method, state.records
    factors, scales = method.export_adapter()
    rslora = config.scale_rule.rslora
    save_peft_adapter(
        state.run_dir / "adapter", factors, scales, config.model.target_modules, setup.base_name, rslora=rslora
    )
    for cid, (own, own_scales) in (method.personal_adapters() or {}).items():  # FedSA-LoRA's own models
        save_peft_adapter(
            state.run_dir / PERSONAL_ADAPTERS / str(cid),
            own,
            own_scales,
            config.model.target_modules,
            setup.base_name,
            rslora=rslora,
        )
    final = next((r for r in reversed(records) if "eval_loss" in r or "fed_eval_loss" in r), {})
    initial_details = state.initial_details
    summary = {
        "method": config.method,
        "options": method_options(config, method),
        "rounds": config.rounds,
        "seed": config.seed,
        "num_clients": config.partition.num_clients,
        "clients": [
            {**shard, **profile.summary(), "budget": k, **({"precision": p} if p else {})}
            for shard, profile, k, p in zip(
                state.summaries,
                setup.system.profiles,
                setup.budgets,
                setup.precisions or [None] * len(setup.budgets),
                strict=True,
            )
        ],
        "initial_eval": state.initial_eval,
        **({"initial_client_eval": initial_details["client_eval"]} if initial_details.get("client_eval") else {}),
        "final_eval": {k: v for k, v in final.items() if k.startswith(EVAL_PREFIXES)},
        "final_train_loss": next((r["train_loss"] for r in reversed(records) if r["train_loss"] is not None), None),
        "totals": _totals(records),
        "faults": config.faults.model_dump(),
        "privacy": privacy_summary(config),
        "base_model": setup.base_name,
        "fedlora_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
    rundir.write_json(state.run_dir / rundir.SUMMARY_FILE, summary)
    return summary


def run(
    config: RunConfig,
    run_dir: Path,
    resume: bool = False,
    reporter: Reporter | None = None,
    engine: Engine | None = None,
) -> dict:
    """Run (or resume) a federation into ``run_dir``; returns the summary written to summary.json.

    ``engine`` carries the clients' payloads (default: in this process, on the server's model). The phases:
    open or resume → (evaluate before training) → per round: sample, plan, clients train, aggregate (DP), merge,
    record, evaluate, checkpoint → outputs."""
    reporter = reporter or SilentReporter()
    state = open_run(config, run_dir, resume, engine)
    if not state.resumed and config.eval.before:
        state.initial_eval, state.initial_details = evaluate_round(state.setup, state.method, config, state.engine)
        reporter.evaluated("before training", state.initial_eval)
    reporter.run_started(config, state.setup, state.start_round)
    for round_idx in range(state.start_round, config.rounds + 1):
        record = run_round(state, round_idx, reporter)
        checkpoint_round(state, record)
        reporter.round_done(record)
    return write_outputs(state)


__all__ = ["run", "load_final_model", "sample_clients", "aggregation_weights", "round_participants", "round_weights"]


PERSONAL_ADAPTERS = "adapter-clients"
"""Folder of the per-client personalised PEFT adapters (``adapter-clients/<id>/``), for methods that have them."""


EVAL_PREFIXES = ("eval_", "fed_eval_", "personal_eval_", "fed_personal_eval_")
"""The evaluation figures of a record that summary.json's final_eval keeps."""


def client_states_dir(run_dir: Path) -> Path:
    """Where in-process clients keep their state between rounds: the run's checkpoint folder, ``clients/<id>/``."""
    return run_dir / rundir.CHECKPOINT_DIR / "clients"


def load_final_model(run_dir: Path):
    """fedlora's own final model of a run, rebuilt from its folder: (model, tokenizer, config).

    The base (reloaded, or DIR/base/ for a random one) gets every merged update in order, and the method's
    global adapter is installed on top: the model the run evaluated last.
    """
    from fedlora.config import load_config
    from fedlora.lora.layer import inject_lora
    from fedlora.lora.state import ModuleShape
    from fedlora.setup import client_budgets, load_model

    config = load_config(run_dir / rundir.CONFIG_FILE)
    model, tokenizer, _ = load_model(config, run_dir, resume=True)
    layers = inject_lora(model, config.model.target_modules, 0.0)
    shapes = {name: ModuleShape(layer.out_features, layer.in_features) for name, layer in layers.items()}

    method = build_method(
        config, SimpleNamespace(shapes=shapes, budgets=client_budgets(config)), client_states=client_states_dir(run_dir)
    )
    _, tensors, meta = rundir.load_checkpoint(run_dir)
    method.load_state_tensors(tensors, meta["method_steps"])
    for update in method.base_history():  # the same merges, in the same order, as the run
        merge_update(layers, update)
    adapter = method.eval_adapter()
    if adapter is not None:
        install_adapter(layers, *adapter, train_B=False, train_A=False)
    return model.eval(), tokenizer, config

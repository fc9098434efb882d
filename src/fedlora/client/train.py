"""Local training of one client's installed adapter: AdamW, schedule, gradient accumulation, seeded."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fedlora.client.loss import batch_loss, loss_terms
from fedlora.data.tokenize import collate, length_grouped_order


@dataclass(frozen=True)
class LocalTraining:
    """Plain arguments for ``train_adapter`` (see fedlora.config.TrainConfig for meanings)."""

    lr: float
    local_steps: int
    batch_size: int
    grad_accum: int = 1
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    local_epochs: float | None = None
    gradient_checkpointing: bool = False

    def steps_for(self, num_examples: int) -> int:
        """Optimizer steps for a client with ``num_examples``: local_steps, or local_epochs worth of batches."""
        if self.local_epochs is None:
            return self.local_steps
        return max(1, math.ceil(self.local_epochs * num_examples / (self.batch_size * self.grad_accum)))


@dataclass(frozen=True)
class LocalResult:
    train_loss: float
    """Mean over the round's micro-batches (before each step's update) of the loss per answer token (causal LM)
    or per example (encoder classifier), in nats."""
    steps: int
    tokens: int
    """Tokens processed (padding excluded)."""
    num_examples: int


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def round_lr(lr: float, schedule: str, round_idx: int, rounds: int) -> float | None:
    """The clients' lr in round ``round_idx`` (1-based) of ``rounds`` under a decay over rounds: lr · f((t − 1)/R),
    f(p) = 1 − p or ½(1 + cos πp) (:func:`lr_factor` with the round as the step); None for "constant" (the
    clients keep their own ``LocalTraining.lr``)."""
    if schedule == "constant":
        return None
    return lr * lr_factor(round_idx - 1, rounds, 0, schedule)


def _micro_batches(examples: list[dict], count: int, batch_size: int, generator: torch.Generator):
    """``count`` micro-batches of index lists, cycling through length-grouped epochs as needed."""
    lengths = [len(e["input_ids"]) for e in examples]
    produced = 0
    while produced < count:
        for batch in length_grouped_order(lengths, batch_size, generator):
            yield batch
            produced += 1
            if produced == count:
                return


@dataclass(frozen=True)
class StepStats:
    """One optimizer step of :func:`train_steps`."""

    losses: list[float]
    """Each micro-batch's loss per answer token (or per example), in nats, before the step's update."""
    tokens: int
    """Tokens the step processed (padding excluded)."""


def train_steps(
    model: nn.Module, examples: list[dict], cfg: LocalTraining, pad_id: int, seed: int
) -> Iterator[StepStats]:
    """:func:`train_adapter` one optimizer step at a time: yields each step's :class:`StepStats` after the update.

    The model is in train mode from the first step until the iterator is exhausted (then eval mode).
    """
    if not examples:
        raise ValueError("client has no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    device = params[0].device
    checkpointed = _checkpointable(model) if cfg.gradient_checkpointing else None
    if checkpointed is not None:
        _set_checkpointing(checkpointed, True)
    model.train()
    steps = cfg.steps_for(len(examples))
    batches = _micro_batches(examples, steps * cfg.grad_accum, cfg.batch_size, generator)
    try:  # a client that fails mid-training leaves the shared model as it found it
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, steps, cfg.warmup_steps, cfg.lr_schedule)
            micro = [collate([examples[i] for i in next(batches)], pad_id) for _ in range(cfg.grad_accum)]
            terms = sum(loss_terms(model, m) for m in micro)  # answer tokens, or examples for a classifier
            losses, tokens = [], 0
            for m in micro:
                loss_sum, count = batch_loss(model, m, device)
                (loss_sum / max(terms, 1)).backward()
                losses.append(loss_sum.item() / max(count, 1))
                tokens += int(m["attention_mask"].sum())
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            yield StepStats(losses, tokens)
    finally:
        model.eval()
        if checkpointed is not None:
            _set_checkpointing(checkpointed, False)


def _checkpointable(model: nn.Module) -> nn.Module | None:
    """The Hugging Face model that can checkpoint its layers: the model itself, or an encoder classifier's
    backbone (None if neither can)."""
    for candidate in (model, getattr(model, "backbone", None)):
        if getattr(candidate, "supports_gradient_checkpointing", False):
            return candidate
    return None


def train_adapter(model: nn.Module, examples: list[dict], cfg: LocalTraining, pad_id: int, seed: int) -> LocalResult:
    """Train the model's trainable parameters (the installed LoRA factors) on encoded examples.

    examples: dicts with ``input_ids`` and ``labels`` lists (fedlora.data.tokenize.encode_example), or with
    ``input_ids`` and a ``class_label`` for an encoder classifier (``encode_text_label``; cross-entropy over its
    labels, normalised by the number of examples of the step as the answer loss is by its answer tokens).
    Each step: length-grouped micro-batches, the answer-only loss with the LM head applied at answer positions
    only (:func:`fedlora.client.loss.answer_loss`), AdamW.
    """
    losses, tokens, steps = [], 0, 0
    for stats in train_steps(model, examples, cfg, pad_id, seed):
        losses.extend(stats.losses)
        tokens += stats.tokens
        steps += 1
    return LocalResult(sum(losses) / len(losses), steps, tokens, len(examples))


def _set_checkpointing(model: nn.Module, on: bool) -> None:
    """Switch a Hugging Face model's activation checkpointing on or off (transformers 5's name, else the older one).
    Non-reentrant: correct with a frozen base whose inputs need no gradient."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(kwargs)
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()

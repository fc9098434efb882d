"""Held-out loss and option scores from one forward pass per example.

Held-out evaluation needs two things of every example: the answer loss of its encoded prompt+answer sequence
(:func:`fedlora.data.tokenize.encode_example`) and the log-likelihood of each of its options after the prompt
(:mod:`fedlora.evaluation.scoring`). Done separately, that is two forward passes over the same prompt. In a
causal model the hidden state at the prompt's last position depends on the prompt only, so the output there in
the prompt+answer sequence is the output the scorer computes on the prompt alone: when every option of an example
is a single token, one forward pass of the encoded sequence gives the loss (LM head at the answer positions) and
the option scores (the first answer position's log-softmax, read at the option tokens). Both numbers equal the
two-pass computation up to float rounding (the loss batches are the same, so the loss is the same bit for bit).

An example is fused only when its encoded prompt is exactly the scorer's prompt ids (``encode_example`` cuts
long prompts from the left; the scorer never cuts) and all its options are single tokens; the others are scored
by :func:`fedlora.evaluation.scoring.choice_logprobs` as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedlora.data.tokenize import IGNORE_INDEX
from fedlora.evaluation import scoring

__all__ = ["HeldoutScores", "loss_and_option_scores"]


@dataclass(frozen=True)
class HeldoutScores:
    loss_sum: float
    """Sum over all examples' answer tokens of the next-token cross-entropy, nats."""
    loss_tokens: int
    """Number of answer tokens the sum runs over."""
    scores: list[torch.Tensor] | None
    """Per example, the float64 log-likelihood [len(options[i])] of each option (None when no options given)."""


def loss_and_option_scores(
    model: nn.Module,
    tokenizer: Any,
    encoded: Sequence[dict],
    prompts: Sequence[str] | None,
    options: Sequence[Sequence[str]] | None,
    *,
    batch_size: int,
    pad_id: int,
    length_normalize: bool = False,
) -> HeldoutScores:
    """Answer loss of ``encoded`` and, when ``options`` is given, each example's option scores.

    ``encoded[i]`` is example i's ``encode_example`` output (``input_ids``, ``labels``); ``prompts[i]`` and
    ``options[i]`` are its prompt and option strings, scored as :func:`scoring.choice_logprobs` scores them
    (``length_normalize`` as there). Loss batches: examples sorted by length (ties in input order), cut into
    ``batch_size`` chunks. Runs in eval mode under ``torch.inference_mode()``; the model's modes are restored.
    """
    if options is not None and (prompts is None or len(prompts) != len(encoded) or len(options) != len(encoded)):
        raise ValueError(f"prompts and options need one entry per encoded example ({len(encoded)})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    single = _single_token_options(tokenizer, options) if options is not None else None
    prompt_ids = [list(tokenizer(p)["input_ids"]) for p in prompts] if options is not None else None
    fused = [
        single is not None and prompt_ids is not None and single[i] is not None and _prompt_matches(ex, prompt_ids[i])
        for i, ex in enumerate(encoded)
    ]
    with scoring._scoring_mode(model):
        probe = min((ex["input_ids"] for ex in encoded), key=len, default=[pad_id])
        logits_at = scoring._logits_function(model, pad_id, list(probe))
        loss_sum, tokens, fused_scores = _fused_pass(logits_at, encoded, single, fused, batch_size)
    if options is None:
        return HeldoutScores(loss_sum, tokens, None)
    rest = [i for i in range(len(encoded)) if not fused[i]]
    rest_scores = scoring.choice_logprobs(
        model,
        tokenizer,
        [prompts[i] for i in rest],
        [options[i] for i in rest],
        batch_size=batch_size,
        length_normalize=length_normalize,
    )
    scores: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
    for i, row in fused_scores.items():
        scores[i] = row.clone()  # single-token options: the length-normalised score is the same
    for i, row in zip(rest, rest_scores, strict=True):
        scores[i] = row
    return HeldoutScores(loss_sum, tokens, scores)


def _single_token_options(tokenizer: Any, options: Sequence[Sequence[str]]) -> list[list[int] | None]:
    """Per example, its options' token ids when every option is one token, else None (tokenised once per list)."""
    cache: dict[tuple[str, ...], list[int] | None] = {}
    result = []
    for opts in options:
        key = tuple(opts)
        if key not in cache:
            ids = [list(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in key]
            cache[key] = [t[0] for t in ids] if key and all(len(t) == 1 for t in ids) else None
        result.append(cache[key])
    return result


def _prompt_matches(example: dict, prompt_ids: list[int]) -> bool:
    """Whether the encoded example is ``prompt_ids`` followed by answer tokens (labels -100 exactly there)."""
    n = len(prompt_ids)
    labels = list(example["labels"])
    return (
        n >= 1
        and len(labels) > n
        and list(example["input_ids"][:n]) == prompt_ids
        and all(label == IGNORE_INDEX for label in labels[:n])
        and labels[n] != IGNORE_INDEX
    )


def _fused_pass(
    logits_at: scoring.LogitsAt,
    encoded: Sequence[dict],
    single: list[list[int] | None] | None,
    fused: list[bool],
    batch_size: int,
) -> tuple[float, int, dict[int, torch.Tensor]]:
    """(loss sum, answer tokens, {example: option scores}) over length-sorted batches of ``encoded``."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    loss_sum, tokens, scores = 0.0, 0, {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        seqs = [list(encoded[i]["input_ids"]) for i in chunk]
        rows, positions, targets, first = [], [], [], {}
        for row, i in enumerate(chunk):
            labels = encoded[i]["labels"]
            for pos in range(len(labels) - 1):
                if labels[pos + 1] != IGNORE_INDEX:
                    if fused[i] and i not in first:
                        first[i] = len(rows)  # the prompt's last position: predicts the first answer token
                    rows.append(row)
                    positions.append(pos)
                    targets.append(int(labels[pos + 1]))
        if not rows:
            continue
        logits = logits_at(seqs, torch.tensor(rows), torch.tensor(positions)).float()  # [N, V]
        target_t = torch.tensor(targets, device=logits.device)
        loss_sum += float(F.cross_entropy(logits, target_t, reduction="sum"))
        tokens += len(targets)
        if first:
            picked = logits[torch.tensor(list(first.values()), device=logits.device)].log_softmax(dim=-1)
            for k, (i, _) in enumerate(first.items()):
                option_tokens = torch.tensor(single[i], device=logits.device)  # type: ignore[index]
                scores[i] = picked[k, option_tokens].double().cpu()
    return loss_sum, tokens, scores

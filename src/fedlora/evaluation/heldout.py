"""Evaluate a model on a held-out set: answer loss (perplexity = exp of it) and, where answers are options,
accuracy by the log-likelihood of each option. The same function runs during training and in ``fedlora eval``.

Both come from one forward pass per example where the options are single tokens
(:mod:`fedlora.evaluation.fused`)."""

from __future__ import annotations

import math

from torch import nn

from fedlora.evaluation.accuracy import task_accuracy
from fedlora.evaluation.encoder import evaluate_classifier
from fedlora.evaluation.fused import loss_and_option_scores
from fedlora.evaluation.scoring import pick_options
from fedlora.models.encoder import EncoderClassifier


def evaluate_heldout(
    model: nn.Module, tokenizer, eval_set, batch_size: int, pad_id: int, *, length_normalize: bool = False
) -> dict:
    """Held-out metrics of ``model`` (deterministic: eval mode, no sampling, fixed batching).

    Returns ``eval_loss`` (mean answer-token cross-entropy, nats), ``eval_perplexity`` (its exp) and, when the
    set has options, ``eval_accuracy`` in [0, 1], plus ``eval_task_accuracy`` {task: accuracy} for task mixtures.
    An encoder classifier is evaluated by :func:`fedlora.evaluation.encoder.evaluate_classifier` instead
    (``eval_loss`` is then the mean cross-entropy over the labels per example; no perplexity).
    """
    if isinstance(model, EncoderClassifier):
        return evaluate_classifier(model, eval_set, batch_size, pad_id)
    fused = loss_and_option_scores(
        model,
        tokenizer,
        eval_set.encoded,
        eval_set.prompts if eval_set.options is not None else None,
        eval_set.options,
        batch_size=batch_size,
        pad_id=pad_id,
        length_normalize=length_normalize,
    )
    loss = fused.loss_sum / max(fused.loss_tokens, 1)
    result: dict = {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0))}
    if fused.scores is not None:
        accuracy, predicted = pick_options(fused.scores, eval_set.gold)
        result["eval_accuracy"] = accuracy
        if eval_set.tasks is not None:
            result["eval_task_accuracy"] = task_accuracy(eval_set.tasks, predicted.tolist(), eval_set.gold)
    return result

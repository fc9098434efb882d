"""Held-out evaluation of an encoder classifier: cross-entropy over the labels and argmax accuracy.

Deterministic: eval mode (no dropout), ``torch.inference_mode()``, and fixed batches (examples sorted by token
length, ties in input order, cut into ``batch_size`` chunks), so two calls on the same model give the same
numbers bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedlora.data.tokenize import CLASS_LABEL, collate
from fedlora.evaluation.accuracy import task_accuracy
from fedlora.models.encoder import EncoderClassifier

__all__ = ["classifier_logits", "evaluate_classifier"]


def _length_batches(encoded: list[dict], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def classifier_logits(model: EncoderClassifier, encoded: list[dict], batch_size: int, pad_id: int) -> torch.Tensor:
    """Logits [N, num_labels] (float32, CPU) of encoded examples, in input order."""
    was_training = model.training
    model.eval()
    device = model.prototypes.device
    logits = torch.empty(len(encoded), len(model.labels), dtype=torch.float32)
    with torch.inference_mode():
        for rows in _length_batches(encoded, batch_size):
            batch = collate([encoded[i] for i in rows], pad_id)
            out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            logits[torch.tensor(rows)] = out.float().cpu()
    model.train(was_training)
    return logits


def _argmax_lowest(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax [N] with ties resolved to the lowest label index."""
    is_best = logits == logits.max(dim=1, keepdim=True).values
    columns = torch.arange(logits.shape[1]).expand_as(logits)
    return torch.where(is_best, columns, logits.shape[1]).min(dim=1).values


def evaluate_classifier(model: EncoderClassifier, eval_set, batch_size: int, pad_id: int) -> dict:
    """``eval_loss`` (mean cross-entropy over the labels, nats per example), ``eval_accuracy`` (argmax accuracy in
    [0, 1]) and, when ``eval_set.tasks`` is set, ``eval_task_accuracy`` {task: accuracy}.

    ``eval_set.encoded`` holds :func:`~fedlora.data.tokenize.encode_text_label` examples (with ``class_label``).
    """
    encoded = eval_set.encoded
    if not encoded:
        raise ValueError("evaluation set is empty")
    logits = classifier_logits(model, encoded, batch_size, pad_id)
    gold = torch.tensor([int(ex[CLASS_LABEL]) for ex in encoded], dtype=torch.long)
    predicted = _argmax_lowest(logits)
    result: dict = {
        "eval_loss": float(F.cross_entropy(logits, gold, reduction="mean")),
        "eval_accuracy": float((predicted == gold).double().mean()),
    }
    if eval_set.tasks is not None:
        result["eval_task_accuracy"] = task_accuracy(eval_set.tasks, predicted.tolist(), gold.tolist())
    return result

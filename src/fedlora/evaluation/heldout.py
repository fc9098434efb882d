"""Evaluate the current global model on the held-out split: answer loss, and accuracy for classification."""

from __future__ import annotations

from torch import nn

from fedlora.client.loss import mean_answer_loss
from fedlora.data.tokenize import collate
from fedlora.evaluation.scoring import classification_accuracy


def evaluate_heldout(model: nn.Module, tokenizer, eval_set, batch_size: int, pad_id: int) -> dict[str, float]:
    """{"eval_loss": mean answer-token loss, "eval_accuracy": label log-likelihood accuracy (classification)}."""
    model.eval()
    encoded = eval_set.encoded
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    batches = [
        collate([encoded[i] for i in order[s : s + batch_size]], pad_id) for s in range(0, len(order), batch_size)
    ]
    result = {"eval_loss": mean_answer_loss(model, batches)}
    if eval_set.options is not None:
        accuracy, _ = classification_accuracy(
            model, tokenizer, eval_set.prompts, eval_set.options, eval_set.gold, batch_size=batch_size
        )
        result["eval_accuracy"] = accuracy
    return result

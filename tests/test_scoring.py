"""Option scoring: exact against hand-computed and plain full-forward references, fast == general path."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from optional import require
from torch import nn

from fedlora.evaluation import classification_accuracy, option_logprobs, scoring
from fedlora.models import byte_tokenizer, tiny_random_llama
from fedlora.models.tiny import BYTE_OFFSET


def tid(ch: str) -> int:
    """Byte-tokenizer id of a one-byte character."""
    return ord(ch) + BYTE_OFFSET


# ------------------------------------------------------------------------------------- a model we control
class _OneHot(nn.Module):
    """'Decoder' whose hidden state at each position is the one-hot vector of the token there."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.embed.weight.copy_(torch.eye(vocab))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(last_hidden_state=self.embed(input_ids))


class BigramLM(nn.Module):
    """Next-token logits depend only on the current token: ``logits[t] = table[input_ids[t]]``."""

    def __init__(self, table: torch.Tensor, softcap: float | None = None, hidden_scale: float = 1.0):
        super().__init__()
        vocab = table.shape[0]
        self.config = SimpleNamespace(final_logit_softcapping=softcap)
        self.softcap = softcap
        self.hidden_scale = hidden_scale  # applied only in forward(): a transform the split cannot see
        self.decoder = _OneHot(vocab)
        self.lm_head = nn.Linear(vocab, vocab, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(table.T)

    def get_decoder(self):
        return self.decoder

    def get_input_embeddings(self):
        return self.decoder.embed

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = self.lm_head(self.decoder(input_ids).last_hidden_state) * self.hidden_scale
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return SimpleNamespace(logits=logits)


class NoSplitBigramLM(BigramLM):
    """The same model without a decoder/head structure: scoring must use the full forward."""

    def get_decoder(self):
        raise AttributeError("no decoder")


def bigram_table(vocab: int = 259) -> torch.Tensor:
    """Logit table with a few hand-set preferences; every other row is all zeros (a uniform next token)."""
    table = torch.zeros(vocab, vocab)
    table[tid("a"), tid("x")] = 5.0  # after 'a': x >> y > z
    table[tid("a"), tid("y")] = 2.0
    table[tid("b"), tid("z")] = 4.0  # after 'b': z
    table[tid("x"), tid("y")] = 3.0  # after 'x': y
    table[tid("y"), tid("q")] = 1.5
    return table


def exact_score(table: torch.Tensor, prompt_last: str, option: str, softcap: float | None = None) -> float:
    """log p(option | prompt ending in prompt_last) under the bigram table, in float64."""
    t = table.double()
    if softcap is not None:
        t = softcap * torch.tanh(t / softcap)
    logprobs = t.log_softmax(dim=-1)
    total, prev = 0.0, prompt_last
    for ch in option:
        total += logprobs[tid(prev), tid(ch)].item()
        prev = ch
    return total


def test_picks_the_right_single_token_option_on_a_model_with_known_logits():
    tok, table = byte_tokenizer(), bigram_table()
    model = BigramLM(table)
    prompts, options = ["ha", "cb", "zz"], ["x", "y", "z"]
    scores = option_logprobs(model, tok, prompts, options)
    assert scores.shape == (3, 3) and scores.dtype == torch.float64
    expected = torch.tensor([[exact_score(table, p[-1], o) for o in options] for p in prompts], dtype=torch.float64)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    # the uniform row ('z' has no preference) gives log(1/259) to every option
    assert scores[2].sub(-math.log(259)).abs().max() < 1e-5
    accuracy, predicted = classification_accuracy(model, tok, prompts, options, gold=[0, 2, 1])
    assert predicted.tolist() == [0, 2, 0]  # row 3 is a three-way tie -> lowest index
    assert accuracy == pytest.approx(2 / 3)


def test_multi_token_options_sum_and_mean_exactly():
    tok, table = byte_tokenizer(), bigram_table()
    model = BigramLM(table)
    prompts, options = ["a", "some longer prompt ending in b"], ["xy", "y", "xyq", "zzz"]
    scores = option_logprobs(model, tok, prompts, options, batch_size=3)
    expected = torch.tensor([[exact_score(table, p[-1], o) for o in options] for p in prompts], dtype=torch.float64)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert scores[0].argmax().item() == 0  # "xy" after "a": the preferred chain
    normalised = option_logprobs(model, tok, prompts, options, length_normalize=True)
    lengths = torch.tensor([len(o) for o in options], dtype=torch.float64)
    torch.testing.assert_close(normalised, expected / lengths, atol=1e-5, rtol=0)


def test_model_without_decoder_structure_uses_the_full_forward():
    tok, table = byte_tokenizer(), bigram_table()
    prompts = ["ha", "b"]
    for options in (["x", "y", "z"], ["xy", "z"]):
        split = option_logprobs(BigramLM(table), tok, prompts, options)
        full = option_logprobs(NoSplitBigramLM(table), tok, prompts, options)
        torch.testing.assert_close(split, full, atol=1e-6, rtol=0)


def test_logit_softcapping_in_config_disables_the_head_shortcut():
    tok, table = byte_tokenizer(), bigram_table() * 4
    model = BigramLM(table, softcap=3.0)
    assert scoring._head_split(model) is None
    options = ["x", "y", "xy"]
    scores = option_logprobs(model, tok, ["ha"], options)
    expected = torch.tensor([[exact_score(table, "a", o, softcap=3.0) for o in options]], dtype=torch.float64)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_a_hidden_logit_transform_is_detected_and_the_full_forward_used():
    tok, table = byte_tokenizer(), bigram_table()
    model = BigramLM(table, hidden_scale=0.5)  # forward() scales logits; config does not say so
    with pytest.warns(UserWarning, match="full forward"):
        scores = option_logprobs(model, tok, ["ha"], ["x", "y"])
    expected = torch.tensor([[exact_score(table * 0.5, "a", o) for o in ["x", "y"]]], dtype=torch.float64)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ the tiny random Llama
PROMPTS = [
    "a",
    "Tweet: I love this, best day ever!\nSentiment:",
    "short one",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps again.",
    "xy",
    "mid-length prompt here",
    "é ☃ unicode",
]


@pytest.fixture(scope="module")
def llama():
    model, tok = tiny_random_llama(seed=7)
    with torch.no_grad():  # sharper next-token distributions than the 0.02-std init gives
        model.get_input_embeddings().weight.mul_(8.0)
    return model, tok


def naive_scores(model, tok, prompts, options) -> torch.Tensor:
    """Plain reference: one unpadded sequence per (prompt, option), full forward, full LM head."""
    out = torch.zeros(len(prompts), len(options), dtype=torch.float64)
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            p_ids = tok(prompt)["input_ids"]
            for j, option in enumerate(options):
                o_ids = tok(option, add_special_tokens=False)["input_ids"]
                logits = model(input_ids=torch.tensor([p_ids + o_ids])).logits[0]
                logprobs = logits.float().log_softmax(dim=-1).double()
                out[i, j] = sum(logprobs[len(p_ids) - 1 + k, t] for k, t in enumerate(o_ids))
    return out


def general_path(model, tok, prompts, options, batch_size=4) -> torch.Tensor:
    """The general (one sequence per pair) path, forced even for single-token options."""
    p_ids = [tok(p)["input_ids"] for p in prompts]
    o_ids = [tok(o, add_special_tokens=False)["input_ids"] for o in options]
    with torch.inference_mode():
        logits_at = scoring._logits_function(model, tok.pad_token_id, min(p_ids, key=len))
        return scoring._score_sequences(logits_at, p_ids, o_ids, batch_size).clone()


def test_fast_path_equals_general_path_equals_naive_reference(llama):
    model, tok = llama
    options = ["x", " ", "7"]  # single bytes: single tokens -> fast path
    reference = naive_scores(model, tok, PROMPTS, options)
    for batch_size in (1, 3, 16):  # different padding per prompt: scores must not change
        fast = option_logprobs(model, tok, PROMPTS, options, batch_size=batch_size)
        torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(general_path(model, tok, PROMPTS, options, batch_size), reference, atol=1e-5, rtol=0)
    assert reference.std() > 0.1  # the comparison is not between near-constant numbers


def test_multi_token_options_match_the_naive_reference(llama):
    model, tok = llama
    options = [" negative", " neutral", " positive", "?"]
    reference = naive_scores(model, tok, PROMPTS, options)
    for batch_size in (1, 5, 32):
        scores = option_logprobs(model, tok, PROMPTS, options, batch_size=batch_size)
        torch.testing.assert_close(scores, reference, atol=1e-5, rtol=0)
    lengths = torch.tensor([len(o.encode()) for o in options], dtype=torch.float64)
    mean = option_logprobs(model, tok, PROMPTS, options, length_normalize=True)
    torch.testing.assert_close(mean, reference / lengths, atol=1e-5, rtol=0)


def test_results_are_bit_identical_across_calls(llama):
    model, tok = llama
    for options in (["x", "y"], ["xy", "z", " longer option"]):
        first = option_logprobs(model, tok, PROMPTS, options, batch_size=3)
        second = option_logprobs(model, tok, PROMPTS, options, batch_size=3)
        assert torch.equal(first, second)
    acc1, pred1 = classification_accuracy(model, tok, PROMPTS, ["x", "y"], [0] * len(PROMPTS))
    acc2, pred2 = classification_accuracy(model, tok, PROMPTS, ["x", "y"], [0] * len(PROMPTS))
    assert acc1 == acc2 and torch.equal(pred1, pred2)


def test_lm_head_runs_only_at_the_scored_positions(llama):
    model, tok = llama
    option_logprobs(model, tok, PROMPTS[:2], ["x", "y"])  # first call verifies the split on a full forward
    assert scoring._split_verified[model] is True
    head_inputs = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: head_inputs.append(args[0].shape))
    try:
        option_logprobs(model, tok, PROMPTS, ["x", "y", "z"], batch_size=4)
        assert head_inputs == [torch.Size([4, 64]), torch.Size([3, 64])]  # one row per prompt
        head_inputs.clear()
        option_logprobs(model, tok, ["ab"], ["xyz", "q"], batch_size=8)
        assert head_inputs == [torch.Size([4, 64])]  # 3 + 1 option tokens, no prompt positions
    finally:
        hook.remove()


def test_peft_wrapped_model_is_scored_exactly(llama):
    peft = require("peft")
    base, tok = tiny_random_llama(seed=11)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, config)
    model.eval()
    for options in (["x", "y", "z"], [" yes", " no"]):
        torch.testing.assert_close(
            option_logprobs(model, tok, PROMPTS, options, batch_size=3),
            naive_scores(model, tok, PROMPTS, options),
            atol=1e-5,
            rtol=0,
        )


def test_train_mode_is_restored_and_result_is_a_normal_tensor(llama):
    model, tok = llama
    model.train()
    model.model.layers[0].eval()  # a submodule deliberately left in eval mode stays so
    try:
        scores = option_logprobs(model, tok, PROMPTS[:3], ["x", "y"])
        assert model.training and model.model.layers[1].training
        assert not model.model.layers[0].training
    finally:
        model.eval()
    scores += 1.0  # would raise for an inference-mode tensor
    assert not scores.is_inference()


def test_bad_inputs_raise_clear_errors(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="tokenises to no tokens"):
        option_logprobs(model, tok, ["a"], ["x", ""])
    with pytest.raises(ValueError, match="options is empty"):
        option_logprobs(model, tok, ["a"], [])
    with pytest.raises(ValueError, match="gold has 1 labels for 2 prompts"):
        classification_accuracy(model, tok, ["a", "b"], ["x", "y"], [0])
    with pytest.raises(ValueError, match="option indices"):
        classification_accuracy(model, tok, ["a"], ["x", "y"], [2])
    assert option_logprobs(model, tok, [], ["x", "y"]).shape == (0, 2)


def test_ties_go_to_the_lowest_index():
    scores = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, -1.0, 5.0], [float("nan")] * 3])
    assert scoring._argmax_lowest(scores).tolist() == [1, 0, 2, 0]

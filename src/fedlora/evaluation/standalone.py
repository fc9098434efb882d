"""``fedlora eval``: the held-out evaluation of training, run on an exported PEFT adapter.

The base model is rebuilt from the run's resolved config (the bundled model, a folder, or the random base saved in
RUN_DIR/base/), the adapter is loaded onto it with PEFT (``PeftModel.from_pretrained``, exactly as a user would),
and the same :func:`fedlora.evaluation.heldout.evaluate_heldout` that training used scores it on the run's
held-out split (or on other data, through ``key=value`` overrides of the run's config such as
``data.tasks=[...]``). On the run's own split the numbers equal the run's final evaluation up to float rounding
(PEFT computes x·Aᵀ·Bᵀ where fedlora may have merged updates into the base).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from fedlora import rundir
from fedlora.config import RunConfig, load_config
from fedlora.errors import ConfigError
from fedlora.evaluation.heldout import evaluate_heldout

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    """The run's resolved config with ``overrides`` applied (one-line ConfigError when the folder is no run)."""
    path = run_dir / rundir.CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: not found; give a run folder written by `fedlora run`")
    return load_config(path, overrides or [])


def check_adapter_dir(adapter_dir: Path) -> None:
    """A PEFT adapter folder must hold adapter_config.json and adapter_model.safetensors."""
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise ConfigError(f"{adapter_dir}: not a PEFT adapter folder (missing {', '.join(missing)})")


GRADIENT_CHECKPOINTING_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"
"""The start of transformers' FutureWarning that PEFT triggers when it wraps a model (filtered where we call it)."""


def _import_peft_model():
    """``peft.PeftModel``, imported without bitsandbytes' import-time notice (PEFT imports bitsandbytes)."""
    from fedlora.models.precision import quiet_bitsandbytes_import

    with quiet_bitsandbytes_import():
        from peft import PeftModel
    return PeftModel


def attach_adapter(model: nn.Module, adapter_dir: Path) -> nn.Module:
    """Load a PEFT LoRA adapter into ``model`` in place (onto the bare encoder of an encoder classifier)."""
    PeftModel = _import_peft_model()  # noqa: N806 - the class, imported late

    from fedlora.models.encoder import EncoderClassifier

    target = model.backbone if isinstance(model, EncoderClassifier) else model
    try:
        with warnings.catch_warnings():
            # PEFT 0.21's PeftModel.__init__ reads transformers' deprecated `is_gradient_checkpointing` (peft_model.py,
            # getattr(model, "is_gradient_checkpointing", True)): the FutureWarning is PEFT's, not the user's to act on
            warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_DEPRECATION, category=FutureWarning)
            PeftModel.from_pretrained(target, str(adapter_dir), is_trainable=False)
    except Exception as err:  # noqa: BLE001 - a mismatched adapter (keys, shapes) is the user's input
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{adapter_dir}: the adapter does not fit the run's base model: {first}") from None
    return model.eval()


def evaluate_adapter(
    run_dir: Path,
    adapter_dir: Path | None = None,
    overrides: list[str] | None = None,
    base_only: bool = False,
) -> dict:
    """Held-out metrics (``evaluate_heldout``'s dict) of the base + adapter described by ``run_dir``.

    ``adapter_dir`` defaults to RUN_DIR/adapter; ``base_only`` evaluates the base model without any adapter.
    """
    from fedlora.setup import eval_set_for, is_encoder_run, load_model, pad_token_id, quiet_libraries, training_split

    quiet_libraries()
    config = run_config(run_dir, overrides)
    if config.threads:
        torch.set_num_threads(config.threads)
    adapter_dir = adapter_dir or run_dir / "adapter"
    if not base_only:
        check_adapter_dir(adapter_dir)
    model, tokenizer, _ = load_model(config, run_dir, resume=True)
    if not base_only:
        model = attach_adapter(model, adapter_dir)
    template, _, held_out, _ = training_split(config)
    eval_set = eval_set_for(template, list(held_out), tokenizer, config.data.max_seq_len, is_encoder_run(config))
    return evaluate_heldout(
        model,
        tokenizer,
        eval_set,
        config.eval.batch_size,
        pad_token_id(tokenizer),
        length_normalize=config.eval.length_normalize,
    )

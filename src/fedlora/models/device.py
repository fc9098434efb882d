"""Choosing the torch device and dtype a model runs in.

Both functions take the user's string (from the config) and return a concrete torch object, so the rest of the
code never sees "auto". CUDA and bfloat16 are picked when present even though the developer and CI machines
are CPU-only.
"""

from __future__ import annotations

import torch

from fedlora.errors import ModelError

__all__ = ["resolve_device", "resolve_dtype"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(pref: str = "auto") -> torch.device:
    """The device named by ``pref``.

    ``"auto"`` gives ``cuda`` when CUDA is available, else ``cpu``. ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are
    honoured as given; asking for CUDA (or a CUDA index) that this machine does not have raises
    :class:`~fedlora.errors.ModelError`, as does a string torch does not know.
    """
    text = str(pref).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise ModelError(f"device {pref!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {pref!r} requested but CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ModelError(f"device {pref!r} requested but this machine has {count} CUDA device(s)")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelError(f"device {pref!r} requested but MPS is not available on this machine")
    elif device.type != "cpu":
        raise ModelError(f"device {pref!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


def resolve_dtype(pref: str, device: torch.device) -> torch.dtype:
    """The floating-point dtype named by ``pref`` for a model on ``device``.

    ``"auto"`` gives ``bfloat16`` on a CUDA device that supports it (``torch.cuda.is_bf16_supported()``) and
    ``float32`` otherwise (CPU, MPS, older GPUs). Names accepted: ``float32``/``fp32``, ``bfloat16``/``bf16``,
    ``float16``/``fp16``/``half``. Anything else raises :class:`~fedlora.errors.ModelError`.
    """
    text = str(pref).strip().lower()
    if text == "auto":
        if torch.device(device).type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if text.startswith("torch."):
        text = text[len("torch.") :]
    try:
        return _DTYPES[text]
    except KeyError:
        raise ModelError(f"dtype {pref!r} is not supported (use auto, float32, bfloat16 or float16)") from None

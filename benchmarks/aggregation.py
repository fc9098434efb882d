"""FLoRIST server step: fedlora's `florist` vs the published algorithm vs FlexLoRA's dense SVD.

LLaMA-7B-like setting: --modules target modules of --dim × --dim, 8 clients with ranks --ranks, random float32
factors, weights n_k / Σ n. In one run it

(a) times fedlora's FLoRIST (``florist_decompose``; ``florist`` is the same call minus the result dataclass)
    on every module;
(b) times the published algorithm (thin SVDs of both stacks and of the R×R core), written below in torch, on
    every module in two layouts (``svd(A_s)`` as written, and the faster ``svd(A_sᵀ)``), interleaved with (a)
    in rotating order so that all see the same machine load;
(c) times FlexLoRA's dense route (``flexlora`` with rank = dim: form ΔW, full SVD) on --dense-modules modules;

checks that all three give the same singular values (fedlora vs published on every module, both vs the dense
SVD on the dense subset; tolerance 1e-4 of the largest), and measures each method's peak memory: the growth of
the resident set's high-water mark during one call, in a fresh child process that already holds the module's
factors and has run the method once on a small problem (Linux only; see ``_probe``).

Run: ``python benchmarks/aggregation.py`` (defaults as in docs/benchmarks.md; ~35 s on 2 cores, of which ~10 s
per dense module).
"""

import argparse
import gc
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from procmem import status_kb
from torch import Tensor

from fedlora.aggregation import energy_rank, flexlora, florist_decompose

TOL = 1e-4  # singular values must agree to TOL · σ_max


def make_module(dim: int, ranks: Sequence[int], seed: int, index: int) -> tuple[list[Tensor], list[Tensor]]:
    """Client factors of module ``index``: B_k (dim×r_k), A_k (r_k×dim), float32, N(0, 1), reproducible."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    Bs = [torch.randn(dim, r, generator=g) for r in ranks]
    As = [torch.randn(r, dim, generator=g) for r in ranks]
    return Bs, As


def client_weights(n_clients: int, seed: int) -> list[float]:
    """w_k = n_k / Σ n with n_k (local examples) drawn uniformly from 100..999."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(100, 1000, (n_clients,), generator=g).double()
    return (n / n.sum()).tolist()


def published_florist(
    Bs: Sequence[Tensor], As: Sequence[Tensor], weights: Sequence[float], tau: float, wide: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """The published FLoRIST server step in torch: thin SVDs of B_s and A_s, SVD of the R×R core.

    B_s = U_B S_B V_Bᵀ, A_s = U_A S_A V_Aᵀ, P = S_B (V_Bᵀ U_A) S_A = U_P S_P V_Pᵀ, so
    ΔW = (U_B U_P) S_P (V_Pᵀ V_Aᵀ). By default the wide A_s (R×n) is decomposed as its transpose, which torch
    does faster than the wide call (same factors), so the reference is the faster of the two
    layouts; ``wide=True`` calls ``svd(A_s)`` as the algorithm is written.
    Returns (B = U_B U_P[:, :p] S_P[:p], A = V_P[:, :p]ᵀ V_Aᵀ, S_P).
    """
    B_s = torch.cat(list(Bs), dim=1)
    A_s = torch.cat([a * w for a, w in zip(As, weights, strict=True)], dim=0)
    U_B, S_B, Vh_B = torch.linalg.svd(B_s, full_matrices=False)
    if wide:
        U_A, S_A, Vh_A = torch.linalg.svd(A_s, full_matrices=False)
    else:
        V_A, S_A, Uh_A = torch.linalg.svd(A_s.T, full_matrices=False)  # A_s = Uh_Aᵀ S_A V_Aᵀ
        U_A, Vh_A = Uh_A.T, V_A.T
    P = S_B[:, None] * (Vh_B @ U_A) * S_A[None, :]
    U_P, S_P, Vh_P = torch.linalg.svd(P)
    p = energy_rank(S_P, tau)
    return (U_B @ U_P[:, :p]) * S_P[:p], Vh_P[:p] @ Vh_A, S_P


def published_florist_wide(
    Bs: Sequence[Tensor], As: Sequence[Tensor], weights: Sequence[float], tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`published_florist` with ``svd(A_s)`` called on the wide R×n stack, as written in the paper."""
    return published_florist(Bs, As, weights, tau, wide=True)


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _run_method(method: str, Bs: list[Tensor], As: list[Tensor], w: list[float], tau: float) -> Tensor:
    """Run one method on one module and return the singular values it found (float64, CPU)."""
    if method == "fedlora":
        return florist_decompose(Bs, As, w, tau).singular_values
    if method in ("published", "published-wide"):
        return published_florist(Bs, As, w, tau, wide=method == "published-wide")[2].double()
    B, _ = flexlora(Bs, As, w, rank=Bs[0].shape[0])  # rank = dim: B = U·diag(S), so σ_i = ‖B[:, i]‖
    return B.double().norm(dim=0)


def _probe(method: str, dim: int, ranks: list[int], seed: int, index: int, tau: float, threads: int) -> dict:
    """Child process: time and peak-RSS growth of one call of ``method`` on module ``index``.

    The parent starts the child with MALLOC_MMAP_THRESHOLD_ fixed at 128 KiB, so every large buffer is a
    fresh mapping that is returned to the OS when freed: resident memory then follows live tensors. The peak
    is reset (``/proc/self/clear_refs`` = 5) right before the call, so VmHWM − VmRSS is the most memory the
    call held at once beyond its inputs (temporaries and outputs, all included).
    """
    torch.set_num_threads(threads)
    w = client_weights(len(ranks), seed)
    small_B, small_A = make_module(min(dim, 256), ranks, seed + 1, 0)
    _run_method(method, small_B, small_A, w, tau)  # warm-up: load BLAS/LAPACK paths, thread pools
    Bs, As = make_module(dim, ranks, seed, index)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = status_kb("VmRSS")
    seconds, sv = _timed(lambda: _run_method(method, Bs, As, w, tau))
    peak = status_kb("VmHWM")
    return {"seconds": seconds, "peak_rss_growth_mb": (peak - before) / 1024, "sv": sv}


def _in_child(*args: object) -> dict:
    ctx = mp.get_context("spawn")
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    try:
        with ctx.Pool(1) as pool:
            return pool.apply(_probe, args)
    finally:
        if saved is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved


def _sv_error(a: Tensor, b: Tensor) -> float:
    """max |a_i − b_i| / max(a), the shorter vector padded with zeros (σ beyond rank R should be ~0)."""
    k = max(a.numel(), b.numel())
    pa = torch.zeros(k, dtype=torch.float64)
    pb = torch.zeros(k, dtype=torch.float64)
    pa[: a.numel()] = a.double().cpu()
    pb[: b.numel()] = b.double().cpu()
    return float((pa - pb).abs().max() / pa.max())


def _fmt_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:9.2f} {min(xs) * 1e3:9.2f}"


METHODS: dict[str, Callable[..., object]] = {
    "fedlora": florist_decompose,
    "published": published_florist,
    "published-wide": published_florist_wide,
}
LABELS = {
    "fedlora": "fedlora florist (Gram + eigh)",
    "published": "published FLoRIST, svd(A_s^T)",
    "published-wide": "published FLoRIST, svd(A_s) as written",
    "flexlora": "FlexLoRA dense SVD",
}


def _singular_values(name: str, out: object) -> Tensor:
    return out.singular_values if name == "fedlora" else out[2].double()  # type: ignore[attr-defined,index]


def _rank(name: str, out: object) -> int:
    return out.rank if name == "fedlora" else out[0].shape[1]  # type: ignore[attr-defined,index]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modules", type=int, default=64, help="modules timed for fedlora and published")
    ap.add_argument("--dim", type=int, default=4096, help="m = n of every module")
    ap.add_argument("--ranks", default="4,4,8,8,16,16,32,64", help="client ranks, comma-separated")
    ap.add_argument("--dense-modules", type=int, default=2, help="modules for FlexLoRA's dense SVD (slow)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--no-memory", action="store_true", help="skip the child-process memory probes")
    args = ap.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    torch.set_num_threads(args.threads)
    w = client_weights(len(ranks), args.seed)
    R = sum(ranks)

    print(
        f"# fedlora aggregation benchmark: {args.modules} modules {args.dim}x{args.dim}, ranks {ranks} "
        f"(R={R}), tau={args.tau}, float32, threads={args.threads}, seed={args.seed}"
    )
    print(
        f"# torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}"
    )

    Bs, As = make_module(args.dim, ranks, args.seed, 0)
    for method in METHODS.values():  # warm-up, not timed
        method(Bs, As, w, args.tau)

    times: dict[str, list[float]] = {name: [] for name in METHODS}
    worst = dict.fromkeys(METHODS, 0.0)
    kept_sv: dict[int, Tensor] = {}
    chosen = set()
    names = list(METHODS)
    for i in range(args.modules):
        Bs, As = make_module(args.dim, ranks, args.seed, i)
        found = {}
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order: shared load
            seconds, found[name] = _timed(lambda m=METHODS[name], b=Bs, a=As: m(b, a, w, args.tau))
            times[name].append(seconds)
        reference = _singular_values("published", found["published"])
        for name, out in found.items():
            worst[name] = max(worst[name], _sv_error(reference, _singular_values(name, out)))
            rank, ours = _rank(name, out), _rank("fedlora", found["fedlora"])
            if rank != ours:
                print(f"# module {i}: {name} chose rank {rank}, fedlora {ours}")
        chosen.add(_rank("fedlora", found["fedlora"]))
        if i < args.dense_modules:
            kept_sv[i] = _singular_values("fedlora", found["fedlora"])
        del found
    print(
        f"# load average after the in-process timings {os.getloadavg()[0]:.2f}; "
        f"ranks chosen by tau={args.tau}: {sorted(chosen)}"
    )

    dense_times, worst_dense, mem = [], 0.0, {}
    for i in range(args.dense_modules):
        res = _in_child("flexlora", args.dim, ranks, args.seed, i, args.tau, args.threads)
        dense_times.append(res["seconds"])
        worst_dense = max(worst_dense, _sv_error(res["sv"], kept_sv[i]))
        growth = res["peak_rss_growth_mb"]
        print(f"# dense module {i}: {res['seconds']:.1f} s, peak RSS growth {growth:.0f} MB")
        mem.setdefault("flexlora", res["peak_rss_growth_mb"])
    if not args.no_memory:
        for name in METHODS:
            probe = _in_child(name, args.dim, ranks, args.seed, 0, args.tau, args.threads)
            mem[name] = probe["peak_rss_growth_mb"]

    print()
    header = f"{'method':40s} {'modules':>7s} {'median ms':>9s} {'min ms':>9s} {'peak RSS +MB':>12s}"
    print(f"{header}  max |Δσ|/σ_max")
    rows = [(name, times[name], f"{worst[name]:.1e} vs published") for name in METHODS]
    if dense_times:
        rows.append(("flexlora", dense_times, f"{worst_dense:.1e} dense vs fedlora"))
    for name, ts, note in rows:
        m = f"{mem[name]:12.0f}" if name in mem else f"{'-':>12s}"
        print(f"{LABELS[name]:40s} {len(ts):7d} {_fmt_ms(ts)} {m}  {note}")
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print()
    for ref in ("published", "published-wide"):
        print(
            f"{ref} / fedlora: {med[ref] / med['fedlora']:.1f}x (medians), "
            f"{best[ref] / best['fedlora']:.1f}x (minima); target >= 8x"
        )
    if dense_times:
        print(f"dense / fedlora: {statistics.median(dense_times) / med['fedlora']:.0f}x (medians)")
    ok = max(worst.values()) <= TOL and (not dense_times or worst_dense <= TOL)
    print(f"singular values agree to <= {TOL:g} of the largest: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

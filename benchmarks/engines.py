"""Seconds per round: the in-process engine vs Flower's simulation engine vs a deployed Flower federation, same
config, same machine.

For each model (the tiny random Llama of examples/tiny.toml, and SmolLM2-135M with examples/demo.toml's
federation) the same run goes through both engines:

- ``inprocess``: the clients of a round train one after another on the server's model, ``--threads`` torch
  threads;
- ``flower-sim``: one virtual SuperNode per client on Ray; Ray runs ``cores // --client-cpus`` ClientApps at
  once, each with ``--client-cpus`` torch threads (the same cores in all);
- ``flower``: a real ``flower-superlink`` and one ``flower-supernode`` per client on loopback, the run started
  with ``flwr run flower/`` (the bundled app; each node with ``--client-cpus`` torch threads): every message
  imports torch and builds the model and data in a fresh ClientApp process (Flower 1.41's way);
  ``flower-warm``: the same with node config ``warm=true`` (docs/flower.md: the ClientApp process hands each
  message to a long-lived process per node that keeps the imports, the model and the encoded data);
  ``flower-warm-slots``: warm, and node config ``host-slots=N`` (``--host-slots``, default cores // client CPUs):
  at most N of the machine's nodes train or evaluate at once, as Ray's CPU resources do in a simulation.
  Every process started is stopped by pid afterwards.

Per engine it reports the set-up time (until round 1 starts: model and data for in-process; also Ray's start
and the nodes' hello for Flower), round 1 (Flower's nodes build their model and shard there), and the median of
the later rounds that do not evaluate: the whole round (``wall_s`` in metrics.jsonl) and its client phase (from
the round's start to the last upload read); for a deployed run also ``nodes s``, the seconds the round's nodes
spent in their training handlers by their own clocks, summed (``node_s`` in metrics.jsonl). Evaluation runs
only after the last round (identical on both engines and left out). The two engines must end with the same
adapter bytes: the script checks the byte totals.

    python benchmarks/engines.py                      # tiny model, then SmolLM2-135M (≈ 10 min on 2 cores)
    python benchmarks/engines.py --models tiny        # seconds
    python benchmarks/engines.py --json engines.json  # also write the numbers
    python benchmarks/engines.py --engines inprocess,flower,flower-warm --models tiny   # deployed, cold vs warm

Target (issue 5): at SmolLM2 scale, Flower's seconds per round ≤ 1.5 × the in-process engine's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "tiny": (ROOT / "examples" / "tiny.toml", []),
    "smollm2": (ROOT / "examples" / "demo.toml", ["data.eval_size=32"]),
}


class Clock:
    """A reporter that timestamps the round loop's events."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first_round: float | None = None
        self.round_start: dict[int, float] = {}
        self.last_upload: dict[int, float] = {}
        self.client_s: dict[int, dict[int, float]] = {}  # round -> client -> seconds since the previous upload

    def log(self, line: str) -> None:
        pass

    def run_started(self, config, setup, start_round) -> None: ...

    def round_started(self, round_idx, participants) -> None:
        now = time.perf_counter()
        self.round_start[round_idx] = now
        if self.first_round is None:
            self.first_round = now - self.t0

    def client_done(self, round_idx, client_id, rank, train_loss) -> None:
        now = time.perf_counter()
        previous = self.last_upload.get(round_idx, self.round_start[round_idx])
        self.client_s.setdefault(round_idx, {})[client_id] = now - previous  # in-process clients train in turn
        self.last_upload[round_idx] = now

    def round_done(self, record) -> None: ...

    def evaluated(self, label, result) -> None: ...


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc, timeout_s: float = 300.0) -> None:
    """Return once 127.0.0.1:``port`` accepts connections (SystemExit if ``proc`` exits or the time runs out):
    `flwr run` and the SuperNodes fail at once against a SuperLink that is still starting."""
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"!! the SuperLink exited with status {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"!! the SuperLink did not listen on {port} within {timeout_s:.0f} s")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def run_deployed(config_path: Path, overrides: list[str], out: Path, warm: bool, host_slots: int | None) -> dict:
    """The run on a real flower-superlink and one flower-supernode per client (loopback), through `flwr run`;
    round times from metrics.jsonl, the set-up time until the ServerApp printed round 1's start."""
    import signal
    import subprocess

    from fedlora.config import load_config

    config = load_config(config_path, overrides)
    bin_dir = Path(sys.executable).parent
    work = out.parent / f"{out.name}-federation"
    (work / "flwr-home").mkdir(parents=True)
    port = _free_port()
    (work / "flwr-home" / "config.toml").write_text(
        f'[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # the SuperLink starts flower-superexec by name
        "FLWR_HOME": str(work / "flwr-home"),
        "FEDLORA_CACHE": str(work / "cache"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FEDLORA_WARM_IDLE_S": "120",
    }
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> subprocess.Popen:
        with (work / log).open("wb") as handle:
            proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(proc)
        return proc

    started = time.perf_counter()
    try:
        link = start([str(bin_dir / "flower-superlink"), "--insecure", "--port", str(port)], "superlink.log")
        _wait_listening(port, link)
        for cid in range(config.partition.num_clients):
            node_config = f'partition-id={cid} cache-dir="{work / f"node-{cid}"}" warm={str(warm).lower()}'
            if host_slots:
                node_config += f' host-slots={host_slots} slots-dir="{work / "slots"}"'
            args = ["--insecure", "--superlink", f"127.0.0.1:{port}", "--port", str(_free_port())]
            start([str(bin_dir / "flower-supernode"), *args, "--node-config", node_config], f"node-{cid}.log")
        quoted = " ".join(overrides).replace('"', '\\"')
        run_config = f'config="{config_path.resolve()}" out="{out}" overrides="{quoted}"'
        flwr = [str(bin_dir / "flwr"), "run", str(ROOT / "flower"), "bench", "--stream", "--run-config", run_config]
        run = subprocess.Popen(flwr, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        procs.append(run)
        first_round = None
        for line in run.stdout:
            if first_round is None and line.startswith("[fedlora] round 1:"):
                first_round = time.perf_counter() - started
        run.wait()
        total = time.perf_counter() - started
    finally:
        pids = [pid for proc in procs for pid in (proc.pid, *_descendants(proc.pid))]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(2)
        for proc in procs:
            proc.wait()
    if not (out / "summary.json").is_file():
        raise SystemExit(f"!! the deployed run did not finish; see {work}")
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    later = [r for r in records[1:] if "eval_loss" not in r]
    return {
        "engine": ("flower-warm" if warm else "flower") + ("-slots" if host_slots else ""),
        "host_slots": host_slots,
        "total_s": total,
        "setup_s": first_round,
        "round1_s": records[0]["wall_s"],
        "round_s": statistics.median(r["wall_s"] for r in later) if later else None,
        "clients_s": statistics.median(r["flower_s"] for r in later) if later else None,
        "nodes_s": statistics.median(sum(s for s in r["node_s"] if s) for r in later) if later else None,
        "per_client_s": {
            str(r["round"]): {str(c): s for c, s in zip(r["participants"], r["node_s"], strict=False) if s}
            for r in later
        },
        "rounds_measured": len(later),
        "bytes_up": summary["totals"]["bytes_up"],
        "bytes_down": summary["totals"]["bytes_down"],
    }


def per_client_line(reference: dict, other: dict, engine: str) -> str:
    """The same clients in the same rounds (the seed fixes who is sampled): the other engine's seconds per client
    (a deployed node's training handler by its own clock) over the in-process client's, median and range."""
    ratios = [
        seconds / reference[r][c]
        for r, clients in other.items()
        for c, seconds in clients.items()
        if reference.get(r, {}).get(c)
    ]
    if not ratios:
        return f"# {engine}: no client was timed in both engines"
    return (
        f"# {engine}: per client, its seconds / the in-process client's (same round and client): median "
        f"{statistics.median(ratios):.2f}, range {min(ratios):.2f}–{max(ratios):.2f} over {len(ratios)} clients"
    )


def run_engine(engine: str, config_path: Path, overrides: list[str], out: Path, host_slots: int = 1) -> dict:
    from fedlora import federation
    from fedlora.config import load_config

    if engine in ("flower", "flower-warm", "flower-warm-slots"):
        slots = host_slots if engine.endswith("-slots") else None
        return run_deployed(config_path, overrides, out, warm=engine != "flower", host_slots=slots)

    config = load_config(config_path, [*overrides, f"engine={engine}"])
    clock = Clock()
    started = time.perf_counter()
    if engine == "flower-sim":
        from fedlora.engines.flower.simulation import run_simulation

        summary = run_simulation(config, out, reporter=clock)
    else:
        summary = federation.run(config, out, reporter=clock)
    total = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    later = [r for r in records[1:] if "eval_loss" not in r]
    clients = [clock.last_upload[r["round"]] - clock.round_start[r["round"]] for r in later]
    return {
        "engine": engine,
        "total_s": total,
        "setup_s": clock.first_round,
        "round1_s": records[0]["wall_s"],
        "round_s": statistics.median(r["wall_s"] for r in later) if later else None,
        "clients_s": statistics.median(clients) if clients else None,
        "per_client_s": {str(r["round"]): {str(c): s for c, s in clock.client_s[r["round"]].items()} for r in later},
        "rounds_measured": len(later),
        "bytes_up": summary["totals"]["bytes_up"],
        "bytes_down": summary["totals"]["bytes_down"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    parser.add_argument(
        "--engines",
        default="inprocess,flower-sim,flower",
        help="comma-separated: inprocess, flower-sim, flower, flower-warm, flower-warm-slots",
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (round 1 and the last are not timed)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads, in-process")
    parser.add_argument("--client-cpus", type=float, default=1.0, help="CPUs (and threads) per Flower ClientApp")
    parser.add_argument(
        "--host-slots", type=int, help="flower-warm-slots: nodes computing at once (default: cores // client CPUs)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    slots = args.host_slots or max(1, int((os.cpu_count() or 2) // args.client_cpus))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    import torch

    import fedlora.engines.flower  # noqa: F401  (no telemetry, update checks or Ray usage stats; Ray on loopback)

    print(
        f"# fedlora engines benchmark: rounds={args.rounds}, in-process threads={args.threads}, Flower client "
        f"CPUs={args.client_cpus}, host slots={slots} (flower-warm-slots); torch {torch.__version__}, "
        f"python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results = []
    header = (
        f"{'model':8} {'engine':17} {'setup s':>8} {'round 1 s':>10} {'round s':>8} {'clients s':>10} "
        f"{'nodes s':>8} {'ratio':>6}"
    )
    for model in args.models.split(","):
        config_path, extra = MODELS[model]
        overrides = [
            *extra,
            f"rounds={args.rounds}",
            f"eval.every={args.rounds}",
            "eval.before=false",
            f"threads={args.threads}",
            f"flower.client_num_cpus={args.client_cpus}",
            f"flower.client_threads={max(1, int(args.client_cpus))}",
        ]
        rows = []
        with tempfile.TemporaryDirectory(prefix="fedlora-bench-engines-") as work:
            for engine in args.engines.split(","):
                row = {"model": model, **run_engine(engine, config_path, overrides, Path(work) / engine, slots)}
                rows.append(row)
                print(f"# {model} {engine}: {row['total_s']:.1f} s in all", file=sys.stderr, flush=True)
        base = rows[0]
        for row in rows[1:]:
            if (base["bytes_up"], base["bytes_down"]) != (row["bytes_up"], row["bytes_down"]):
                print(f"!! {model}: byte totals differ between the engines: {base} vs {row}", flush=True)
                return 1
            row["ratio"] = row["round_s"] / base["round_s"] if base["round_s"] and row["round_s"] else None
        print(header)
        for row in rows:
            shown_ratio = f"{row['ratio']:.2f}" if row.get("ratio") is not None else ""
            print(
                f"{row['model']:8} {row['engine']:17} {row['setup_s']:8.1f} {row['round1_s']:10.2f} "
                f"{row['round_s'] or float('nan'):8.2f} {row['clients_s'] or float('nan'):10.2f} "
                f"{row.get('nodes_s') or float('nan'):8.2f} {shown_ratio:>6}",
                flush=True,
            )
        for row in rows[1:]:
            if row.get("per_client_s") and base.get("per_client_s"):
                print(per_client_line(base["per_client_s"], row["per_client_s"], row["engine"]), flush=True)
        results += rows
    print(f"# load average at the end {os.getloadavg()[0]:.2f}; ratio = Flower round s / in-process round s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

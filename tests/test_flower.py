"""fedlora on Flower, for real: the simulation engine (Ray) and a deployment (flower-superlink + SuperNodes).

- every method runs under ``engine=flower-sim`` on examples/tiny.toml and ends with the in-process engine's
  adapter (allclose 1e-6) and byte counts (equal), including runs where nodes need base-update catch-up and
  where the engine's idea of what a node holds is wrong (the node asks, the engine resends);
- ``fedlora run CONFIG engine=flower-sim`` works from the command line;
- a real ``flower-superlink`` and three ``flower-supernode`` processes on loopback run two rounds of FSLoRA and
  two of FLoRIST through ``flwr run`` of the bundled Flower app (flower/), with the in-process results.

Every process a test starts is stopped by pid (with its descendants: Flower's SuperExec and ClientApp
processes), also when the test fails. The simulations of the first group share one Flower simulation (one Ray
start-up) to keep the suite fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optional import require

from fedlora.engines.flower import QUIET_ENV  # importing it sets it: no phoning home, Ray on loopback

require("flwr")
require("ray")

import torch  # noqa: E402
from method_args import method_args  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from fedlora import federation  # noqa: E402
from fedlora.config import load_config  # noqa: E402
from fedlora.methods import METHODS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
APP = ROOT / "flower"
FAST = ["rounds=2", "data.max_examples=48", "train.local_steps=2", "threads=1"]
CATCH_UP = ["seed=1", "rounds=3", "data.max_examples=48", "train.local_steps=2", "threads=1"]
"""seed 1 samples clients [0,1,2], [1,2,3], [0,1,2]: client 0 skips round 2, whose downloads hand out round 1's base
update, so in round 3 it needs that update besides round 2's (in its download)."""
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------------ helpers


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(flower_dir: Path, inprocess_dir: Path, only: str = "") -> None:
    """Same final adapter (1e-6; ``only``: the keys containing it), same bytes per round and in total, same
    participants and ranks."""
    a = load_file(str(flower_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(inprocess_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        if only in key:
            assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), key
    fr, ir = _records(flower_dir), _records(inprocess_dir)
    assert len(fr) == len(ir)
    for x, y in zip(fr, ir, strict=True):
        for key in ("participants", "ranks", "bytes_up", "bytes_down"):
            assert x[key] == y[key], (x["round"], key)
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-5)
    fs = json.loads((flower_dir / "summary.json").read_text())
    ins = json.loads((inprocess_dir / "summary.json").read_text())
    assert fs["totals"]["bytes_up"] == ins["totals"]["bytes_up"]
    assert fs["totals"]["bytes_down"] == ins["totals"]["bytes_down"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class Processes:
    """Processes a test starts; ``stop_all`` ends each one and its descendants by pid."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, args: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
        handle = log.open("wb")
        proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        handle.close()
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        pids = []
        for proc in self.started:
            pids += [proc.pid, *_descendants(proc.pid)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            for proc in self.started:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if all(proc.poll() is not None for proc in self.started) and not any(_alive(p) for p in pids):
                break
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _listening(port: int, proc: subprocess.Popen, timeout: float = 300) -> bool:
    """Whether ``proc`` comes to listen on ``port`` (False when it exits first, e.g. because the port was taken
    between ``_free_port`` releasing it and the process binding it). The timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc.poll() is None
        time.sleep(0.3)
    raise AssertionError(f"{proc.args[0]}: nothing listens on port {port} after {timeout} s")


def _start_listening(procs: Processes, commands: dict, work: Path, env: dict, attempts: int = 5) -> dict[str, int]:
    """Start each ``commands[name](port)`` on a free loopback port (log ``work/<name>.log``) and wait until it
    listens there; a process that exits first (its port taken meanwhile) is started again on another port.
    Returns name → port."""
    pending, ports = dict(commands), {}
    for _ in range(attempts):
        started = {}
        for name, command in pending.items():
            port = _free_port()
            started[name] = (procs.start(command(port), work / f"{name}.log", env, work), port)
        for name, (proc, port) in started.items():
            if _listening(port, proc):
                ports[name] = port
                del pending[name]
        if not pending:
            return ports
    logs = {name: (work / f"{name}.log").read_text()[-1500:] for name in pending}
    raise AssertionError(f"{sorted(pending)} did not start listening in {attempts} attempts: {logs}")


@pytest.fixture(scope="module")
def fedlora_cache(tmp_path_factory):
    """A private fedlora cache for the nodes (the base updates they keep) and a private Flower home (Flower
    writes into it), restored afterwards."""
    cache = tmp_path_factory.mktemp("fedlora-cache")
    saved = {name: os.environ.get(name) for name in ("FEDLORA_CACHE", "FLWR_HOME")}
    os.environ["FEDLORA_CACHE"] = str(cache)
    os.environ["FLWR_HOME"] = str(tmp_path_factory.mktemp("flwr-home"))
    yield cache
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# -------------------------------------------------------------------------------------------- simulation


def _run_broken(grid, config, out: Path, fail_fast: bool = True) -> Exception | None:
    """A run whose engine sends client 2 a corrupt download: with ``fail_fast`` the error must name the client;
    without, the run goes on without client 2 (None when no error)."""
    import uuid

    from fedlora.config import dump_config
    from fedlora.engines.flower.engine import FlowerGridEngine, connect_nodes

    class Corrupting(FlowerGridEngine):
        def _train_message(self, cid, blob, history, holds):
            return super()._train_message(cid, b"not a payload" if cid == 2 else blob, history, holds)

    session = uuid.uuid4().hex[:12]
    nodes = connect_nodes(grid, dump_config(config), config.partition.num_clients, session=session, threads=1)
    engine = Corrupting(grid, nodes, session=session, fail_fast=fail_fast)
    try:
        federation.run(config, out, engine=engine)
    except Exception as err:  # noqa: BLE001 - the test looks at it
        return err
    finally:
        engine.finish()
    return None


def _run_forgetful(grid, config, out: Path) -> dict:
    """A run whose engine believes every node holds every base update (wrong for a node that skipped rounds):
    nodes must say what they lack, and the engine must resend it."""
    import uuid

    from fedlora.config import dump_config
    from fedlora.engines.flower.engine import FlowerGridEngine, connect_nodes
    from fedlora.engines.flower.node import expected_fingerprint

    class Forgetful(FlowerGridEngine):
        def run_clients(self, jobs):
            self._holds = {cid: 10**6 for cid in self.nodes}
            return super().run_clients(jobs)

    session = uuid.uuid4().hex[:12]
    nodes = connect_nodes(
        grid,
        dump_config(config),
        config.partition.num_clients,
        session=session,
        base_fingerprint=expected_fingerprint(config),
        threads=1,
    )
    engine = Forgetful(grid, nodes, session=session)
    try:
        return federation.run(config, out, engine=engine)
    finally:
        engine.finish()


class _ClientTwoRaises(federation.InProcessEngine):
    def run_client(self, client_id: int, download: bytes) -> bytes:
        if client_id == 2:
            raise RuntimeError("client 2 is down")
        return super().run_client(client_id, download)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, fedlora_cache):
    """Flower-simulation runs (one simulation, one Ray start-up) and the same configs run in-process."""
    from fedlora.config import resume_config
    from fedlora.engines.flower.server import run_on_grid
    from fedlora.engines.flower.simulation import simulate

    root = tmp_path_factory.mktemp("flower-sim")
    jobs = {m: method_args(m, TINY, *FAST) for m in METHODS}
    jobs.update({f"catchup-{m}": method_args(m, TINY, *CATCH_UP) for m in ("flora", "florist", "fedex")})
    jobs["round-lr-cosine"] = method_args("fslora", TINY, *FAST, "train.round_lr_schedule=cosine")
    forgetful = [*CATCH_UP, "method=florist"]
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}

    def main(grid) -> None:
        for name, overrides in jobs.items():
            started = time.perf_counter()
            config = load_config(TINY, [*overrides, "engine=flower-sim"])
            results[name] = run_on_grid(grid, config, root / "flower" / name, simulation=True)
            timings[name] = time.perf_counter() - started
        config = load_config(TINY, [*forgetful, "engine=flower-sim"])
        results["forgetful"] = _run_forgetful(grid, config, root / "flower" / "forgetful")
        config = load_config(TINY, [*FAST, "engine=flower-sim"])
        results["broken"] = _run_broken(grid, config, root / "flower" / "broken")
        # an in-process run of 2 rounds resumed to 3 on Flower: fresh nodes catch up from the original base
        config = resume_config(root / "flower" / "resumed", None, ["rounds=3", "engine=flower-sim"])
        results["resumed"] = run_on_grid(grid, config, root / "flower" / "resumed", resume=True, simulation=True)
        config = load_config(TINY, [*FAST, "engine=flower-sim"])
        results["tolerant"] = _run_broken(grid, config, root / "flower" / "tolerant", fail_fast=False)
        # last: no reply can come within 1 ms, so every client of every round times out (replies come late)
        config = load_config(TINY, [*FAST, "method=fedit", "engine=flower-sim", "faults.round_deadline_s=0.001"])
        results["deadline"] = run_on_grid(grid, config, root / "flower" / "deadline", simulation=True)

    federation.run(load_config(TINY, [*CATCH_UP, "method=florist", "rounds=2"]), root / "flower" / "resumed")
    started = time.perf_counter()
    simulate(main, load_config(TINY, FAST))
    timings["simulation"] = time.perf_counter() - started
    print("flower-sim timings (s):", {k: round(v, 1) for k, v in timings.items()})
    for name, overrides in [*jobs.items(), ("forgetful", forgetful)]:
        federation.run(load_config(TINY, overrides), root / "inprocess" / name)
    with pytest.MonkeyPatch.context() as mp:  # in-process, client 2 raises in every round
        mp.setattr(federation, "InProcessEngine", _ClientTwoRaises)
        federation.run(load_config(TINY, FAST), root / "inprocess" / "tolerant")
    left = sorted(str(p.relative_to(fedlora_cache)) for p in (fedlora_cache / "flower").glob("run-*/client-*/*"))
    assert not left, f"nodes did not drop their base updates: {left}"
    return root, results


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_flower_sim_like_in_process(simulated, method):
    root, results = simulated
    out = root / "flower" / method
    for name in ("config.resolved.toml", "metrics.jsonl", "summary.json", "adapter/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    assert results[method]["method"] == method
    assert load_config(out / "config.resolved.toml").engine == "flower-sim"
    records = _records(out)
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["catchup_bytes_down"] == 0 and r["flower_resent"] == 0 for r in records)
    for r in records:  # each participant's seconds in its node's training handler, by the node's clock
        assert len(r["node_s"]) == len(r["participants"]) and all(0 < s < r["flower_s"] for s in r["node_s"])
    # FedSA-LoRA's clients keep their B on the nodes: a Flower server holds the shared A only (its adapter/ has
    # B = 0), an in-process one reads the clients' B from the run folder for its shared view; A must agree
    _assert_same_run(out, root / "inprocess" / method, only="lora_A" if method == "fedsa" else "")


def test_a_round_lr_schedule_on_flower_ends_as_in_process(simulated):
    """train.round_lr_schedule: the round's lr travels in the download, so a node trains at the server's lr and
    the run ends with the in-process adapter and bytes; it differs from the constant-lr run (round 2 at lr/2)."""
    root, _ = simulated
    _assert_same_run(root / "flower" / "round-lr-cosine", root / "inprocess" / "round-lr-cosine")
    decayed = load_file(root / "flower" / "round-lr-cosine" / "adapter" / "adapter_model.safetensors")
    constant = load_file(root / "flower" / "fslora" / "adapter" / "adapter_model.safetensors")
    assert any(not torch.allclose(decayed[k], constant[k], atol=1e-6) for k in constant)


@pytest.mark.parametrize("method", ["flora", "florist", "fedex"])
def test_nodes_that_missed_base_updates_catch_up(simulated, method):
    """Client 0 skips round 2: in round 3 it gets round 1's base update as catch-up (counted apart)."""
    root, _ = simulated
    name = f"catchup-{method}"
    records = _records(root / "flower" / name)
    assert records[2]["participants"] == [0, 1, 2] and 0 not in records[1]["participants"]
    assert records[0]["catchup_bytes_down"] == records[1]["catchup_bytes_down"] == 0
    assert records[2]["catchup_bytes_down"] > 0
    _assert_same_run(root / "flower" / name, root / "inprocess" / name)


def test_a_node_lacking_base_updates_gets_them_resent(simulated):
    root, _ = simulated
    records = _records(root / "flower" / "forgetful")
    assert records[2]["flower_resent"] >= 1 and records[2]["catchup_bytes_down"] > 0
    _assert_same_run(root / "flower" / "forgetful", root / "inprocess" / "forgetful")


def test_a_client_error_names_the_client(simulated):
    from fedlora.errors import FedloraError

    _, results = simulated
    err = results["broken"]
    assert isinstance(err, FedloraError), err
    message = str(err)
    assert message.startswith("flower: client 2 (Flower node") and "failed in training" in message
    assert "JSONDecodeError" in message and "\n" not in message and len(message) < 700


def test_a_failing_client_on_flower_is_recorded_and_the_round_goes_on(simulated):
    """Without faults.fail_fast, client 2's error replies are failures of its rounds; the others aggregate as
    in-process with client 2 down."""
    root, results = simulated
    assert results["tolerant"] is None
    records = _records(root / "flower" / "tolerant")
    assert any(2 in r["participants"] for r in records)
    for r in records:
        failed = [f["client"] for f in r["failures"]]
        assert failed == ([2] if 2 in r["participants"] else []) and 2 not in r["successful"]
        assert all("JSONDecodeError" in f["reason"] and "\n" not in f["reason"] for f in r["failures"])
    _assert_same_run(root / "flower" / "tolerant", root / "inprocess" / "tolerant")


def test_a_round_deadline_on_flower_drops_late_clients(simulated):
    root, results = simulated
    records = _records(root / "flower" / "deadline")
    for r in records:
        assert r["successful"] == [] and [f["client"] for f in r["failures"]] == r["participants"]
        assert {f["reason"] for f in r["failures"]} == {"timeout: no reply within 0.001 s (faults.round_deadline_s)"}
        assert r["skipped"].startswith("0 of 3 clients succeeded")
    assert results["deadline"]["totals"]["skipped_rounds"] == 2


def test_a_run_resumed_on_flower_ends_as_the_uninterrupted_one(simulated):
    """2 rounds in-process, then round 3 on flower-sim (every node catches up from the original base): the
    uninterrupted in-process run's adapter and bytes."""
    root, _ = simulated
    resumed = root / "flower" / "resumed"
    records = _records(resumed)
    assert [r["round"] for r in records] == [1, 2, 3] and "catchup_bytes_down" in records[2]
    assert records[2]["catchup_bytes_down"] > 0  # the round-1 update, to every participant
    assert load_config(resumed / "config.resolved.toml").engine == "flower-sim"
    _assert_same_run(resumed, root / "inprocess" / "catchup-florist")


def test_a_client_builds_what_the_server_builds(tmp_path):
    """The node's own builder gives the server's base weights, shard and training settings."""
    from fedlora.engines.flower.node import build_client, expected_fingerprint, weights_fingerprint
    from fedlora.setup import build

    config = load_config(TINY, FAST)
    setup = build(config, tmp_path, resume=False)
    for cid in range(config.partition.num_clients):
        client = build_client(config, cid)
        assert client.examples == setup.client_examples[cid]
        assert client.training == setup.training and client.pad_id == setup.pad_id
    ours = client.model.state_dict()
    theirs = setup.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    assert weights_fingerprint(saved) == expected_fingerprint(config) == client.fingerprint


def test_payloads_travel_as_their_exact_bytes():
    from flwr.app import Message, RecordDict

    from fedlora.engines.flower import wire

    blob = bytes(range(256)) * 41 + b"\x00"
    message = Message(RecordDict({wire.DOWNLOAD: wire.blob_record(blob)}), dst_node_id=1, message_type=wire.TRAIN)
    assert wire.record_blob(message, wire.DOWNLOAD) == blob
    assert wire.record_blob(message, wire.UPLOAD) is None


def _env(**extra) -> dict:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        **QUIET_ENV,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.update(extra)
    return env


def test_cli_runs_on_flower_sim(tmp_path, fedlora_cache):
    """`fedlora run CONFIG engine=flower-sim` in a real process, client resources from the config."""
    out = tmp_path / "run"
    procs = Processes()
    try:
        proc = procs.start(
            [
                str(BIN / "fedlora"),
                "run",
                str(TINY),
                "engine=flower-sim",
                "method=hetlora",
                "rounds=1",
                "data.max_examples=48",
                "train.local_steps=1",
                "threads=1",
                "flower.client_num_cpus=1",
                "--out",
                str(out),
            ],
            tmp_path / "cli.log",
            _env(),
            tmp_path,
        )
        assert proc.wait(timeout=600) == 0, (tmp_path / "cli.log").read_text()[-3000:]
    finally:
        procs.stop_all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "hetlora" and summary["rounds"] == 1
    assert len(_records(out)) == 1 and (out / "adapter" / "adapter_model.safetensors").is_file()


def test_cli_engine_flower_points_to_flwr_run(tmp_path):
    from typer.testing import CliRunner

    from fedlora.cli import app

    result = CliRunner().invoke(app, ["run", str(TINY), "engine=flower", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "flwr run" in lines[0]


# -------------------------------------------------------------------------------------------- deployment


@contextlib.contextmanager
def _federation(
    work: Path,
    fedlora_cache: Path,
    tls: dict | None = None,
    extra_nodes: dict | None = None,
    node_config: dict[int, str] | None = None,
    warm: bool = False,
):
    """A real flower-superlink and three flower-supernode processes (partition-id 0, 1, 2) on free loopback
    ports; yields (flwr environment, Processes); stops every process it or the caller started afterwards, by pid
    with their descendants, whatever happened.

    ``tls``: {"ca", "cert", "key"} file paths: the SuperLink serves TLS with SuperNode authentication, each node
    ``i`` proves its identity with the private key ``keys[i]`` (registered first with ``flwr supernode register``)
    and verifies the SuperLink with the CA; ``flwr`` too. Without it everything runs ``--insecure``.
    ``extra_nodes``: name → extra flower-supernode arguments of nodes started after the three (their logs are
    ``<name>.log`` in ``work``). ``node_config``: partition id → more node config of that node (e.g. its data).
    ``warm``: the three nodes hand their messages to a warm worker each (node config ``warm=true``); afterwards every
    worker must have stopped by itself within 10 s of its SuperNode (checked by the pid it wrote)."""
    procs = Processes()
    home = work / "flwr-home"
    home.mkdir()
    trust = f'root-certificates = "{tls["ca"]}"' if tls else "insecure = true"
    env = _env(FLWR_HOME=str(home), FEDLORA_CACHE=str(fedlora_cache), FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.2")
    if tls:
        security = ["--ssl-ca-certfile", tls["ca"], "--ssl-certfile", tls["cert"], "--ssl-keyfile", tls["key"]]
        security += ["--enable-supernode-auth"]
    else:
        security = ["--insecure"]
    try:
        link = [str(BIN / "flower-superlink"), *map(str, security)]
        port = _start_listening(procs, {"superlink": lambda p: [*link, "--port", str(p)]}, work, env)["superlink"]
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{port}"\n{trust}\n'
        )
        nodes = {}
        for cid in range(3):
            args = ["--insecure"]
            if tls:
                key = tls["keys"][cid]
                register = [str(BIN / "flwr"), "supernode", "register", f"{key}.pub", "loopback"]
                done = subprocess.run(register, env=env, cwd=work, capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, done.stdout + done.stderr
                args = ["--root-certificates", str(tls["ca"]), "--auth-supernode-private-key", str(key)]
            settings = f'partition-id={cid} num-partitions=3 cache-dir="{work / f"node-{cid}"}"'
            settings += " warm=true" if warm else ""
            settings += f" {(node_config or {}).get(cid, '')}".rstrip()
            nodes[f"supernode-{cid}"] = [*args, "--node-config", settings]
        node = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}"]
        _start_listening(procs, {name: _with_port(node, args) for name, args in nodes.items()}, work, env)
        for name, args in (extra_nodes or {}).items():  # expected to be refused: they may exit before listening
            procs.start([*node, "--port", str(_free_port()), *args], work / f"{name}.log", env, work)
        yield env, procs
    finally:
        pids = [p.pid for p in procs.started]
        procs.stop_all()
        assert not any(_alive(pid) for pid in pids)
        if warm:
            _assert_workers_stopped(work)


def _assert_workers_stopped(work: Path, timeout: float = 10.0) -> None:
    """The nodes' warm workers (pids in ``node-*/worker-*/worker.pid``) stop by themselves once their SuperNodes
    are gone; any still alive after ``timeout`` is killed and the test fails."""
    used = {p.parent.parent.name for p in work.glob("node-*/worker-*/worker.log")}
    assert used == {"node-0", "node-1", "node-2"}, f"nodes whose messages went to a warm worker: {sorted(used)}"
    files = list(work.glob("node-*/worker-*/worker.pid"))
    workers = {int(f.read_text()) for f in files if f.is_file()}
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = sorted(pid for pid in workers if _alive(pid))
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    assert not alive, f"warm workers {alive} outlived their SuperNodes by {timeout:.0f} s"


def _with_port(command: list[str], args: list[str]):
    return lambda port: [*command, "--port", str(port), *args]


@pytest.fixture
def federation_on_loopback(tmp_path, fedlora_cache):
    """The insecure federation of ``_federation``; yields (flwr environment, work folder, Processes)."""
    with _federation(tmp_path, fedlora_cache) as (env, procs):
        yield env, tmp_path, procs


def test_deployment_superlink_and_three_supernodes(federation_on_loopback):
    """Two rounds of FSLoRA, then two of FLoRIST, through `flwr run` of the bundled app (flower/); each run ends
    as the same config run in-process. (The runs go one after the other: a SuperNode serves one message at a
    time, so submitting both at once is no faster.)"""
    env, work, procs = federation_on_loopback
    for method in ("fslora", "florist"):
        out = work / "runs" / method
        run_config = f'out="{out}" overrides="method={method} rounds=2"'
        log = work / f"flwr-run-{method}.log"
        command = [str(BIN / "flwr"), "run", str(APP), "loopback", "--stream", "--run-config", run_config]
        proc = procs.start(command, log, env, work)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        shown = log.read_text()
        assert (out / "summary.json").is_file(), shown[-3000:]
        assert "[fedlora] round 2 done" in shown
        summary = json.loads((out / "summary.json").read_text())
        config = load_config(out / "config.resolved.toml")
        assert summary["method"] == method and config.engine == "flower" and config.partition.num_clients == 3
        records = _records(out)
        assert [r["round"] for r in records] == [1, 2]
        assert all(r["bytes_up"] > 0 and r["train_loss"] > 0 for r in records)
        assert "eval_loss" in records[-1] and (out / "adapter" / "adapter_model.safetensors").is_file()
        reference = work / "inprocess" / method
        federation.run(load_config(APP / "fedlora.toml", [f"method={method}", "rounds=2"]), reference)
        _assert_same_run(out, reference)
    for cid in range(3):  # every node dropped its runs' base updates
        assert not list((work / f"node-{cid}").glob("run-*/client-*"))


# ------------------------------------------------------------------------------------ TLS and node auth


def _write_tls(folder: Path) -> dict:
    """A throwaway CA, a server certificate for localhost / 127.0.0.1 signed by it, its key, and four SuperNode
    key pairs (EC P-384, OpenSSH format, as `ssh-keygen -t ecdsa -b 384` writes them): {"ca", "cert", "key",
    "keys"}; a node's public key is its private key's path + ".pub"."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = {
        "not_valid_before": now - datetime.timedelta(minutes=5),
        "not_valid_after": now + datetime.timedelta(days=1),
    }

    def certificate(subject: str, key, issuer: str, issuer_key, extensions):
        builder = x509.CertificateBuilder(
            subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]),
            issuer_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]),
            public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            **valid,
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("fedlora test CA", ca_key, "fedlora test CA", ca_key, [(x509.BasicConstraints(True, None), True)])
    names = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server = certificate("localhost", server_key, "fedlora test CA", ca_key, [(names, False)])
    pem = serialization.Encoding.PEM
    files = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key", "keys": []}
    files["ca"].write_bytes(ca.public_bytes(pem))
    files["cert"].write_bytes(server.public_bytes(pem))
    files["key"].write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for i in range(4):
        node_key = ec.generate_private_key(ec.SECP384R1())
        path = folder / f"node-{i}"
        path.write_bytes(node_key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        public = node_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        Path(f"{path}.pub").write_bytes(public)
        files["keys"].append(path)
    return files


def test_deployment_with_tls_and_supernode_auth(tmp_path, fedlora_cache):
    """A SuperLink serving TLS with SuperNode authentication: the three registered nodes (root certificate + their
    keys) run a round of FSLoRA through `flwr run` (with the CA) and end as in-process; a node with an unregistered
    key, a node without the CA and an insecure node are refused and exit."""
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    tls = _write_tls(tls_dir)
    port_args = ["--max-retries", "2", "--max-wait-time", "30"]
    intruders = {
        "unregistered": ["--root-certificates", str(tls["ca"]), "--auth-supernode-private-key", str(tls["keys"][3])],
        "no-ca": ["--auth-supernode-private-key", str(tls["keys"][0])],
        "insecure": ["--insecure"],
    }
    intruders = {name: [*args, *port_args, "--node-config", "partition-id=2"] for name, args in intruders.items()}
    with _federation(tmp_path, fedlora_cache, tls=tls, extra_nodes=intruders) as (env, procs):
        out = tmp_path / "runs" / "tls"
        log = tmp_path / "flwr-run.log"
        run_config = f'out="{out}" overrides="method=fslora rounds=1"'
        command = [str(BIN / "flwr"), "run", str(APP), "loopback", "--stream", "--run-config", run_config]
        proc = procs.start(command, log, env, tmp_path)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        assert "[fedlora] round 1 done" in log.read_text()
        # the intruders were started last before `flwr run` (the link and the three nodes may have needed retries)
        refused = dict(zip(intruders, procs.started[-1 - len(intruders) : -1], strict=True))
        for name, node in refused.items():
            assert node.wait(timeout=120) != 0, name
        listed = subprocess.run(
            [str(BIN / "flwr"), "supernode", "list", "loopback", "--format", "json"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert "Failed to activate SuperNode" in (tmp_path / "unregistered.log").read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "no-ca.log").read_text()
    assert "Exit Code: 305" in (tmp_path / "insecure.log").read_text()
    assert listed.returncode == 0, listed.stderr
    nodes = json.loads(listed.stdout[listed.stdout.index("{") :])["nodes"]
    assert len(nodes) == 3, nodes  # the three registered keys, nobody else
    reference = tmp_path / "inprocess"
    federation.run(load_config(APP / "fedlora.toml", ["method=fslora", "rounds=1"]), reference)
    _assert_same_run(out, reference)


# --------------------------------------------------------------------------------------- message size


def _blob_sizes(monkeypatch) -> dict[str, list[int]]:
    """Every download and upload blob length the round loop makes (wrapping federation's own functions)."""
    sizes: dict[str, list[int]] = {"download": [], "upload": []}
    download_blob, read_upload = federation.download_blob, federation.read_upload

    def recording_download(*args, **kwargs):
        blob = download_blob(*args, **kwargs)
        sizes["download"].append(len(blob))
        return blob

    def recording_upload(plan, blob, *args, **kwargs):
        sizes["upload"].append(len(blob))
        return read_upload(plan, blob, *args, **kwargs)

    monkeypatch.setattr(federation, "download_blob", recording_download)
    monkeypatch.setattr(federation, "read_upload", recording_upload)
    return sizes


@pytest.mark.parametrize("method", ["fslora", "fedit", "flora", "florist", "hetlora", "fedex", "fedsb"])
def test_payload_bound_holds_for_real_blobs(tmp_path, monkeypatch, method):
    """The pre-run bound is at least every blob a run makes, and close to the largest (all 4 clients join each
    round, so FLoRA's round-2 download stacks every budget)."""
    from fedlora.engines.flower.limits import HEADER_BYTES_FIXED, payload_bound
    from fedlora.engines.flower.node import client_base_model
    from fedlora.lora.layer import inject_lora
    from fedlora.setup import client_budgets

    config = load_config(TINY, method_args(method, TINY, *FAST, "sampling.clients_per_round=4", "florist.tau=1.0"))
    sizes = _blob_sizes(monkeypatch)
    federation.run(config, tmp_path / "run")
    model = client_base_model(config, device="cpu")[0]
    layers = inject_lora(model, config.model.target_modules)
    shapes = {name: (layer.out_features, layer.in_features) for name, layer in layers.items()}
    bound = payload_bound(config, shapes, client_budgets(config))
    assert max(sizes["download"]) <= bound.download and max(sizes["upload"]) <= bound.upload
    # close: the bound's tensor part (all but its fixed header allowance, which dominates Fed-SB's r×r upload on
    # the tiny model) is within 1/0.6 of the largest real blob
    assert max(sizes["download"]) >= 0.6 * (bound.download - HEADER_BYTES_FIXED)
    assert max(sizes["upload"]) >= 0.6 * (bound.upload - HEADER_BYTES_FIXED)


def test_a_payload_over_the_limit_stops_the_run_before_it_starts(tmp_path):
    from typer.testing import CliRunner

    from fedlora.cli import app

    out = tmp_path / "x"
    result = CliRunner().invoke(
        app, ["run", str(TINY), "engine=flower-sim", "flower.max_message_mb=0.01", "--out", str(out)]
    )
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "flower.max_message_mb" in lines[0] and "download" in lines[0] and "0.01 MB" in lines[0]
    assert not out.exists()


def test_the_engine_refuses_blobs_over_the_limit():
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, RecordDict

    from fedlora.engines.flower import wire
    from fedlora.engines.flower.engine import FlowerGridEngine
    from fedlora.errors import FedloraError

    engine = FlowerGridEngine(None, {3: 77}, session="s", max_message_mb=0.001)  # 1000 bytes
    engine._check_size("a download", 1000)  # at the limit: fine
    with pytest.raises(FedloraError, match=r"download to client 3 \(Flower node 77\) of 0.001 MB is over flower"):
        engine._train_message(3, b"x" * 1001, [], 0)
    upload = b"u" * 1001
    settings = ConfigRecord({"download_bytes": 10, "upload_bytes": len(upload)})
    # what _read_upload reads of a reply (a real Message needs a Flower run context)
    reply = SimpleNamespace(content=RecordDict({wire.UPLOAD: wire.blob_record(upload), wire.FEDLORA: settings}))
    with pytest.raises(FedloraError, match=r"upload of client 3 .* over flower.max_message_mb=0.001; refused"):
        engine._read_upload(3, reply, 10)
    assert FlowerGridEngine(None, {3: 77}, session="s")._read_upload(3, reply, 10) == upload  # no limit

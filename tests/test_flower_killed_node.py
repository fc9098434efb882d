"""A SuperNode SIGKILLed mid-run, on real Flower processes (a ``flower-superlink`` and three ``flower-supernode``s on
loopback, every process started and stopped by pid).

- the SuperLink answers the messages of a node that stopped with its own error reply ("Node Unavailable", from
  node 0, naming the message in ``reply_to_message_id``): fedlora records that reason as the client's failure in
  the rounds after the kill (it was dropped and recorded as "timeout: no reply within no limit") and the run
  completes with the other clients;
- with ``faults.fail_fast`` and no round limit the ServerApp stops with fedlora's one line naming the client and
  its node (it crashed with a ``TypeError`` formatting the limit None).

Flower 1.41 decides when the reply comes: once the node has missed its heartbeats (interval 30 s, patience 2),
i.e. 30-60 s after the kill; each test waits that long once.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

import test_flower  # noqa: E402
from flwr.server.superlink.linkstate.utils import NODE_UNAVAILABLE_ERROR_REASON  # noqa: E402
from test_federation_nodes import records  # noqa: E402
from test_fedsa_nodes import _kill  # noqa: E402

fedlora_cache = test_flower.fedlora_cache

KILLED = 1
"""The client whose SuperNode is killed (every round samples all three clients)."""
RUN = "rounds=3 sampling.clients_per_round=3 eval.every=3 eval.before=false"
"""The bundled app's config (flower/fedlora.toml: tiny random Llama, 3 clients), every client in every round,
server-side evaluation only after the last round."""


@pytest.fixture(scope="module")
def federation(tmp_path_factory, fedlora_cache):
    """One SuperLink and three SuperNodes for both tests; yields (flwr environment, Processes, work folder)."""
    work = tmp_path_factory.mktemp("killed-node")
    with test_flower._federation(work, fedlora_cache, warm=True) as (env, procs):
        yield env, procs, work


def _node(procs, cid: int):
    """The running SuperNode process of client ``cid`` (None when it is not running)."""
    running = [p for p in procs.started if p.poll() is None and any(f"partition-id={cid} " in str(a) for a in p.args)]
    return running[-1] if running else None


def _all_nodes_running(procs, env, work: Path) -> None:
    """Start again, on its old port, each node a previous test killed (its old identity goes offline at the
    SuperLink by itself and is left out at hello)."""
    for cid in range(3):
        if _node(procs, cid) is not None:
            continue
        dead = next(p for p in reversed(procs.started) if any(f"partition-id={cid} " in str(a) for a in p.args))
        restarted = procs.start(dead.args, work / f"supernode-{cid}-restarted-{time.time_ns()}.log", env, work)
        port = int(dead.args[dead.args.index("--port") + 1])
        assert test_flower._listening(port, restarted), f"supernode {cid} did not start again"


def _run_and_kill(procs, env, work: Path, name: str, overrides: str) -> tuple[str, Path]:
    """`flwr run` the bundled app; once round 1 is in metrics.jsonl, SIGKILL client KILLED's SuperNode (and its
    descendants) by pid. Returns (the run's output, its run folder). The waits only guard against a hang."""
    out = work / "runs" / name
    log = work / f"flwr-run-{name}.log"
    run_config = f'out="{out}" overrides="{RUN} {overrides}"'.rstrip()
    command = [str(test_flower.BIN / "flwr"), "run", str(test_flower.APP), "loopback", "--stream"]
    run = procs.start([*command, "--run-config", run_config], log, env, work)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 1800
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert run.poll() is None, f"flwr run ended before round 1 was recorded:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"round 1 not recorded in 1800 s:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    _kill(_node(procs, KILLED))
    run.wait(timeout=1800)  # `flwr run --stream` exits 0 even when the ServerApp failed (Flower 1.41)
    return log.read_text(), out


def test_a_killed_node_is_recorded_with_the_superlinks_reason_and_the_run_completes(federation):
    """Round 1 with all three clients, then client 1's node is killed: the rounds that sampled it after the kill
    record the SuperLink's "Node Unavailable" as its failure (not a timeout), the other two clients train every
    round, and the run ends with its outputs."""
    env, procs, work = federation
    _all_nodes_running(procs, env, work)
    shown, out = _run_and_kill(procs, env, work, "goes-on", "flower.round_timeout_s=300")
    assert "[fedlora] done:" in shown and (out / "summary.json").is_file(), shown[-3000:]
    assert "TypeError" not in shown
    rounds = records(out)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert sorted(rounds[0]["successful"]) == [0, 1, 2] and not rounds[0]["failures"]
    for r in rounds[1:]:
        assert r["participants"] == [0, 1, 2] and sorted(r["successful"]) in ([0, 2], [0, 1, 2]), r
        failed = {f["client"]: f["reason"] for f in r["failures"]}
        assert set(failed) <= {KILLED} and set(failed).isdisjoint(r["successful"])
        assert all(reason == NODE_UNAVAILABLE_ERROR_REASON for reason in failed.values()), failed
    # the node may have answered round 2 before the kill reached it; it cannot answer round 3
    assert KILLED in {f["client"] for f in rounds[-1]["failures"]}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["client_failures"] in (1, 2)


def test_fail_fast_stops_with_one_line_naming_the_killed_node(federation):
    """faults.fail_fast and no round limit (flower.round_timeout_s unset): the node killed after round 1 stops the
    run with fedlora's one line naming the client, its Flower node and the SuperLink's reason; no TypeError;
    round 1's record stays, nothing is written as if the run had ended."""
    env, procs, work = federation
    _all_nodes_running(procs, env, work)
    shown, out = _run_and_kill(procs, env, work, "fail-fast", "faults.fail_fast=true")
    assert "TypeError" not in shown, shown[-3000:]
    nodes = re.search(r"\[fedlora\] flower: clients on nodes (.*)", shown)
    assert nodes, shown[-3000:]
    node_of = dict(re.findall(r"(\d+)→(\d+)", nodes.group(1)))
    errors = [line for line in shown.splitlines() if line.startswith("[fedlora] error: ")]
    assert errors == [
        f"[fedlora] error: flower: client {KILLED} (Flower node {node_of[str(KILLED)]}) failed in training: "
        f"{NODE_UNAVAILABLE_ERROR_REASON}"
    ], shown[-3000:]
    assert "[fedlora] done:" not in shown and not (out / "summary.json").exists()
    assert records(out)[0]["round"] == 1

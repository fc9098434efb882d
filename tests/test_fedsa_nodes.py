"""FedSA-LoRA on real Flower processes: a SuperNode killed (SIGKILL, by pid) between rounds and started again
keeps its own B, and the run resumed on it ends as the in-process twin that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from fedlora import federation
from fedlora.config import load_config

pytest.importorskip("flwr")

import test_flower  # noqa: E402
from test_federation_nodes import _flwr_run, files_config, nodes_config, records, write_client_files  # noqa: E402

fedlora_cache = test_flower.fedlora_cache


def _node_process(procs, cid: int):
    return next(p for p in procs.started if any(f"partition-id={cid} " in str(a) for a in p.args))


def _kill(proc) -> None:
    """SIGKILL the process and its descendants, by pid, and wait for it."""
    pids = [proc.pid, *test_flower._descendants(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(test_flower._alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)


def _store_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("round-*.safetensors"))}


def test_a_restarted_supernode_keeps_its_B_and_the_run_ends_as_its_twin(tmp_path, fedlora_cache):
    from safetensors.torch import load_file
    from test_flower import _federation

    files = write_client_files(tmp_path / "node-data")
    server = tmp_path / "server"
    server.mkdir()
    config_path = nodes_config(server)
    node_config = {cid: f'data="{path}"' for cid, path in enumerate(files)}
    out = tmp_path / "runs" / "fedsa"
    with _federation(tmp_path, fedlora_cache, node_config=node_config, warm=True) as (env, procs):
        # ------------------------------------------------------------ round 1, then node 1 killed and restarted
        first = f'config="{config_path}" out="{out}" overrides="method=fedsa rounds=1"'
        status, shown = _flwr_run(procs, env, tmp_path, "fedsa-1", first)
        assert status == 0 and "[fedlora] done:" in shown, shown[-3000:]
        session = (out / "flower-session").read_text().strip()
        trained = {c for r in records(out) for c in r["participants"]}
        cid = min(trained)  # a client that trained in round 1 holds a B
        store = tmp_path / f"node-{cid}" / f"state-{session}" / str(cid)
        before = _store_bytes(store)
        assert list(before) == ["round-000001.safetensors"]
        node = _node_process(procs, cid)
        _kill(node)
        restarted = procs.start(node.args, tmp_path / f"supernode-{cid}-restarted.log", env, tmp_path)
        port = int(node.args[node.args.index("--port") + 1])
        assert test_flower._listening(port, restarted)
        assert _store_bytes(store) == before  # the B it had, on its disk
        # ------------------------------------------------------------ resumed to 3 rounds on the restarted node
        rest = f'config="{config_path}" out="{out}" resume=true overrides="method=fedsa rounds=3"'
        status, shown = _flwr_run(procs, env, tmp_path, "fedsa-2", rest)
        assert status == 0 and "[fedlora] done:" in shown, shown[-3000:]  # `flwr run` exits 0 when the app fails
    # the in-process twin over the same files, never interrupted
    twin = tmp_path / "inprocess"
    federation.run(
        load_config(files_config(tmp_path / "node-data", [str(p) for p in files]), ["method=fedsa", "rounds=3"]), twin
    )
    flower_records, twin_records = records(out), records(twin)
    assert [r["participants"] for r in flower_records] == [r["participants"] for r in twin_records]
    for x, y in zip(flower_records, twin_records, strict=True):
        assert (x["bytes_up"], x["bytes_down"]) == (y["bytes_up"], y["bytes_down"])
    # the shared A (the server's) and every node's own B (the nodes') equal the twin's
    a, b = (
        load_file(str(out / "adapter" / "adapter_model.safetensors")),
        load_file(str(twin / "adapter" / "adapter_model.safetensors")),
    )
    for key in a:
        if "lora_A" in key:
            assert (a[key] - b[key]).abs().max() <= 1e-6, key
    from fedlora.client.state import client_store

    for c in range(3):
        mine = client_store(tmp_path / f"node-{c}" / f"state-{session}", c)
        theirs = client_store(twin / "checkpoint" / "clients", c)
        assert mine.rounds() == theirs.rounds()
        if mine.rounds():
            x, y = mine.latest(), theirs.latest()
            assert all((x[k] - y[k]).abs().max() <= 1e-6 for k in y)
    assert cid in {c for r in flower_records[1:] for c in r["participants"]}, "the restarted node never trained again"
    summary = json.loads((out / "summary.json").read_text())
    assert "B = 0" in summary["options"]["global_view"]  # the server holds no B

"""Crash safety: a `fedlora run` killed with SIGKILL anywhere resumes and ends byte for byte like a run that was
never interrupted.

Each test runs the real CLI in a subprocess. ``FEDLORA_CRASH_AT`` (fedlora.crashpoints) makes it SIGKILL itself at
a named point — including between writing a checkpoint's temporary file and renaming it — and a second test kills
it from outside at seeded random moments.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
# server Adam keeps optimizer state across rounds, so a resume that lost any of it would end elsewhere
SETTINGS = ["rounds=3", "data.max_examples=48", "train.local_steps=2", "threads=1", "server.optimizer=adam"]
KILLED = -signal.SIGKILL


def _fedlora(args: list[str], crash_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("FEDLORA_CRASH_AT", None)
    if crash_at is not None:
        env["FEDLORA_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-m", "fedlora", "run", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> int:
    # FEDLORA_CRASH_TIMEOUT: seconds per fedlora process (a machine busy with other work needs more than 300)
    _, stderr = proc.communicate(timeout=float(os.environ.get("FEDLORA_CRASH_TIMEOUT", "300")))
    assert proc.returncode in (0, KILLED), stderr[-2000:]
    return proc.returncode


def _resume_until_done(out: Path) -> int:
    """Resume (plainly) until the run completes; returns how many resumes it took."""
    for attempt in range(1, 4):
        if _finish(_fedlora(["--resume", str(out)])) == 0:
            return attempt
    raise AssertionError("the run did not complete after 3 resumes")


def _outcome(out: Path) -> dict:
    """What must not depend on crashes: the adapter's bytes, every record but its wall time, the summary's
    numbers."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("wall_s")
    summary = json.loads((out / "summary.json").read_text())
    summary["totals"].pop("wall_s")
    summary.pop("base_model")  # the run folder's own base/ path
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    adapter_config.pop("base_model_name_or_path")
    return {
        "adapter": (out / "adapter" / "adapter_model.safetensors").read_bytes(),
        "adapter_config": adapter_config,
        "records": records,
        "summary": summary,
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("crash") / "uninterrupted"
    assert _finish(_fedlora([str(TINY), *SETTINGS, "--out", str(out)])) == 0
    return {**_outcome(out), "dir": out}


# One run killed again and again: each attempt (a fresh run, then resumes) SIGKILLs itself at the next point,
# counted from the attempt's own start; the second value is the last round a checkpoint covers after the kill.
CRASH_CHAIN = [
    ("dir:base", 0),  # the random base written under its temporary name, not yet renamed
    ("round:trained@1", 0),  # clients trained, nothing aggregated, no checkpoint: the resume starts over
    ("checkpoint:state-tmp@1", 0),  # during round 1's checkpoint write: the state in its temporary file
    ("metrics:appended@2", 1),  # round 2 recorded in metrics.jsonl, its checkpoint not written
    ("checkpoint:state-renamed@1", 1),  # round 2's state file in place, latest.json still names round 1
    ("write:latest.json@2", 2),  # round 3's commit point written to its temporary file, not renamed
    ("write:adapter_model.safetensors", 3),  # exporting the final adapter
    ("write:summary.json", 3),  # the last file of the run
]


def _checkpoint_round(out: Path) -> int:
    latest = out / "checkpoint" / "latest.json"
    return json.loads(latest.read_text())["round"] if latest.is_file() else 0


def test_sigkill_at_every_point_then_resume_ends_with_the_same_adapter(tmp_path, uninterrupted):
    out = tmp_path / "run"
    for attempt, (crash_at, committed) in enumerate(CRASH_CHAIN):
        args = ["--resume", str(out)] if attempt else [str(TINY), *SETTINGS, "--out", str(out)]
        assert _finish(_fedlora(args, crash_at=crash_at)) == KILLED, crash_at
        assert _checkpoint_round(out) == committed, crash_at
        assert not (out / "base").exists() or (out / "base" / "model.safetensors").is_file(), crash_at
    assert _resume_until_done(out) == 1
    assert _outcome(out) == _without_dir(uninterrupted)


def _without_dir(outcome: dict) -> dict:
    return {k: v for k, v in outcome.items() if k != "dir"}


def _complete_lines(path: Path) -> list[str]:
    text = path.read_text() if path.exists() else ""
    return text.splitlines(keepends=True)[: text.count("\n")]


def _freeze_and_kill(proc: subprocess.Popen) -> bool:
    """SIGSTOP ``proc``, then SIGKILL it if it is still running: True when this killed it (its exit status is
    then -SIGKILL), False when it had already exited on its own. A stopped process cannot exit, so there is no
    race between checking and killing (a plain poll() then SIGKILL can hit a process that just exited)."""
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGSTOP)  # not reaped yet (poll() said so): the pid is still this child's
    while True:
        state = _proc_state(proc.pid)
        if state in ("T", "t"):  # stopped: ours to kill
            proc.send_signal(signal.SIGKILL)
            assert _finish(proc) == KILLED
            return True
        if state in ("Z", "X", None):  # it exited before the stop: leave it be
            _finish(proc)
            return False
        time.sleep(0.001)  # the stop is delivered asynchronously


def _proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` in /proc (Linux), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def test_sigkill_at_random_moments_then_resume_ends_with_the_same_adapter(tmp_path, uninterrupted):
    """Kill from outside at seeded random moments of each attempt, resuming every time: the rounds that a
    checkpoint covers keep their metrics lines as written, and the end is the uninterrupted run's.

    Each kill lands 0–0.3 s after a round is recorded with at least one round left (a round takes ≈ 1.5 s here),
    and the test asserts both kills happened: the process is frozen (SIGSTOP) before it is killed, so a run that
    had already finished is seen as such, never mistaken for a kill."""
    out, rng = tmp_path / "run", random.Random(7)
    rounds = 3
    proc = _fedlora([str(TINY), *SETTINGS, "--out", str(out)])
    kills = 0
    for kill in range(2):
        # wait for a round to be recorded (the run is past its slow start), then kill a random moment later
        seen = len(_complete_lines(out / "metrics.jsonl"))
        wanted = min(seen + 1, rounds - 1)  # never wait for the last round: some work must be left to interrupt
        _wait_for_lines(out / "metrics.jsonl", wanted, proc)
        time.sleep(rng.uniform(0.0, 0.3))
        if not _freeze_and_kill(proc):
            break
        kills += 1
        kept = _complete_lines(out / "metrics.jsonl")
        done = _checkpoint_round(out)
        proc = _fedlora(["--resume", str(out)])
        if done:  # what a checkpoint covers stays as written while the resumed run goes on
            _wait_for_lines(out / "metrics.jsonl", done, proc)
            assert _complete_lines(out / "metrics.jsonl")[:done] == kept[:done], kill
    assert kills == 2, f"only {kills} of 2 kills landed before the run finished"
    if _finish(proc) != 0:
        _resume_until_done(out)
    assert _outcome(out) == _without_dir(uninterrupted)


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen) -> None:
    """Until ``path`` has ``count`` complete lines or ``proc`` exits (no time limit: a loaded machine is slow)."""
    while len(_complete_lines(path)) < count and proc.poll() is None:
        time.sleep(0.01)


def test_resume_with_fewer_rounds_than_done_is_refused_and_changes_nothing(tmp_path, uninterrupted):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted["dir"], out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = _fedlora(["--resume", str(out), "rounds=2"])
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "rounds" in stderr and len(stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------------------- methods with client state

# Per method, a chain of kills as above. FedSA-LoRA's clients write their own B during a round (client state,
# checkpoint/clients/<id>/round-NNNNNN.safetensors): its chain kills between two clients' state writes of round 2
# and after round 2's clients trained, so the resumes rerun round 2 over state files that round already wrote.
CLIENT_STATE_CHAINS = {
    "fedsa": [
        ("write:round-000002.safetensors@2", 1),  # the second client's B of round 2 written, not renamed
        ("round:trained@1", 1),  # round 2 rerun: every B of round 2 rewritten, nothing aggregated
        ("metrics:appended@2", 2),  # round 3 recorded, its checkpoint not written
    ],
    "rolora": [
        ("round:trained@2", 1),  # round 2 (A trains) done by the clients, nothing aggregated
        ("metrics:appended@1", 1),  # round 2 recorded, its checkpoint not written
    ],
}


def _client_states(out: Path) -> dict[str, bytes]:
    """Every client-state file (relative path → bytes)."""
    root = out / "checkpoint" / "clients"
    return (
        {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.safetensors"))} if root.is_dir() else {}
    )


@pytest.mark.parametrize("method", sorted(CLIENT_STATE_CHAINS))
def test_sigkill_then_resume_keeps_rolora_and_fedsa_identical(tmp_path, method):
    """Killed along the chain and resumed, the run ends with the uninterrupted run's adapter, records and summary,
    and (FedSA-LoRA) the same client-state files, byte for byte."""
    settings = [*SETTINGS, f"method={method}"]
    clean = tmp_path / "uninterrupted"
    assert _finish(_fedlora([str(TINY), *settings, "--out", str(clean)])) == 0
    out = tmp_path / "run"
    for attempt, (crash_at, committed) in enumerate(CLIENT_STATE_CHAINS[method]):
        args = ["--resume", str(out)] if attempt else [str(TINY), *settings, "--out", str(out)]
        assert _finish(_fedlora(args, crash_at=crash_at)) == KILLED, crash_at
        assert _checkpoint_round(out) == committed, crash_at
    assert _resume_until_done(out) == 1
    assert _outcome(out) == _outcome(clean)
    assert _client_states(out) == _client_states(clean)
    if method == "fedsa":
        assert _client_states(clean)  # the clients did keep state


# FedEx-LoRA (residuals merged into the base, re-merged on resume) and Fed-SB (fixed frame + R, its LoRA-SB init
# recomputed at start and replaced by the checkpoint): one chain of kills each, ending byte for byte as uninterrupted
METHOD_CHAIN = [
    ("checkpoint:state-renamed@2", 1),  # round 2's state file in place, latest.json still names round 1
    ("metrics:appended@2", 2),  # resumed at round 2: round 3 recorded, not checkpointed
    ("write:adapter_model.safetensors", 3),  # exporting the final adapter
]


@pytest.mark.parametrize("method", ["fedex", "fedsb"])
def test_sigkill_then_resume_ends_with_the_same_adapter_fedex_fedsb(tmp_path, method):
    from method_args import method_args

    settings = method_args(method, TINY, *SETTINGS)
    reference = tmp_path / "uninterrupted"
    assert _finish(_fedlora([str(TINY), *settings, "--out", str(reference)])) == 0
    out = tmp_path / "run"
    for attempt, (crash_at, committed) in enumerate(METHOD_CHAIN):
        args = ["--resume", str(out)] if attempt else [str(TINY), *settings, "--out", str(out)]
        assert _finish(_fedlora(args, crash_at=crash_at)) == KILLED, crash_at
        assert _checkpoint_round(out) == committed, crash_at
    assert _resume_until_done(out) == 1
    assert _outcome(out) == _outcome(reference)

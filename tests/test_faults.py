"""Client faults and bad updates: each is injected into a real tiny run and the round must go on without it.

Faults are injected by a test-side engine (``FaultyEngine``, the in-process engine with a fake clock) that makes
client c raise, "hang" (its clock jumps past the deadline), return nothing or garbage, or tamper with its upload
in round 1. The invariant: a round's global state does not depend on what a failed client sent, so every fault
on the same client in the same round ends in the same adapter, equal to aggregating the others alone.
"""

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedlora import federation, payload, rundir
from fedlora.config import load_config
from fedlora.engines.base import ClientFailure
from fedlora.engines.inprocess import InProcessEngine
from fedlora.errors import ConfigError, FedloraError
from fedlora.lora.state import unflatten_factors
from fedlora.methods.base import ClientPlan
from fedlora.validation import UpdateRejected, read_upload, update_norm

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
FAST = ["rounds=2", "data.max_examples=48", "train.local_steps=2", "eval.before=false", "eval.every=2"]
FEDIT = [*FAST, "method=fedit"]
VICTIM_ROUND = 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _retouch(blob: bytes, change) -> bytes:
    """The upload with ``change(tensors)`` applied to its tensors (metadata kept)."""
    tensors, meta = payload.unpack(blob)
    change(tensors)
    return payload.pack(tensors, meta)


def _first(tensors: dict, suffix: str) -> str:
    return sorted(k for k in tensors if k.endswith(suffix))[0]


def _set(tensors, suffix, fn):
    key = _first(tensors, suffix)
    tensors[key] = fn(tensors[key])


def _poison(value: float):
    def change(tensors):
        key = _first(tensors, "lora_B")
        t = tensors[key].clone()
        t[0, 0] = value
        tensors[key] = t

    return change


TAMPER = {
    # client faults
    "raise": "raise",
    "hang": "hang",
    "empty": lambda blob: b"",
    "truncated": lambda blob: blob[: len(blob) // 2],
    "garbage": lambda blob: bytes(range(256)) * 4,
    # bad updates
    "extra key": lambda blob: _retouch(blob, lambda t: t.update({"evil.lora_B": torch.zeros(2, 2)})),
    "missing key": lambda blob: _retouch(blob, lambda t: t.pop(_first(t, "lora_A"))),
    "shape": lambda blob: _retouch(blob, lambda t: _set(t, "lora_B", lambda x: torch.cat([x, x[:1]], dim=0))),
    "rank": lambda blob: _retouch(blob, lambda t: _set(t, "lora_B", lambda x: torch.cat([x, x[:, :1]], dim=1))),
    "dtype": lambda blob: _retouch(blob, lambda t: _set(t, "lora_A", lambda x: x.double())),
    "nan": lambda blob: _retouch(blob, _poison(math.nan)),
    "inf": lambda blob: _retouch(blob, _poison(math.inf)),
    "norm": lambda blob: _retouch(blob, lambda t: _set(t, "lora_B", lambda x: x + 1e3)),
}
REASONS = {
    "raise": "RuntimeError: injected crash",
    "hang": "timeout: took 1e+03 s > faults.round_deadline_s=100",
    "empty": "rejected: empty upload",
    "truncated": "rejected: unreadable upload",
    "garbage": "rejected: unreadable upload",
    "extra key": "rejected: unexpected key evil.lora_B",
    "missing key": "rejected: missing key",
    "shape": "shape 65×8, expected 64×8",
    "rank": "rank 9, expected 8",
    "dtype": "dtype torch.float64, expected torch.float32",
    "nan": "NaN in 1 of",
    "inf": "Inf in 1 of",
    "norm": "exceeds faults.max_update_norm=50",
}


class FaultyEngine(InProcessEngine):
    """The in-process engine with faults injected: ``faults[(round, client)]`` is "raise", "hang" or a function
    from the client's real upload blob to the blob it sends. Records every real upload in ``uploads``."""

    def __init__(self, *args, faults: dict, **kwargs) -> None:
        super().__init__(*args, **kwargs, clock=FakeClock())
        self.faults = faults
        self.uploads: dict[tuple[int, int], bytes] = {}

    def run_client(self, client_id: int, download: bytes) -> bytes:
        round_idx = int(payload.unpack(download)[1]["round"])
        fault = self.faults.get((round_idx, client_id))
        if fault == "raise":
            raise RuntimeError("injected crash")
        upload = super().run_client(client_id, download)
        self.uploads[(round_idx, client_id)] = upload
        if fault == "hang":
            self.clock.now += 1000.0  # the client took 1000 s
            return upload
        return fault(upload) if fault is not None else upload


def _faulty_run(monkeypatch, out: Path, overrides: list[str], faults: dict) -> tuple[dict, FaultyEngine]:
    engines = []

    def factory(*args, **kwargs):
        engines.append(FaultyEngine(*args, faults=faults, **kwargs))
        return engines[-1]

    monkeypatch.setattr(federation, "InProcessEngine", factory)
    summary = federation.run(load_config(TINY, overrides), out)
    return summary, engines[0]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / rundir.METRICS_FILE).read_text().splitlines()]


def _global(out: Path) -> dict:
    _, tensors, _ = rundir.load_checkpoint(out)
    return unflatten_factors(tensors, prefix="global.")


def _victim(overrides) -> tuple[list[int], int]:
    participants = federation.round_participants(load_config(TINY, overrides), VICTIM_ROUND)
    return participants, participants[1]


GUARDS = ["faults.round_deadline_s=100", "faults.max_update_norm=50"]


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory):
    """A FedIT run per fault kind (client ``victim`` fails in round 1), and one without faults."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("faults")
    _, victim = _victim(FEDIT)
    runs = {}
    try:
        for kind, fault in [("none", None), *TAMPER.items()]:
            faults = {} if fault is None else {(VICTIM_ROUND, victim): fault}
            runs[kind] = _faulty_run(mp, root / kind.replace(" ", "-"), [*FEDIT, *GUARDS], faults)
    finally:
        mp.undo()
    return root, runs


@pytest.mark.parametrize("kind", list(TAMPER))
def test_a_failed_client_is_recorded_and_the_round_goes_on(fault_runs, kind):
    root, runs = fault_runs
    participants, victim = _victim(FEDIT)
    records = _records(root / kind.replace(" ", "-"))
    first, second = records
    assert first["participants"] == participants and len(first["ranks"]) == len(participants)
    assert [f["client"] for f in first["failures"]] == [victim]
    assert REASONS[kind] in first["failures"][0]["reason"], first["failures"][0]["reason"]
    assert "\n" not in first["failures"][0]["reason"]
    assert first["successful"] == [c for c in participants if c != victim]
    assert "skipped" not in first
    # a_i renormalised over the successful clients (num_examples weighting)
    config = load_config(root / kind.replace(" ", "-") / rundir.CONFIG_FILE)
    sizes = [s["size"] for s in runs[kind][0]["clients"]]
    expected = [sizes[c] / sum(sizes[s] for s in first["successful"]) for c in first["successful"]]
    assert first["weights"] == pytest.approx(expected) and math.fsum(first["weights"]) == pytest.approx(1.0)
    assert len(first["client_train_loss"]) == len(first["successful"]) and math.isfinite(first["train_loss"])
    assert second["failures"] == [] and second["successful"] == second["participants"]
    assert runs[kind][0]["totals"]["client_failures"] == 1
    assert config.faults.max_update_norm == 50


def test_a_failed_client_never_reaches_the_global_state(fault_runs):
    """Whatever the failed client sent, the run ends with the same adapter, and round 1's global is the
    aggregate of the other clients alone (FedIT, avg at lr 1: Σ_i w_i (B_i, A_i) over the successful ones)."""
    root, runs = fault_runs
    reference = (root / "raise" / "adapter" / "adapter_model.safetensors").read_bytes()
    for kind in TAMPER:
        assert (root / kind.replace(" ", "-") / "adapter" / "adapter_model.safetensors").read_bytes() == reference, kind
    clean = (root / "none" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert clean != reference  # the victim's update matters when it arrives


def test_round_one_global_is_the_others_average(tmp_path, monkeypatch):
    overrides = [*FEDIT, "rounds=1"]
    participants, victim = _victim(overrides)
    out = tmp_path / "one"
    _, engine = _faulty_run(monkeypatch, out, overrides, {(1, victim): "raise"})
    record = _records(out)[0]
    ok = [c for c in participants if c != victim]
    trained = {c: payload.unpack(engine.uploads[(1, c)])[0] for c in ok}
    for key, value in load_file(str(out / rundir.CHECKPOINT_DIR / "round-000001.safetensors")).items():
        expected = sum(w * trained[c][key.removeprefix("global.")] for w, c in zip(record["weights"], ok, strict=True))
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


def test_too_few_successful_clients_leave_the_global_unchanged(tmp_path, monkeypatch):
    overrides = [*FEDIT, "rounds=1", "faults.min_successful=3"]
    participants, victim = _victim(overrides)
    out = tmp_path / "skip"
    summary, _ = _faulty_run(monkeypatch, out, overrides, {(1, victim): "raise"})
    record = _records(out)[0]
    assert record["skipped"] == "2 of 3 clients succeeded (faults.min_successful=3)"
    assert record["weights"] == [] and len(record["successful"]) == 2
    assert summary["totals"]["skipped_rounds"] == 1
    # the global is still its initialisation: the same as a run whose round-1 clients all failed
    everyone = {(1, c): "raise" for c in participants}
    _faulty_run(monkeypatch, tmp_path / "all-failed", overrides, everyone)
    for name, (B, A) in _global(out).items():
        B0, A0 = _global(tmp_path / "all-failed")[name]
        assert torch.equal(B, B0) and torch.equal(A, A0) and not B.any()  # B starts at 0
    assert _records(tmp_path / "all-failed")[0]["skipped"].startswith("0 of 3")


def test_fail_fast_stops_at_the_first_failure_naming_the_client(tmp_path, monkeypatch):
    _, victim = _victim(FEDIT)
    with pytest.raises(RuntimeError, match="injected crash"):  # in-process: the client's own exception
        _faulty_run(monkeypatch, tmp_path / "a", [*FEDIT, "faults.fail_fast=true"], {(1, victim): "raise"})
    with pytest.raises(FedloraError, match=f"^client {victim} failed in round 1: rejected: .*NaN"):
        _faulty_run(monkeypatch, tmp_path / "b", [*FEDIT, "faults.fail_fast=true"], {(1, victim): TAMPER["nan"]})


@pytest.mark.parametrize("method", ["fslora", "flora", "florist", "hetlora"])
def test_other_methods_go_on_without_the_failed_client(tmp_path, monkeypatch, method):
    overrides = [*FAST, f"method={method}"]
    _, victim = _victim(overrides)
    out = tmp_path / method
    _faulty_run(monkeypatch, out, overrides, {(1, victim): TAMPER["garbage"]})
    first = _records(out)[0]
    assert [f["client"] for f in first["failures"]] == [victim] and victim not in first["successful"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_independent_sampling_keeps_the_unbiased_weights_of_the_survivors(tmp_path, monkeypatch):
    """A failed client counts as a zero update: the others keep a_i / q_i (not renormalised; docs/methods.md)."""
    overrides = [*FEDIT, "rounds=1", "sampling.scheme=independent", "sampling.probs=0.9"]
    participants = federation.round_participants(load_config(TINY, overrides), 1)
    assert len(participants) >= 2
    out = tmp_path / "independent"
    summary, _ = _faulty_run(monkeypatch, out, overrides, {(1, participants[0]): "raise"})
    record = _records(out)[0]
    sizes = [s["size"] for s in summary["clients"]]
    expected = [sizes[c] / sum(sizes) / 0.9 for c in participants[1:]]
    assert record["successful"] == participants[1:] and record["weights"] == pytest.approx(expected)


# ------------------------------------------------------------------------------------ validation, directly


def _plan() -> ClientPlan:
    g = torch.Generator().manual_seed(0)
    factors = {"m": (torch.randn(6, 3, generator=g), torch.randn(3, 5, generator=g))}
    return ClientPlan(client_id=7, rank=3, scale=1.0, factors=factors)


def _blob(B, A, **meta) -> bytes:
    return payload.pack({"m.lora_B": B, "m.lora_A": A}, {"num_examples": 4, "train_loss": 1.0, "tokens": 9, **meta})


def test_read_upload_accepts_a_good_upload_and_measures_the_update_norm():
    plan = _plan()
    B, A = plan.factors["m"]
    factors, meta = read_upload(plan, _blob(B + 3.0, A), max_update_norm=math.sqrt(6 * 3 * 9) + 1e-6)
    assert torch.equal(factors["m"][0], B + 3.0) and meta["tokens"] == 9
    assert update_norm(plan.factors, factors) == pytest.approx(math.sqrt(6 * 3 * 9))
    with pytest.raises(UpdateRejected, match="update norm 12.7"):
        read_upload(plan, _blob(B + 3.0, A), max_update_norm=12.0)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda B, A: _blob(B, A[:2]), "m.lora_A: rank 2, expected 3"),
        (lambda B, A: _blob(B[:, :2], A), "m.lora_B: rank 2, expected 3"),
        (lambda B, A: _blob(B[:5], A), "m.lora_B: shape 5×3, expected 6×3"),
        (lambda B, A: _blob(B[None], A), "m.lora_B: shape 1×6×3, expected 6×3"),
        (lambda B, A: _blob(B, A[0]), "m.lora_A: shape 5, expected 3×5"),
        (lambda B, A: _blob(B, A.sum()), "m.lora_A: shape scalar, expected 3×5"),
        (lambda B, A: _blob(B.half(), A), "m.lora_B: dtype torch.float16, expected torch.float32"),
        (lambda B, A: _blob(B, A, train_loss=math.nan), "train_loss is nan"),
        (lambda B, A: payload.pack({"m.lora_B": B, "m.lora_A": A}, {"train_loss": 1.0}), "metadata lacks"),
        (lambda B, A: payload.pack({"m.lora_B": B}, {}), "missing key m.lora_A"),
    ],
)
def test_read_upload_rejects_with_a_reason(make, reason):
    plan = _plan()
    with pytest.raises(UpdateRejected, match=reason.replace("(", r"\(")):
        read_upload(plan, make(*plan.factors["m"]))


def test_untrained_factors_may_not_be_uploaded():
    """FFA-LoRA trains B only: an upload carrying A (the frozen init) is rejected, not silently used."""
    plan = _plan()
    plan.train_A = False
    B, A = plan.factors["m"]
    factors, _ = read_upload(plan, payload.pack({"m.lora_B": B + 1}, {"num_examples": 1, "train_loss": 0, "tokens": 1}))
    assert factors["m"][1] is A
    with pytest.raises(UpdateRejected, match="unexpected key m.lora_A"):
        read_upload(plan, _blob(B, A))


def test_engine_failures_are_values_not_exceptions():
    engine = InProcessEngine(None, {}, [[]], None, 0, deadline_s=1.0)
    engine.run_client = partial(_raise, ValueError("bad shard\nsecond line"))
    [result] = list(engine.run_clients([(0, b"")]))
    assert result == ClientFailure("ValueError: bad shard")


def _raise(err, *_):
    raise err


def test_config_checks_min_successful():
    with pytest.raises(ConfigError, match="faults.min_successful: 4 exceeds the 3 clients a round has"):
        load_config(TINY, ["faults.min_successful=4"])
    with pytest.raises(ConfigError, match="faults.round_deadline_s"):
        load_config(TINY, ["faults.round_deadline_s=0"])

"""RoLoRA (method = "rolora"): the alternation, the server step against a dense reference, exact bytes."""

import json
from pathlib import Path

import capture
import pytest
import torch

from fedlora import aggregation, federation
from fedlora.config import load_config
from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import ModuleShape
from fedlora.methods.alternating import RoLoRA, trains_B
from fedlora.server_optimizer import ServerOptimizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
SHAPES = {"q": ModuleShape(12, 10), "v": ModuleShape(6, 10)}


def _method(rank=4, optimizer="avg"):
    return RoLoRA(
        SHAPES, rank, ScaleRule("constant", 2.0), ServerOptimizer(optimizer, 1.0), torch.Generator().manual_seed(0)
    )


def _train(plan, g):
    """What a client returns: the factor the plan trains moved at random, the frozen one exactly as sent."""
    out = {}
    for name, (B, A) in plan.factors.items():
        out[name] = (
            B + torch.randn(B.shape, generator=g) if plan.train_B else B,
            A + torch.randn(A.shape, generator=g) if plan.train_A else A,
        )
    return out


def test_rounds_alternate_B_first():
    """Odd rounds train B only, even rounds A only; B first, since A's gradient is zero while B = 0."""
    method = _method()
    for round_idx in range(1, 7):
        plan = method.plan(0, round_idx, torch.Generator())
        assert (plan.train_B, plan.train_A) == ((True, False) if round_idx % 2 else (False, True))
        assert trains_B(round_idx) is plan.train_B
    assert all(float(B.abs().max()) == 0 for B, _ in method.factors.values())  # LoRA init: B = 0


@pytest.mark.parametrize("weights", [[0.2, 0.3, 0.5], [0.5, 0.9, 0.4]])  # Σ = 1, and Σ ≠ 1 (independent sampling)
def test_each_round_is_exact_against_the_dense_sum(weights):
    """Over four rounds the new global product is Σ w_k B_k A_k + (1 − Σ w) B A (dense, float64 reference), the
    frozen factor is untouched, and the pair is aggregation.rolora's (when Σ w = 1)."""
    method, g = _method(), torch.Generator().manual_seed(1)
    for round_idx in range(1, 5):
        old = {n: (B.clone(), A.clone()) for n, (B, A) in method.factors.items()}
        plans = [method.plan(c, round_idx, torch.Generator()) for c in range(3)]
        uploads = [_train(p, g) for p in plans]
        method.aggregate(plans, uploads, weights)
        for name, (B, A) in method.factors.items():
            B0, A0 = old[name]
            dense = sum(w * (u[name][0].double() @ u[name][1].double()) for w, u in zip(weights, uploads, strict=True))
            dense = dense + (1 - sum(weights)) * (B0.double() @ A0.double())
            torch.testing.assert_close((B @ A).double(), dense, rtol=1e-5, atol=1e-5)
            frozen, was = (A, A0) if trains_B(round_idx) else (B, B0)
            assert torch.equal(frozen, was)
            if abs(sum(weights) - 1) < 1e-12:
                ref = aggregation.rolora(
                    [u[name][0] for u in uploads],
                    [u[name][1] for u in uploads],
                    weights,
                    trained="B" if trains_B(round_idx) else "A",
                )
                torch.testing.assert_close(B, ref[0], rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(A, ref[1], rtol=1e-6, atol=1e-6)
        assert float(method.factors["q"][0].abs().max()) > 0.1  # B moved in round 1: a real test of round 2's A


@pytest.fixture(scope="module")
def carried(tmp_path_factory):
    capture.CARRIED.clear()
    out = tmp_path_factory.mktemp("rolora") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(federation, "InProcessEngine", capture.CapturingEngine)
        federation.run(
            load_config(TINY, ["rounds=3", "data.max_examples=48", "train.local_steps=2", "method=rolora"]), out
        )
    return out, list(capture.CARRIED)


def test_bytes_are_the_formula_exactly(carried):
    """Down: 4·r·Σ(m+n) + header (B and A); up: 4·r·Σm + header in odd rounds (B), 4·r·Σn + header in even rounds
    (A). Each blob's length is computed from the safetensors format (not fedlora's packer), and the per-round
    sums are metrics.jsonl's bytes_down / bytes_up."""
    out, blobs = carried
    config = load_config(out / "config.resolved.toml")
    r = config.lora.rank
    shapes = {
        f"model.layers.{i}.self_attn.{p}": (64 if p == "q_proj" else 32, 64)
        for i in range(2)
        for p in ("q_proj", "v_proj")
    }
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    i = 0
    for record in records:
        odd = record["round"] % 2 == 1
        down_total = up_total = 0
        for _ in record["participants"]:
            cid, down, up = blobs[i]
            i += 1
            down_tensors = {f"adapter.{n}.lora_B": (m, r) for n, (m, _) in shapes.items()}
            down_tensors.update({f"adapter.{n}.lora_A": (r, k) for n, (_, k) in shapes.items()})
            up_tensors = (
                {f"{n}.lora_B": (m, r) for n, (m, _) in shapes.items()}
                if odd
                else {f"{n}.lora_A": (r, k) for n, (_, k) in shapes.items()}
            )
            assert len(down) == capture.safetensors_size(down_tensors, capture.raw_metadata(down))
            assert len(up) == capture.safetensors_size(up_tensors, capture.raw_metadata(up))
            data = 4 * r * sum(m if odd else k for m, k in shapes.values())
            assert len(up) - data < 200 + 80 * len(shapes)  # the header is small next to the data
            down_total, up_total = down_total + len(down), up_total + len(up)
        assert (record["bytes_down"], record["bytes_up"]) == (down_total, up_total)
    assert i == len(blobs)

"""FedSA-LoRA (method = "fedsa"): A shared and averaged, each client's B kept as client state, personalised
evaluation next to the shared view, exact bytes (A only, no B in any blob), PEFT exports, client state store."""

import json
from pathlib import Path

import capture
import pytest
import torch
from safetensors.torch import load_file

from fedlora import aggregation, federation, payload
from fedlora.client.app import install_adapter
from fedlora.client.state import ClientStateStore, client_store
from fedlora.config import load_config
from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import ModuleShape
from fedlora.methods.shared_a import SharedA

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
RUN = ["rounds=3", "data.max_examples=48", "train.local_steps=2", "method=fedsa"]
IDS = torch.tensor([[1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10]])
SHAPES = {"q": ModuleShape(12, 10), "v": ModuleShape(6, 10)}


# ------------------------------------------------------------------------------------------------ server step


@pytest.mark.parametrize("weights", [[0.2, 0.3, 0.5], [0.5, 0.9, 0.4]])
def test_the_server_averages_A_and_never_holds_a_B(weights):
    """A ← A + Σ w_k (A_k − A) (dense reference; = aggregation.shared_A when Σ w = 1); a B in an upload is ignored."""
    method = SharedA(
        SHAPES, 4, ScaleRule("alpha_over_rank", 16.0), torch.Generator().manual_seed(0), 3, "uniform", None
    )
    g = torch.Generator().manual_seed(1)
    for round_idx in (1, 2):
        old = {n: A.clone() for n, A in method.A.items()}
        plans = [method.plan(c, round_idx, torch.Generator()) for c in range(3)]
        assert all(p.keep_B and p.train_A and p.train_B for p in plans)
        uploads = [
            {
                n: (torch.randn(B.shape, generator=g), A + torch.randn(A.shape, generator=g))
                for n, (B, A) in p.factors.items()
            }
            for p in plans
        ]
        method.aggregate(plans, uploads, weights)
        for name, A in method.A.items():
            expected = old[name].double() + sum(
                w * (u[name][1].double() - old[name].double()) for w, u in zip(weights, uploads, strict=True)
            )
            torch.testing.assert_close(A.double(), expected, rtol=1e-6, atol=1e-6)
            if abs(sum(weights) - 1) < 1e-12:
                ref = aggregation.shared_A([u[name][1] for u in uploads], weights)
                torch.testing.assert_close(A, ref, rtol=1e-6, atol=1e-6)
    assert set(method.state_tensors()) == {"shared.q.lora_A", "shared.v.lora_A"}  # no B in the server's state


# ------------------------------------------------------------------------------------------------ client state


def test_a_client_store_reads_the_newest_state_before_the_round(tmp_path):
    """Round t reads the newest state saved by a round < t (so a rerun of round t starts where it first did);
    the two newest files are kept; a damaged file is named."""
    store = ClientStateStore(tmp_path / "c")
    assert store.load(5) is None and store.latest() is None
    for r in (1, 3, 4):
        store.save(r, {"x": torch.tensor([float(r)])})
    assert store.rounds() == [3, 4]
    assert float(store.load(4)["x"]) == 3.0 and float(store.load(5)["x"]) == 4.0 and store.load(3) is None
    store.save(4, {"x": torch.tensor([40.0])})  # a rerun of round 4 overwrites its own file
    assert float(store.latest()["x"]) == 40.0
    (tmp_path / "c" / "round-000004.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"round-000004\.safetensors: unreadable client state"):
        store.latest()


# ------------------------------------------------------------------------------------------------ a whole run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    capture.CARRIED.clear()
    out = tmp_path_factory.mktemp("fedsa") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(federation, "InProcessEngine", capture.CapturingEngine)
        summary = federation.run(load_config(TINY, RUN), out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, summary, records, list(capture.CARRIED)


SHAPES_TINY = {
    f"model.layers.{i}.self_attn.{p}": (64 if p == "q_proj" else 32, 64) for i in range(2) for p in ("q_proj", "v_proj")
}


def test_no_B_travels_and_the_bytes_are_the_formula_exactly(run):
    """Every download and upload holds exactly the modules' A (r×n) and no B: each blob's length is
    4·r·Σn + h computed from the safetensors format, and the per-round sums are metrics.jsonl's bytes."""
    out, _, records, blobs = run
    r = load_config(out / "config.resolved.toml").lora.rank
    i = 0
    for record in records:
        down_total = up_total = 0
        for _ in record["participants"]:
            _, down, up = blobs[i]
            i += 1
            assert not any("lora_B" in k for k in payload.unpack(down)[0])
            assert not any("lora_B" in k for k in payload.unpack(up)[0])
            down_tensors = {f"adapter.{n}.lora_A": (r, k) for n, (_, k) in SHAPES_TINY.items()}
            up_tensors = {f"{n}.lora_A": (r, k) for n, (_, k) in SHAPES_TINY.items()}
            assert len(down) == capture.safetensors_size(down_tensors, capture.raw_metadata(down))
            assert len(up) == capture.safetensors_size(up_tensors, capture.raw_metadata(up))
            down_total, up_total = down_total + len(down), up_total + len(up)
        assert (record["bytes_down"], record["bytes_up"]) == (down_total, up_total)
    assert i == len(blobs)


def test_each_client_keeps_its_own_B_and_trains_on_from_it(run):
    """Client state in the run folder: a client's stored B is the one it trained (non-zero, its own), and a
    client that took part twice started its second round from its first round's B: its stored B then differs
    from every other client's."""
    out, _, records, _ = run
    states = out / "checkpoint" / "clients"
    rounds_of = {}
    for record in records:
        for cid in record["participants"]:
            rounds_of.setdefault(cid, []).append(record["round"])
    Bs = {}
    for cid, rounds in rounds_of.items():
        store = client_store(states, cid)
        assert store.rounds() == rounds[-2:]  # the two newest
        own = store.latest()
        Bs[cid] = torch.cat([own[f"{n}.lora_B"].flatten() for n in SHAPES_TINY])
        assert float(Bs[cid].abs().max()) > 0
    twice = [c for c, rounds in rounds_of.items() if len(rounds) >= 2]
    assert twice
    ids = sorted(Bs)
    for a in ids:
        for b in ids:
            if a < b:
                assert not torch.allclose(Bs[a], Bs[b])


def test_personalised_evaluation_is_recorded_next_to_the_shared_view(run):
    _, summary, records, _ = run
    for record in records:
        trained = sorted({c for r in records if r["round"] <= record["round"] for c in r["participants"]})
        assert [f["client"] for f in record["client_personal_eval"]] == trained
        mean = sum(f["eval_loss"] for f in record["client_personal_eval"]) / len(trained)
        assert record["personal_eval_loss"] == pytest.approx(mean, rel=1e-12)
        assert record["eval_loss"] > 0
    assert "personal_eval_loss" in summary["final_eval"] and "eval_loss" in summary["final_eval"]
    assert "shared view" in summary["options"]["global_view"]


def test_the_shared_view_is_the_weighted_mean_of_the_stored_B(run):
    """adapter/'s B is Σ n_k B_k / Σ n_k over the clients' stored B (dense check), on the final shared A."""
    out, _, _, _ = run
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    states = out / "checkpoint" / "clients"
    owns = [client_store(states, c).latest() for c in range(4)]
    owns = [o for o in owns if o is not None]
    total = sum(float(o["num_examples"]) for o in owns)
    for name in SHAPES_TINY:
        B_key = next(k for k in adapter if k.endswith(f"{name}.lora_B.weight"))
        expected = sum(float(o["num_examples"]) / total * o[f"{name}.lora_B"] for o in owns)
        torch.testing.assert_close(adapter[B_key], expected, rtol=1e-6, atol=1e-7)


def test_peft_loads_the_shared_view_and_every_personalised_adapter_to_the_same_logits(run):
    """adapter/ = fedlora's final (shared-view) model; adapter-clients/<id>/ = the client's (B_k, A) installed on
    fedlora's model: |Δlogits| ≤ 1e-5, and each differs from the base by far more."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _, _, _ = run
    model, _, _ = federation.load_final_model(out)
    with torch.no_grad():
        ours = model(input_ids=IDS).logits
    base = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(input_ids=IDS).logits
        theirs = PeftModel.from_pretrained(base, out / "adapter").eval()(input_ids=IDS).logits
    assert (ours - theirs).abs().max() <= 1e-5 and (ours - plain).abs().max() > 1e-3
    method_A = {n: layer.get_adapter()[1] for n, layer in _layers(model).items()}
    personal = sorted((out / federation.PERSONAL_ADAPTERS).iterdir())
    assert personal
    for folder in personal:
        own = client_store(out / "checkpoint" / "clients", int(folder.name)).latest()
        factors = {n: (own[f"{n}.lora_B"], A) for n, A in method_A.items()}
        scale = next(iter(_layers(model).values())).scale
        install_adapter(_layers(model), factors, scale, train_B=False, train_A=False)
        with torch.no_grad():
            mine = model(input_ids=IDS).logits
        fresh = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32).eval()
        with torch.no_grad():
            peft_logits = PeftModel.from_pretrained(fresh, folder).eval()(input_ids=IDS).logits
        assert (mine - peft_logits).abs().max() <= 1e-5
        assert (mine - ours).abs().max() > 1e-4  # personalised, not the shared view


def _layers(model):
    from fedlora.lora.layer import LoRALinear

    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def test_resume_continues_from_the_stored_B(run, tmp_path):
    """One round, then resumed to three: the same shared A, the same stored B per client, bit for bit."""
    full, _, _, _ = run
    out = tmp_path / "resumed"
    federation.run(load_config(TINY, [*RUN, "rounds=1"]), out)
    federation.run(load_config(out / "config.resolved.toml", ["rounds=3"]), out, resume=True)
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for cid in range(4):
        x, y = client_store(full / "checkpoint" / "clients", cid), client_store(out / "checkpoint" / "clients", cid)
        assert x.rounds() == y.rounds()
        if x.rounds():
            assert all(torch.equal(x.latest()[k], y.latest()[k]) for k in x.latest())

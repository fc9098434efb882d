"""Per-client base precision (``fleet.precision``, ``fedlora.models.precision``, ``fedlora.client.bases``).

- a client on a quantized base trains (its loss falls) and its LoRA gradients are those of the same quantized
  weights dequantized into plain layers, also after the base was evaluated;
- converting a copy leaves the server's base untouched, keeps ties, and shrinks the weights as stated;
- the adapter a quantized fleet exports is a standard PEFT adapter: on the fp32 base PEFT gives fedlora's final
  logits (1e-5), on the same nf4 base PEFT gives fedlora's nf4 client logits within one bf16 rounding step;
- a mixed fleet runs on Flower's simulation engine with the in-process adapter (1e-6) and bytes;
- a precision this machine cannot run, and a merge-into-base method on a mixed fleet, are refused before
  anything is written, in one line naming the client and the setting.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("bitsandbytes")

from fedlora import federation  # noqa: E402
from fedlora.client.app import install_adapter  # noqa: E402
from fedlora.client.bases import ClientBases  # noqa: E402
from fedlora.config import load_config  # noqa: E402
from fedlora.errors import ConfigError  # noqa: E402
from fedlora.lora.layer import inject_lora  # noqa: E402
from fedlora.models import precision as precision_module  # noqa: E402
from fedlora.models import tiny_random_llama  # noqa: E402
from fedlora.models.precision import base_bytes, convert_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
FAST = ["rounds=2", "data.max_examples=48", "train.local_steps=2", "threads=1"]
MIXED = 'fleet.precision=["nf4", "int8", "bf16", "fp32"]'
IDS = torch.tensor([[1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 119, 101]])


def _tiny(seed: int = 0):
    model, _ = tiny_random_llama(seed=seed, hidden_size=64, intermediate_size=128)
    return model, inject_lora(model, ["q_proj", "v_proj"])


def _factors(layers, rank: int = 4, seed: int = 1, b_scale: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    return {
        name: (
            torch.randn(layer.out_features, rank, generator=g) * b_scale,
            torch.randn(rank, layer.in_features, generator=g) * 0.1,
        )
        for name, layer in layers.items()
    }


# ----------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def mixed_setup():
    """The tiny run's setup with clients 0..3 at nf4, int8, bf16, fp32."""
    from fedlora.setup import build

    with tempfile.TemporaryDirectory() as work:
        return build(load_config(TINY, [*FAST, MIXED]), Path(work), resume=False)


@pytest.mark.parametrize("client, precision", list(enumerate(["nf4", "int8", "bf16", "fp32"])))
def test_a_client_on_a_quantized_base_trains(mixed_setup, client, precision):
    """One client's local training on its converted base lowers the loss on its examples by far more than the
    precisions differ (a LoRA that does not train through the quantized layers leaves it flat)."""
    from fedlora.client.loss import answer_loss
    from fedlora.client.train import LocalTraining, train_adapter
    from fedlora.data.tokenize import collate

    setup = mixed_setup
    bases = ClientBases(setup.model, setup.layers, "fp32", setup.precisions)
    model, layers = bases.for_client(client)
    assert (model is setup.model) == (precision == "fp32")
    quantized = [type(layer.base).__module__.startswith("bitsandbytes") for layer in layers.values()]
    assert all(quantized) == (precision in ("int8", "nf4")) and any(quantized) == all(quantized)
    factors = {name: (torch.zeros_like(B), A) for name, (B, A) in _factors(layers, rank=8).items()}  # B = 0, as PEFT
    install_adapter(layers, factors, 2.0)
    examples = setup.client_examples[0]
    batch = collate(examples, setup.pad_id)

    def loss() -> float:
        with torch.no_grad():
            total, count = answer_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        return float(total) / count

    before = loss()
    train_adapter(model, examples, LocalTraining(lr=0.01, local_steps=25, batch_size=4), setup.pad_id, seed=0)
    after = loss()
    assert after < before - 0.3, (before, after)  # measured: 5.47 → 5.04 at every precision (spread 0.005)
    assert all(layer.lora_B.abs().max() > 0 for layer in layers.values())  # every module's B moved from 0


def test_lora_gradients_on_nf4_are_those_of_the_dequantized_weights():
    """Independent reference: the same 4-bit weights dequantized into plain bf16 linears. Checked after an eval pass,
    which makes bitsandbytes repack a CPU weight for a kernel without a backward unless fedlora prevents it."""
    import bitsandbytes.functional as bnbf

    model, layers = _tiny()
    quantized = convert_base(model, "nf4", copy=True)
    reference = convert_base(model, "bf16", copy=True)
    for (_, module), (_, ref_module) in zip(quantized.named_modules(), reference.named_modules(), strict=True):
        if type(module).__module__.startswith("bitsandbytes"):
            weight = bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state).to(torch.bfloat16)
            ref_module.weight = nn.Parameter(weight, requires_grad=False)
    grads = []
    for net in (quantized, reference):
        net_layers = {name: net.get_submodule(name) for name in layers}
        install_adapter(net_layers, _factors(layers), 2.0)
        net.eval()
        with torch.no_grad():
            net(IDS)  # an eval pass first
        net.train()
        net(IDS).logits.float().square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.requires_grad]))
    scale = grads[1].abs().max()
    assert scale > 0
    assert (grads[0] - grads[1]).abs().max() <= 2e-2 * scale


def test_a_converted_copy_leaves_the_server_base_alone_and_is_smaller():
    model, layers = _tiny()
    install_adapter(layers, _factors(layers), 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(IDS).logits
    full = base_bytes(model)
    sizes = {}
    for precision in ("bf16", "int8", "nf4"):
        copy = convert_base(model, precision, copy=True)
        sizes[precision] = base_bytes(copy)
        assert copy.get_output_embeddings().weight is copy.get_input_embeddings().weight  # the tie is kept
        assert all(layer.lora_A is None for name, layer in copy.named_modules() if name in layers)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, logits)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # kept as they are (rotary frequencies)
    assert sizes["bf16"] == (full - buffers) // 2 + buffers
    # the tiny model is mostly its 259×64 embedding (held in bf16); its linears shrink 4× (int8) and ~7× (nf4)
    assert sizes["nf4"] < sizes["int8"] < sizes["bf16"]


def test_client_bases_build_one_copy_per_precision_on_first_use():
    model, layers = _tiny()
    bases = ClientBases(model, layers, "fp32", ["fp32", "nf4", "nf4", "bf16"])
    assert bases.for_client(0) == (model, layers)
    assert bases.held() == []
    first = bases.for_client(1)
    assert bases.for_client(2)[0] is first[0]
    assert bases.held() == ["nf4"]
    bases.for_client(3)
    assert bases.held() == ["bf16", "nf4"]
    assert set(first[1]) == set(layers)


# ----------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def nf4_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("precision") / "nf4"
    federation.run(load_config(TINY, [*FAST, 'fleet.precision="nf4"']), out)
    return out


def test_an_nf4_fleet_exports_a_standard_peft_adapter(nf4_run):
    """On the fp32 base, PEFT gives fedlora's final logits (1e-5, the fp32 contract); on the same nf4 base, PEFT
    gives what fedlora's nf4 client computes within 1/64 (measured: 2^-7, one bf16 rounding step of logits ≈ 1,
    since the nf4 base computes in bf16); the nf4 and fp32 logits differ by the quantization error (≈ 0.1 here)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = nf4_run
    summary = json.loads((out / "summary.json").read_text())
    assert [c["precision"] for c in summary["clients"]] == ["nf4"] * 4
    ours, _, _ = federation.load_final_model(out)
    with torch.no_grad():
        ours_fp32 = ours(input_ids=IDS).logits
    base = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
    peft_fp32 = PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        assert (peft_fp32(input_ids=IDS).logits - ours_fp32).abs().max() <= 1e-5

    ours_nf4 = convert_base(ours, "nf4", copy=True)  # what an nf4 client holds, with the final adapter
    from fedlora.lora.layer import LoRALinear

    for name, layer in ours.named_modules():
        if isinstance(layer, LoRALinear):
            B, A = layer.get_adapter()
            ours_nf4.get_submodule(name).set_adapter(B, A, layer.scale)
    nf4_base = convert_base(AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32), "nf4")
    peft_nf4 = PeftModel.from_pretrained(nf4_base, out / "adapter").eval()
    with torch.no_grad():
        ours_q = ours_nf4.eval()(input_ids=IDS).logits.float()
        peft_q = peft_nf4(input_ids=IDS).logits.float()
    assert (peft_q - ours_q).abs().max() <= 1 / 64
    gap = (ours_q - ours_fp32).abs().max()
    assert 1 / 64 < gap < 0.5  # the quantized base differs from the fp32 one, by the quantization error


# ----------------------------------------------------------------------------------------------- refusals


def _cli(*args):
    from typer.testing import CliRunner

    from fedlora.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture
def fresh_probe():
    precision_module.runnable.cache_clear()
    yield
    precision_module.runnable.cache_clear()


def test_a_precision_without_a_kernel_here_is_refused_in_one_line(tmp_path, monkeypatch, fresh_probe):
    """As bitsandbytes would behave without a CPU 4-bit kernel (a CUDA-only build): the probe's real training step
    fails, and the run stops before anything is written."""
    import bitsandbytes

    def cuda_only(*args, **kwargs):
        raise NotImplementedError("gemm_4bit is only implemented for CUDA devices")

    monkeypatch.setattr(bitsandbytes, "matmul_4bit", cuda_only)
    result = _cli(
        "run", str(TINY), *FAST, 'fleet.precision=["fp32", "fp32", "nf4", "fp32"]', "--out", str(tmp_path / "x")
    )
    assert result.exit_code == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "fleet.precision: client 2: 'nf4' cannot run on cpu here" in lines[0]
    assert "only implemented for CUDA" in lines[0]
    assert not (tmp_path / "x").exists()


def test_a_missing_quantization_library_is_refused_naming_it(monkeypatch, fresh_probe):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes → ImportError
    config = load_config(TINY, [*FAST, 'fleet.precision=["fp32", "int8", "fp32", "fp32"]'])
    with pytest.raises(
        ConfigError, match=r"fleet.precision: client 1: 'int8' cannot run on cpu here: needs bitsandbytes"
    ):
        federation.run(config, Path("/nonexistent/never-written"))


@pytest.mark.parametrize("method", ["flora", "florist"])
def test_merging_methods_refuse_a_fleet_off_the_server_precision(tmp_path, method):
    config = load_config(TINY, [*FAST, f"method={method}", 'fleet.precision=["fp32", "fp32", "fp32", "nf4"]'])
    with pytest.raises(ConfigError, match=rf"fleet.precision: client 3 holds its base in nf4 but {method} merges"):
        federation.run(config, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # the pad hand-off keeps the base frozen: allowed
    from fedlora.setup import check_precisions

    check_precisions(load_config(TINY, [*FAST, "method=florist", "florist.handoff=pad", MIXED]))


def test_fleet_precision_needs_one_value_per_client():
    with pytest.raises(ConfigError, match=r"fleet.precision: 2 values for partition.num_clients=4"):
        load_config(TINY, ['fleet.precision=["nf4", "fp32"]'])
    with pytest.raises(ConfigError, match=r"fleet.precision"):
        load_config(TINY, ['fleet.precision="fp8"'])


# -------------------------------------------------------------------------------------------------- flower


def test_a_mixed_precision_fleet_on_flower_sim_matches_in_process(tmp_path, monkeypatch):
    """Every client at its own precision: the nodes convert their base as the in-process engine converts its
    copies, so adapter (1e-6) and bytes are the same."""
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    from safetensors.torch import load_file

    import fedlora.engines.flower  # noqa: F401 - sets the quiet environment (no phoning home, Ray on loopback)
    from fedlora.engines.flower.simulation import run_simulation

    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    overrides = [*FAST, MIXED]
    federation.run(load_config(TINY, overrides), tmp_path / "inprocess")
    run_simulation(load_config(TINY, [*overrides, "engine=flower-sim"]), tmp_path / "flower")
    a = load_file(str(tmp_path / "flower" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "inprocess" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), key
    records = [
        [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("flower", "inprocess")
    ]
    for x, y in zip(*records, strict=True):
        for key in ("participants", "ranks", "bytes_up", "bytes_down"):
            assert x[key] == y[key], (x["round"], key)
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-5)
    summary = json.loads((tmp_path / "flower" / "summary.json").read_text())
    assert [c["precision"] for c in summary["clients"]] == ["nf4", "int8", "bf16", "fp32"]


def test_a_flower_node_may_declare_its_own_precision():
    pytest.importorskip("flwr")
    from types import SimpleNamespace

    from fedlora.engines.flower.node import node_precision
    from fedlora.errors import FedloraError

    config = load_config(TINY, [*FAST, MIXED])
    assert node_precision(SimpleNamespace(node_config={"partition-id": 3}), config, 3) == "fp32"  # the run's
    assert node_precision(SimpleNamespace(node_config={"partition-id": 3, "precision": "nf4"}), config, 3) == "nf4"
    with pytest.raises(FedloraError, match=r"client 3: node config precision='fp8' cannot run on this node: unknown"):
        node_precision(SimpleNamespace(node_config={"precision": "fp8"}), config, 3)
    flora = load_config(TINY, [*FAST, "method=flora"])
    with pytest.raises(FedloraError, match=r"client 1: node config precision='int8': flora merges"):
        node_precision(SimpleNamespace(node_config={"precision": "int8"}), flora, 1)


# ------------------------------------------------------------------------------------------------- planner


def test_a_memory_cap_picks_the_most_faithful_precision_that_fits_the_largest_rank():
    from fedlora.network.memory import MemoryCapError, choose, footprint_at

    measured = {  # MB at ranks 1, 8, 16 (shaped like SmolLM2's: base + runtime dominate, rank adds a little)
        "fp32": {1: 1400.0, 8: 1420.0, 16: 1440.0},
        "bf16": {1: 1000.0, 8: 1010.0, 16: 1020.0},
        "int8": {1: 900.0, 8: 905.0, 16: 910.0},
        "nf4": {1: 800.0, 8: 804.0, 16: 808.0},
    }
    assert footprint_at(measured["fp32"], 12) == pytest.approx(1430.0)
    assert footprint_at(measured["fp32"], 17) is None
    caps = [2000, 1440, 1430, 1015, 850, 803]
    chosen = [(c.precision, c.max_rank) for c in choose(caps, measured, 1, 16)]
    assert chosen == [("fp32", 16), ("fp32", 16), ("bf16", 16), ("int8", 16), ("nf4", 16), ("nf4", 6)]
    # nothing fits at rank k_min: one line naming the client and the setting
    with pytest.raises(MemoryCapError, match=r"fleet.memory_mb: client 1: 700 MB fits no base precision at rank 1"):
        choose([2000, 700], measured, 1, 16)


def test_the_plan_records_each_clients_precision_and_rank_from_its_memory(monkeypatch):
    """The planner's wiring: measured footprints (faked here: measuring is fedlora.client.footprint's job) become
    fleet.precision and fleet.max_rank in the config the pilot runs and in the plan's settings."""
    from fedlora import planning
    from fedlora.client import footprint

    seen = {}

    def fake_footprints(config, precisions, ranks):
        seen.update(precisions=precisions, ranks=ranks)
        return {"fp32": {1: 900.0, 4: 950.0, 8: 1000.0}, "nf4": {1: 500.0, 4: 520.0, 8: 540.0}}

    monkeypatch.setattr(footprint, "footprints", fake_footprints)
    overrides = [
        "fleet.memory_mb=[2000, 960, 530, 515]",
        "fleet.max_rank=[8, 8, 8, 2]",
        "budgets.per_client=[2, 2, 2, 2]",
    ]
    config = load_config(TINY, [*FAST, *overrides])
    planned, table = planning.memory_plan(config)
    assert seen["ranks"] == [1, 4, 8] and seen["precisions"] == ["fp32", "bf16", "int8", "nf4"]
    # client 1 fits fp32 only up to rank 4 but nf4 at full rank: the larger rank wins
    assert planned.fleet.precision == ["fp32", "nf4", "nf4", "nf4"]
    assert planned.fleet.max_rank == [8, 8, 6, 2]  # capped by memory, and by the max_rank the config had (client 3)
    assert table["precision"] == planned.fleet.precision and table["max_rank"] == planned.fleet.max_rank
    assert table["footprints_mb"]["nf4"] == {"1": 500.0, "4": 520.0, "8": 540.0}


def test_quantizing_a_client_base_prints_nothing_of_bitsandbytes():
    """bitsandbytes' CPU backend logs at import that an optional kernel package is missing (on CPUs with AVX-512
    BF16, without ``kernels``): fedlora's own call keeps that from the user's terminal."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from fedlora.models.precision import quantized_linear\n"
        "quantized_linear(torch.nn.Linear(128, 64), 'nf4')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bitsandbytes" not in done.stderr.lower() and "kernels" not in done.stderr, done.stderr[-2000:]

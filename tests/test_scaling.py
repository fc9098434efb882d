"""LoRA scale conventions: the rule itself, each method's default, and PEFT reproducing fedlora's logits for every
method under every convention."""

import json
import math
from pathlib import Path

import pytest
import torch
from method_args import method_args

from fedlora import federation
from fedlora.config import load_config
from fedlora.conventions import CONVENTIONS, scale_rule
from fedlora.errors import ConfigError
from fedlora.lora.scaling import SCALINGS, ScaleRule
from fedlora.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny.toml"
FAST = ["rounds=2", "data.max_examples=48", "train.local_steps=2"]
IDS = torch.tensor([[1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10]])
TOL = 1e-5


def test_scale_rules_by_hand():
    assert ScaleRule("alpha_over_rank", 16.0)(4) == 4.0 and ScaleRule("alpha_over_rank", 16.0)(64) == 0.25
    assert ScaleRule("constant", 2.0)(4) == 2.0 and ScaleRule("constant", 2.0)(64) == 2.0
    assert ScaleRule("rslora", 1.0)(64) == 0.125 and ScaleRule("rslora", 3.0)(4) == 1.5
    with pytest.raises(ValueError, match="lora.scaling"):
        ScaleRule("alpha/r", 1.0)
    with pytest.raises(ValueError, match="lora.alpha"):
        ScaleRule("constant", 0.0)


def test_method_defaults_are_their_papers_code_conventions():
    """FSLoRA: rsLoRA with alpha 1; FLoRA and FLoRIST: lora_alpha = 2 r_k (s = 2 at every rank); FlexLoRA: alpha 16."""
    assert scale_rule("fslora", None, None)(64) == pytest.approx(1 / 8)
    assert scale_rule("flora", None, None)(4) == scale_rule("florist", None, None)(64) == 2.0
    assert scale_rule("flexlora", None, None)(4) == 4.0 and scale_rule("flexlora", None, None)(64) == 0.25
    # an explicit setting wins over the default; alpha alone keeps the method's convention
    assert scale_rule("flora", "alpha_over_rank", 32.0)(4) == 8.0
    assert scale_rule("fslora", None, 2.0)(16) == 0.5
    # FedEx-LoRA's code: lora_alpha 8 over r (s = 2 at its r = 4); Fed-SB's: lora_alpha = r (s = 1 at every rank)
    assert scale_rule("fedex", None, None)(4) == 2.0 and scale_rule("fedex", None, None)(8) == 1.0
    assert scale_rule("fedsb", None, None)(4) == scale_rule("fedsb", None, None)(200) == 1.0


def test_alpha_is_required_with_a_foreign_convention(tmp_path):
    lines = [line for line in TINY.read_text().splitlines() if not line.startswith(("alpha = 16", "scaling ="))]
    bare = tmp_path / "bare.toml"
    bare.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"lora\.alpha: required with lora\.scaling = 'constant'"):
        load_config(bare, ["method=fslora", "lora.scaling=constant"])
    config = load_config(bare, ["method=fslora", "lora.scaling=rslora"])
    assert scale_rule(config.method, config.lora.scaling, config.lora.alpha) == ScaleRule("rslora", 1.0)
    config = load_config(bare, ["method=flora"])
    assert scale_rule(config.method, config.lora.scaling, config.lora.alpha) == ScaleRule("constant", 2.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    done = {}
    for method in METHODS:
        for scaling in SCALINGS:
            alpha = {"alpha_over_rank": 16, "constant": 2, "rslora": 6}[scaling]
            out = root / f"{method}-{scaling}"
            overrides = method_args(method, TINY, *FAST, f"lora.scaling={scaling}", f"lora.alpha={alpha}")
            federation.run(load_config(TINY, overrides), out)
            done[method, scaling] = out
    return done


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("method", METHODS)
def test_peft_reproduces_fedlora_logits_under_every_convention(runs, method, scaling):
    """PeftModel(base, adapter/) gives fedlora's final logits (|Δ| ≤ 1e-5), and training moved those logits away
    from the base model's by far more than that, so a wrong scale in the export could not pass."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = runs[method, scaling]
    model, _, config = federation.load_final_model(out)
    with torch.no_grad():
        ours = model(input_ids=IDS).logits
    base = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32).eval()
    with torch.no_grad():
        untrained = base(input_ids=IDS).logits
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=IDS).logits
    assert (ours - theirs).abs().max() <= TOL
    assert (ours - untrained).abs().max() > 100 * TOL
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["use_rslora"] is (scaling == "rslora")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["scaling"] == scaling and summary["options"]["alpha"] == config.lora.alpha


@pytest.mark.parametrize("scaling", SCALINGS)
def test_clients_train_at_the_conventions_scale(runs, scaling):
    """Each client's recorded scale is the convention's s(r_k) (FLoRA: the fresh rank-r_k adapters)."""
    out = runs["flora", scaling]
    config = load_config(out / "config.resolved.toml")
    rule = ScaleRule(scaling, config.lora.alpha)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        for rank, scale in zip(record["ranks"], record["scales"], strict=True):
            assert scale == pytest.approx(rule(rank), rel=1e-12)
    if scaling == "rslora":
        assert rule(2) == pytest.approx(6 / math.sqrt(2))


def test_conventions_table_covers_every_method():
    assert set(CONVENTIONS) == set(METHODS)


def test_weighting_defaults_to_the_methods_own(tmp_path):
    """FSLoRA's code averages uniformly over the sampled clients; the FLoRA-family code weights by n_k / Σ n."""
    lines = [line for line in TINY.read_text().splitlines() if not line.startswith("weighting =")]
    bare = tmp_path / "bare.toml"
    bare.write_text("\n".join(lines) + "\n")
    assert load_config(bare, ["method=fslora"]).weighting == "uniform"
    for method in ("fedit", "ffa", "flora", "florist", "flexlora", "hetlora"):
        assert load_config(bare, [f"method={method}"]).weighting == "num_examples"
    assert load_config(bare, ["method=fslora", "server.weighting=num_examples"]).weighting == "num_examples"
    for method in ("fedex", "fedsb"):  # both codes take the plain mean over clients
        assert load_config(bare, method_args(method, bare)).weighting == "uniform"
    assert load_config(TINY, ["method=fslora"]).weighting == "num_examples"  # the example states its own

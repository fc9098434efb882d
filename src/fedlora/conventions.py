"""Each method's own LoRA scale convention, from its authors' public code: the default when a run leaves
``lora.scaling`` and ``lora.alpha`` unset.

Compare methods under their own papers' conventions (these defaults), or under one stated convention for all
(set ``lora.scaling`` and ``lora.alpha``): never under a mix nobody chose. docs/methods.md has the table with the
rest of each method's conventions (server step, weighting, hand-off) and fedlora's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedlora.lora.scaling import ScaleRule, ScalingKind


@dataclass(frozen=True)
class Convention:
    """A method's default scale rule and aggregation weighting, and where they come from (repository and file)."""

    scaling: ScalingKind
    alpha: float
    source: str
    weighting: Literal["num_examples", "uniform"] = "num_examples"


CONVENTIONS: dict[str, Convention] = {
    "fslora": Convention(
        "rslora",
        1.0,
        "wenzhifang/Federated-Sketching-LoRA-Implementation src/models.py add_adapter (use_rslora=True), "
        "src/arg.py --lora-alpha 1; src/LoRA_Sketching.py divides the summed update by the sampled clients' number",
        weighting="uniform",
    ),
    # FedIT and FFA-LoRA as the FLoRA / FLoRIST code run them (homogeneous r = 16, lora_alpha = 32: s = 2)
    "fedit": Convention("constant", 2.0, "ATP-1010/FederatedLLM main.py (lora_r 16, lora_alpha 32)"),
    "ffa": Convention("constant", 2.0, "fedlora's choice: FedIT's scale (FFA-LoRA's own code not checked)"),
    "flora": Convention("constant", 2.0, "ATP-1010/FederatedLLM main.py (lora_alpha = 2 * local_ranks[client])"),
    "florist": Convention("constant", 2.0, "hari1016/FLoRIST main.py (lora_alpha = 2 * local_ranks[k])"),
    "flexlora": Convention(
        "alpha_over_rank", 16.0, "alibaba/FederatedScope branch FlexLoRA main.py get_peft (lora_alpha 16 at every rank)"
    ),
    "hetlora": Convention(
        "constant",
        2.0,
        "no public HetLoRA code; the zero-padding baselines of ATP-1010/FederatedLLM and "
        "hari1016/FLoRIST train at lora_alpha = 2 r_k",
    ),
}


def scale_rule(method: str, scaling: ScalingKind | None, alpha: float | None) -> ScaleRule:
    """A run's LoRA scale rule: ``scaling`` and ``alpha`` (``lora.scaling``, ``lora.alpha``), each defaulting to the
    method's own."""
    own = CONVENTIONS[method]
    return ScaleRule(scaling or own.scaling, own.alpha if alpha is None else alpha)

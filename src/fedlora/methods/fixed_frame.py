"""Fed-SB (Singhal, Ponkshe, Bhatt, Vepakomma, arXiv 2502.15436): federated LoRA-SB. Per module, B (m×r) and A
(r×n) are fixed and shared; each client trains only R (r×r), so its update is ΔW_k = s · B R_k A, and averaging
R is exact: s B (Σ w_k R_k) A = Σ w_k ΔW_k.

Initialisation (:mod:`fedlora.lora.sb_init`): B, R, A from the rank-r SVD of −η·sign(∇W L) on a sample of the
training data, as the authors' code does (CERT-Lab/fed-sb, read in its public copy putssander/fed-sb:
``fed_sb/fed/CR/multiround_train_cr_fed.py``). A client receives B and A (as the fixed ``frame`` of its adapter) and
R, trains R with B and A frozen (``fedlora.lora.layer``: scale · B R I A, the inner A the identity, not sent) and
uploads R alone: r² numbers per module.

Weighting rule: R combines client STATES; fedlora forms R' = R + Σ w_k (R_k − R), which is the affine rule of
``fedlora.methods.common`` (= Σ w_k R_k when Σ w_k = 1; the current R weighs 1 − Σ w_k otherwise) and a sum of
client DELTAS, so client-level DP (clip R_k − R, Gaussian noise on the r×r sum) applies as for FedIT. An empty
round changes nothing.

Evaluation and export fold R into B: the adapter (B R, A) at scale s is a plain LoRA that PEFT loads.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedlora import aggregation, seeding
from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import Factors, ModuleShape, flatten_factors, unflatten_factors
from fedlora.methods.base import Adapter, ClientPlan, MethodDefaults
from fedlora.privacy import GaussianNoise


class FedSB(MethodDefaults):
    """``frame``: module → (B m×r, A r×n), fixed; ``R``: module → R (r×r). Both None until a checkpoint loads."""

    def __init__(
        self,
        shapes: Mapping[str, ModuleShape],
        rank: int,
        scale: ScaleRule,
        frame: Factors | None,
        R: dict[str, Tensor] | None,
        init_options: dict | None = None,
    ) -> None:
        self.name = "fedsb"
        self.shapes = dict(shapes)
        self.rank = rank
        self.global_scale = scale(rank)
        self.frame = frame
        self.R = R
        self._init_options = init_options or {}
        self.step_count = 0

    def plan(self, client_id: int, round_idx: int, generator: torch.Generator) -> ClientPlan:
        eye = torch.eye(self.rank)
        factors = {name: (R.clone(), eye) for name, R in self.R.items()}
        return ClientPlan(client_id, self.rank, self.global_scale, factors, train_A=False, frame=self.frame)

    def aggregate(
        self, plans: list[ClientPlan], uploads: list[Factors], weights: list[float], noise: GaussianNoise | None = None
    ) -> dict:
        """R ← R + Σ w_k (R_k − R) (+ DP noise on the sum); returns no facts. An empty round changes nothing."""
        if not plans:
            return {}
        delta: Factors = {}
        for name in self.R:
            steps = [u[name][0] - p.factors[name][0] for p, u in zip(plans, uploads, strict=True)]
            delta[name] = (aggregation.fedsb(steps, weights), torch.eye(self.rank))
        if noise is not None:
            delta = noise.perturb(delta, B=True, A=False)
        self.R = {name: R + delta[name][0] for name, R in self.R.items()}
        self.step_count += 1
        return {}

    def eval_adapter(self) -> Adapter:
        """(B R, A) at scale s: R folded into B, a plain LoRA pair."""
        factors = {name: (B @ self.R[name], A.clone()) for name, (B, A) in self.frame.items()}
        return factors, {name: self.global_scale for name in factors}

    def export_adapter(self) -> Adapter:
        return self.eval_adapter()

    def options(self) -> dict:
        return {"rank": self.rank, "trained": "R (r x r) between fixed B, A", **self._init_options}

    def state_tensors(self) -> dict[str, Tensor]:
        state = flatten_factors(self.frame, prefix="frame.")
        state.update({f"R.{name}": R for name, R in self.R.items()})
        return state

    def load_state_tensors(self, tensors: dict[str, Tensor], step_count: int) -> None:
        self.frame = unflatten_factors(tensors, prefix="frame.")
        self.R = {key[len("R.") :]: value for key, value in tensors.items() if key.startswith("R.")}
        self.step_count = step_count


def lora_sb_state(
    setup, rank: int, samples: int, step: float, seed: int, batch_size: int
) -> tuple[Factors, dict[str, Tensor], dict]:
    """LoRA-SB's fixed frame, starting R and facts for summary.json, from the gradient of ``setup.model`` on
    ``samples`` examples drawn (seeded) from the pooled client shards ``setup.client_examples``.

    Raises ConfigError when the server holds no client data (partition.scheme = "nodes") or when ``rank`` exceeds
    a module's min(m, n)."""
    from fedlora.errors import ConfigError
    from fedlora.lora.sb_init import base_gradients, sign_svd_init

    pooled = [example for shard in setup.client_examples for example in shard]
    if not pooled:
        raise ConfigError(
            "method: fedsb initialises B, R, A from one gradient on the pooled training data (LoRA-SB, as the "
            "authors' code does), which the server does not hold when each node keeps its own data"
        )
    order = torch.randperm(len(pooled), generator=seeding.generator(seed, "fedsb-init"))
    sample = [pooled[i] for i in order[:samples].tolist()]
    gradients = base_gradients(setup.model, setup.layers, sample, batch_size, setup.pad_id)
    frame: Factors = {}
    R: dict[str, Tensor] = {}
    for name, gradient in gradients.items():
        try:
            B, R[name], A = sign_svd_init(gradient, rank, step)
        except ValueError as err:
            raise ConfigError(f"{err} ({name})") from None
        frame[name] = (B, A)
    facts = {"init": "LoRA-SB: rank-r SVD of -eta * sign(grad W)", "init_samples": len(sample), "init_step": step}
    return frame, R, facts

"""How the server applies the aggregated update Δ to the global factors.

"avg": θ ← θ + lr·Δ (lr = 1 is plain federated averaging of the factors).
"adam": FedOpt-style Adam on the pseudo-gradient g = −Δ (Reddi et al. 2021).
"adamw": the same with decoupled weight decay, θ ← θ·(1 − lr·wd) before the Adam step: ``torch.optim.AdamW``'s
update, which is the FSLoRA code's server step (``server.preset``; docs/methods.md).

Adam's step, per coordinate, at step t: m ← β1 m + (1 − β1) g, v ← β2 v + (1 − β2) g², θ ← θ − lr · m̂ / (√v̂ + ε)
with m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedlora.lora.state import Factors, flatten_factors, unflatten_factors


@dataclass
class ServerOptimizer:
    kind: str = "avg"
    lr: float = 1.0
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-6
    weight_decay: float = 0.0
    step_count: int = 0
    _m: dict[str, Tensor] = field(default_factory=dict)
    _v: dict[str, Tensor] = field(default_factory=dict)

    def step(self, params: Factors, delta: Factors) -> Factors:
        """New factors from ``params`` and the round's update ``delta`` (inputs are not modified)."""
        flat_p, flat_d = flatten_factors(params), flatten_factors(delta)
        self.step_count += 1
        out: dict[str, Tensor] = {}
        for key, p in flat_p.items():
            d = flat_d[key]
            if self.kind == "avg":
                out[key] = p + self.lr * d
                continue
            b1, b2 = self.betas
            g = -d
            if self.kind == "adamw":
                p = p * (1 - self.lr * self.weight_decay)
            m = self._m.get(key, torch.zeros_like(p)) * b1 + (1 - b1) * g
            v = self._v.get(key, torch.zeros_like(p)) * b2 + (1 - b2) * g * g
            self._m[key], self._v[key] = m, v
            m_hat = m / (1 - b1**self.step_count)
            v_hat = v / (1 - b2**self.step_count)
            out[key] = p - self.lr * m_hat / (v_hat.sqrt() + self.eps)
        return unflatten_factors(out)

    def state_tensors(self) -> dict[str, Tensor]:
        """Moments for the checkpoint (empty for "avg")."""
        state = {f"m.{k}": v for k, v in self._m.items()}
        state.update({f"v.{k}": v for k, v in self._v.items()})
        return state

    def load_state_tensors(self, tensors: dict[str, Tensor], step_count: int) -> None:
        self.step_count = step_count
        self._m = {k[2:]: v.clone() for k, v in tensors.items() if k.startswith("m.")}
        self._v = {k[2:]: v.clone() for k, v in tensors.items() if k.startswith("v.")}

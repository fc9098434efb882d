"""A LoRA-wrapped linear layer whose adapter can be swapped for one of any rank.

One copy of the base model hosts every client in turn: a round installs client i's rank-k_i factors, trains
them, reads them back and installs the next client's. The forward is y = base(x) + scale · (x Aᵀ) Bᵀ with
A (k×n) and B (m×k); with no adapter installed it is the base layer alone.

A *framed* adapter (Fed-SB / LoRA-SB) sits between fixed outer factors U (m×r) and V (r×n): the update is
scale · U B A V with the inner pair B (r×k), A (k×r); Fed-SB trains B = R (r×r) with A = I frozen.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """Frozen ``nn.Linear`` W0 (m×n) plus an optional low-rank update scale · B A."""

    def __init__(self, base: nn.Linear, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None
        self.frame: tuple[Tensor, Tensor] | None = None
        self.scale = 0.0

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def in_features(self) -> int:
        return self.base.in_features

    def set_adapter(
        self,
        B: Tensor,
        A: Tensor,
        scale: float,
        train_B: bool = True,
        train_A: bool = True,
        frame: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """Install factors B (m×k) and A (k×n) as fresh float32 parameters on the base layer's device.

        ``frame`` = (U m×r, V r×n), fixed: the update becomes scale · U B A V with B (r×k), A (k×r) (Fed-SB)."""
        m, n = (frame[1].shape[0], frame[0].shape[1]) if frame is not None else (self.out_features, self.in_features)
        if B.shape[0] != m or A.shape[1] != n or B.shape[1] != A.shape[0]:
            raise ValueError(
                f"adapter shapes B{tuple(B.shape)} A{tuple(A.shape)} do not fit a "
                f"{m}×{n} {'frame' if frame is not None else 'layer'}"
            )
        device = self.base.weight.device
        self.frame = None
        if frame is not None:
            U, V = frame
            if U.shape[0] != self.out_features or V.shape[1] != self.in_features or U.shape[1] != V.shape[0]:
                raise ValueError(
                    f"frame shapes U{tuple(U.shape)} V{tuple(V.shape)} do not fit a "
                    f"{self.out_features}×{self.in_features} layer"
                )
            self.frame = (U.detach().to(device, torch.float32).clone(), V.detach().to(device, torch.float32).clone())
        self.lora_B = nn.Parameter(B.detach().to(device, torch.float32).clone(), requires_grad=train_B)
        self.lora_A = nn.Parameter(A.detach().to(device, torch.float32).clone(), requires_grad=train_A)
        self.scale = float(scale)

    def clear_adapter(self) -> None:
        self.lora_A = None
        self.lora_B = None
        self.frame = None
        self.scale = 0.0

    def get_adapter(self) -> tuple[Tensor, Tensor]:
        """The installed factors (B m×k, A k×n) as detached float32 CPU tensors."""
        if self.lora_A is None or self.lora_B is None:
            raise RuntimeError("no adapter installed")
        return self.lora_B.detach().to("cpu", torch.float32).clone(), self.lora_A.detach().to("cpu").clone()

    @torch.no_grad()
    def merge_into_base(self, B: Tensor, A: Tensor, scale: float) -> None:
        """W0 ← W0 + scale · B A (for methods that fold the global update into the frozen base)."""
        delta = scale * (B.to(torch.float32) @ A.to(torch.float32))
        weight = self.base.weight
        weight.copy_((weight.to(torch.float32) + delta.to(weight.device)).to(weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        """x [..., n] → [..., m]: base(x) + scale · (dropout(x) Aᵀ) Bᵀ, the update computed in float32.

        The scale multiplies the rank-k intermediate [..., k] (not the [..., m] update), and when the base
        output is float32 the B product is accumulated into it by one ``addmm``: no m-wide elementwise pass in
        the forward or the backward. Equal to the plain order up to float rounding (bit-equal for a power-of-2
        scale); with no adapter, or with k = 0, it is the base layer alone.
        """
        out = self.base(x)
        if self.lora_A is None or self.lora_B is None:
            return out
        h = self.dropout(x).to(self.lora_A.dtype)
        if self.frame is not None:  # scale · U B A V: through the fixed frame, r-wide on both sides
            U, V = self.frame
            low = ((h @ V.t()) @ self.lora_A.t()) @ self.lora_B.t() * self.scale  # [..., r]
            return out + (low @ U.t()).to(out.dtype)
        low = (h @ self.lora_A.t()) * self.scale  # [..., k]
        if out.dtype == low.dtype:
            flat = torch.addmm(out.reshape(-1, out.shape[-1]), low.reshape(-1, low.shape[-1]), self.lora_B.t())
            return flat.view(out.shape)
        return out + (low @ self.lora_B.t()).to(out.dtype)


def inject_lora(model: nn.Module, target_modules: list[str], dropout: float = 0.0) -> dict[str, LoRALinear]:
    """Replace every ``nn.Linear`` whose last name component is in ``target_modules`` by a LoRALinear.

    Returns the wrapped layers by their module path in ``model`` (e.g. "model.layers.0.self_attn.q_proj"),
    in model order. Freezes every base parameter. Raises ValueError naming targets that match nothing.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    wanted = set(target_modules)
    found: dict[str, LoRALinear] = {}
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in wanted and isinstance(module, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            wrapped = LoRALinear(module, dropout)
            setattr(parent, child, wrapped)
            found[name] = wrapped
    missing = wanted - {n.rsplit(".", 1)[-1] for n in found}
    if missing:
        raise ValueError(f"model.target_modules: no nn.Linear named {sorted(missing)} in the model")
    return found


def merge_update(layers: dict[str, LoRALinear], update: dict[str, tuple[Tensor, Tensor]]) -> None:
    """W0 ← W0 + B A in every module of ``update`` (the scale is folded into B)."""
    for name, (B, A) in update.items():
        layers[name].merge_into_base(B, A, 1.0)

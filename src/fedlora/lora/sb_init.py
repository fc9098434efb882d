"""LoRA-SB's initialisation (Ponkshe, Singhal et al., arXiv 2411.19557), which Fed-SB uses: fixed B, A and the
starting R from the truncated SVD of one processed gradient of each frozen weight.

The authors' code (RaghavSinghal10/lora-sb ``utils/gradient_utils.py`` ``estimate_and_process_grads_torch``,
``utils/initialization_utils.py`` ``find_and_initialize_grad``; the same files in the Fed-SB code,
CERT-Lab/fed-sb ``fed_sb/utils/``): accumulate ∇W L over ``num_samples`` training examples (170), process it to
G = −η · sign(∇W), take the rank-r SVD G ≈ U S Vᵀ and set B = U (m×r), R = S (r×r diagonal), A = Vᵀ (r×n), all
three fixed except R. The first model is therefore W0 + s · [G]_r, an approximation of one signSGD step.
(Their SVD is ``torch.svd_lowrank`` with 10 power iterations in bfloat16; fedlora takes the exact SVD in float64.)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fedlora.client.loss import batch_loss
from fedlora.data.tokenize import collate
from fedlora.lora.layer import LoRALinear


@torch.no_grad()
def sign_svd_init(gradient: Tensor, rank: int, step: float) -> tuple[Tensor, Tensor, Tensor]:
    """(B m×r, R r×r, A r×n) in float32 with B R A the best rank-r approximation of G = −step · sign(gradient).

    B has orthonormal columns, A orthonormal rows and R = diag(σ_1 … σ_r) of G. Raises ValueError when
    ``rank`` exceeds min(m, n) (an r×r R cannot then be full rank)."""
    m, n = gradient.shape
    if not 1 <= rank <= min(m, n):
        raise ValueError(f"lora.rank: {rank} must be in [1, min(m, n) = {min(m, n)}] for a {m}×{n} module")
    G = -step * torch.sign(gradient.to(torch.float64))
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    return U[:, :rank].float(), torch.diag(S[:rank]).float(), Vh[:rank].float()


def base_gradients(
    model: nn.Module, layers: Mapping[str, LoRALinear], examples: list[dict], batch_size: int, pad_id: int
) -> dict[str, Tensor]:
    """Σ over batches of ∇W (mean loss per answer token of the batch) for every wrapped layer's frozen W (m×n,
    float32, CPU), with no adapter installed. The model's parameters are left frozen and without gradients."""
    device = next(iter(layers.values())).base.weight.device
    for layer in layers.values():
        layer.clear_adapter()
        layer.base.weight.requires_grad_(True)
    try:
        model.eval()  # no dropout: the gradient of the base model as it is
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id)
            loss_sum, count = batch_loss(model, batch, device)
            (loss_sum / max(count, 1)).backward()
        return {
            name: layer.base.weight.grad.detach().to("cpu", torch.float32).clone() for name, layer in layers.items()
        }
    finally:
        for layer in layers.values():
            layer.base.weight.grad = None
            layer.base.weight.requires_grad_(False)

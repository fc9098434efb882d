"""The server step against torch's own optimizers, step for step: ``adamw`` (the FSLoRA code's server step) must be
``torch.optim.AdamW`` fed the pseudo-gradient −Δ, and ``adam`` must be ``torch.optim.Adam``."""

import pytest
import torch

from fedlora.config import SERVER_PRESETS, ServerConfig
from fedlora.server_optimizer import ServerOptimizer


def _rounds(seed: int, steps: int):
    g = torch.Generator().manual_seed(seed)
    params = {"m": (torch.randn(6, 3, generator=g), torch.randn(3, 5, generator=g))}
    # deltas of varying size and sign, with some exactly-zero coordinates (untouched sketch columns)
    deltas = []
    for t in range(steps):
        B, A = torch.randn(6, 3, generator=g) * (t + 1), torch.randn(3, 5, generator=g) * 0.1
        B[:, 1] = 0.0
        deltas.append({"m": (B, A)})
    return params, deltas


def _torch_reference(optimizer_cls, params, deltas, **kwargs):
    B = params["m"][0].clone().requires_grad_(True)
    A = params["m"][1].clone().requires_grad_(True)
    opt = optimizer_cls([B, A], **kwargs)
    out = []
    for delta in deltas:
        B.grad, A.grad = -delta["m"][0].clone(), -delta["m"][1].clone()  # pseudo-gradient −Δ
        opt.step()
        out.append((B.detach().clone(), A.detach().clone()))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adamw_is_torch_adamw_on_the_pseudo_gradient(seed):
    params, deltas = _rounds(seed, steps=6)
    kwargs = dict(lr=3e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    expected = _torch_reference(torch.optim.AdamW, params, deltas, **kwargs)
    opt = ServerOptimizer("adamw", kwargs["lr"], kwargs["betas"], kwargs["eps"], kwargs["weight_decay"])
    current = params
    for step, delta in enumerate(deltas):
        current = opt.step(current, delta)
        B, A = current["m"]
        torch.testing.assert_close(B, expected[step][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(A, expected[step][1], rtol=1e-6, atol=1e-7)
    # the steps moved the factors far beyond the tolerance, and weight decay mattered
    assert (current["m"][0] - params["m"][0]).abs().max() > 1e-2
    no_decay = _torch_reference(torch.optim.AdamW, params, deltas, **{**kwargs, "weight_decay": 0.0})
    assert (no_decay[-1][0] - expected[-1][0]).abs().max() > 1e-5


def test_adam_is_torch_adam_on_the_pseudo_gradient():
    params, deltas = _rounds(3, steps=5)
    expected = _torch_reference(torch.optim.Adam, params, deltas, lr=1e-2, betas=(0.9, 0.99), eps=1e-6)
    opt = ServerOptimizer("adam", 1e-2, (0.9, 0.99), 1e-6)
    current = params
    for step, delta in enumerate(deltas):
        current = opt.step(current, delta)
        torch.testing.assert_close(current["m"][0], expected[step][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(current["m"][1], expected[step][1], rtol=1e-6, atol=1e-7)


def test_optimizer_state_round_trips_through_the_checkpoint():
    params, deltas = _rounds(4, steps=4)
    whole = ServerOptimizer("adamw", 1e-2, (0.9, 0.999), 1e-8, 0.01)
    first = ServerOptimizer("adamw", 1e-2, (0.9, 0.999), 1e-8, 0.01)
    a = b = params
    for delta in deltas[:2]:
        a, b = whole.step(a, delta), first.step(b, delta)
    resumed = ServerOptimizer("adamw", 1e-2, (0.9, 0.999), 1e-8, 0.01)
    resumed.load_state_tensors(first.state_tensors(), first.step_count)
    for delta in deltas[2:]:
        a, b = whole.step(a, delta), resumed.step(b, delta)
    assert torch.equal(a["m"][0], b["m"][0]) and torch.equal(a["m"][1], b["m"][1])


def test_fslora_preset_is_the_authors_server_step():
    """src/LoRA_Sketching.py: torch.optim.AdamW(lr=server_lr) with torch's defaults, uniform over participants."""
    server = ServerConfig(preset="fslora")
    assert (server.optimizer, server.lr, server.betas, server.eps, server.weight_decay, server.weighting) == (
        "adamw", 3e-4, (0.9, 0.999), 1e-8, 0.01, "uniform"
    )
    defaults = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults
    assert (defaults["betas"], defaults["eps"], defaults["weight_decay"]) == ((0.9, 0.999), 1e-8, 0.01)
    # a field the config sets wins over the preset
    assert ServerConfig(preset="fslora", lr=1e-3).lr == 1e-3
    assert set(SERVER_PRESETS) == {"fslora"}

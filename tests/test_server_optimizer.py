"""The server optimizer against independent references: torch's own Adam/AdamW step for step (``adamw`` is the
FSLoRA code's server step: ``torch.optim.AdamW`` fed the pseudo-gradient −Δ), plain averaging by hand, and a
checkpoint round trip that continues exactly like the uninterrupted optimizer."""

import pytest
import torch

from fedlora.config import SERVER_PRESETS, ServerConfig
from fedlora.server_optimizer import ServerOptimizer

F64 = torch.float64


def _factors(seed: int, scale: float = 1.0) -> dict:
    """Two modules of unlike shapes, float64 so the comparison can be tight."""
    g = torch.Generator().manual_seed(seed)
    return {
        "l0.q": (scale * torch.randn(6, 3, generator=g, dtype=F64), scale * torch.randn(3, 5, generator=g, dtype=F64)),
        "l1.v": (scale * torch.randn(4, 3, generator=g, dtype=F64), scale * torch.randn(3, 7, generator=g, dtype=F64)),
    }


def _torch_reference(opt: ServerOptimizer, params: dict, deltas: list[dict]) -> list[dict]:
    """The same steps taken by torch.optim.AdamW on the pseudo-gradient g = −Δ (weight decay as the server
    optimizer's, 0 when it has none: then AdamW is Adam). Returns the factors after each step."""
    weight_decay = float(getattr(opt, "weight_decay", 0.0))
    tensors = {(n, i): p[i].clone().requires_grad_(False) for n, p in params.items() for i in range(2)}
    torch_opt = torch.optim.AdamW(
        list(tensors.values()), lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=weight_decay
    )
    out = []
    for delta in deltas:
        for (name, i), t in tensors.items():
            t.grad = -delta[name][i].clone()
        torch_opt.step()
        out.append({n: (tensors[(n, 0)].clone(), tensors[(n, 1)].clone()) for n in params})
    return out


@pytest.mark.parametrize(
    "lr, betas, eps", [(1e-2, (0.9, 0.99), 1e-6), (3e-4, (0.9, 0.999), 1e-8), (0.5, (0.5, 0.75), 1e-3)]
)
def test_adam_matches_torch_adam_step_for_step(lr, betas, eps):
    """Five steps with deltas of unlike sizes: every factor equals torch's Adam to 1e-12 (float64). A sign flip of
    the pseudo-gradient, a missing or wrong bias correction or eps inside the square root is off by far more:
    each step moves every coordinate by ≈ lr, so the check also asserts the factors moved by > 1e4 × the
    tolerance."""
    opt = ServerOptimizer(kind="adam", lr=lr, betas=betas, eps=eps)
    params = _factors(0)
    deltas = [_factors(10 + t, scale=10.0 ** (t - 2)) for t in range(5)]  # 0.01 .. 100: bias terms matter
    expected = _torch_reference(opt, params, deltas)
    current = params
    for step, delta in enumerate(deltas):
        current = opt.step(current, delta)
        assert opt.step_count == step + 1
        for name in params:
            for i in range(2):
                torch.testing.assert_close(current[name][i], expected[step][name][i], rtol=1e-12, atol=1e-12)
    moved = max(float((current[n][i] - params[n][i]).abs().max()) for n in params for i in range(2))
    assert moved > 1e4 * 1e-12


def test_adam_first_step_is_lr_times_sign_of_delta():
    """Hand-computed: after one bias-corrected step m̂ = g and v̂ = g², so θ₁ = θ₀ − lr·g/(|g| + eps) =
    θ₀ + lr·sign(Δ)·|Δ|/(|Δ| + eps)."""
    opt = ServerOptimizer(kind="adam", lr=0.1, betas=(0.9, 0.99), eps=1e-6)
    params = {"m": (torch.zeros(2, 2, dtype=F64), torch.ones(2, 3, dtype=F64))}
    dB = torch.tensor([[2.0, -3.0], [0.5, -1e-3]], dtype=F64)
    dA = torch.tensor([[1.0, -1.0, 4.0], [-2.0, 8.0, 1e-2]], dtype=F64)
    new = opt.step(params, {"m": (dB, dA)})
    for old, d, got in ((params["m"][0], dB, new["m"][0]), (params["m"][1], dA, new["m"][1])):
        torch.testing.assert_close(got, old + 0.1 * d / (d.abs() + 1e-6), rtol=1e-12, atol=1e-15)


def test_avg_is_theta_plus_lr_delta_and_keeps_no_state():
    opt = ServerOptimizer(kind="avg", lr=0.7)
    params, delta = _factors(1), _factors(2)
    new = opt.step(params, delta)
    for name in params:
        for i in range(2):
            torch.testing.assert_close(new[name][i], params[name][i] + 0.7 * delta[name][i], rtol=0, atol=1e-15)
    assert opt.state_tensors() == {} and opt.step_count == 1


def test_step_does_not_modify_its_inputs():
    opt = ServerOptimizer(kind="adam", lr=0.1)
    params, delta = _factors(3), _factors(4)
    saved = {n: (B.clone(), A.clone()) for n, (B, A) in params.items()}
    saved_delta = {n: (B.clone(), A.clone()) for n, (B, A) in delta.items()}
    opt.step(params, delta)
    for n in params:
        for i in range(2):
            assert torch.equal(params[n][i], saved[n][i]) and torch.equal(delta[n][i], saved_delta[n][i])


def test_adam_resumed_from_its_checkpoint_continues_exactly():
    """Three steps, checkpoint (moments + step count), two more steps in a fresh optimizer: the same factors as
    five uninterrupted steps (the moments and the bias correction's step count both travel)."""
    deltas = [_factors(20 + t) for t in range(5)]
    whole = ServerOptimizer(kind="adam", lr=0.05)
    current = _factors(5)
    for delta in deltas:
        current = whole.step(current, delta)

    first = ServerOptimizer(kind="adam", lr=0.05)
    resumed = _factors(5)
    for delta in deltas[:3]:
        resumed = first.step(resumed, delta)
    state = {k: v.clone() for k, v in first.state_tensors().items()}
    assert len(state) == 2 * 4  # m and v for each of 2 modules × (B, A)
    second = ServerOptimizer(kind="adam", lr=0.05)
    second.load_state_tensors(state, first.step_count)
    for delta in deltas[3:]:
        resumed = second.step(resumed, delta)
    assert second.step_count == 5
    for n in current:
        for i in range(2):
            assert torch.equal(current[n][i], resumed[n][i])
    # and the checkpoint mattered: a fresh optimizer for the last two steps ends elsewhere
    fresh_opt = ServerOptimizer(kind="adam", lr=0.05)
    fresh = _factors(5)
    for delta in deltas[:3]:
        fresh = ServerOptimizer(kind="adam", lr=0.05).step(fresh, delta)
    for delta in deltas[3:]:
        fresh = fresh_opt.step(fresh, delta)
    gap = max(float((fresh[n][i] - current[n][i]).abs().max()) for n in current for i in range(2))
    assert gap > 1e-3


@pytest.mark.parametrize("weight_decay", [0.01, 0.3])
def test_adamw_matches_torch_adamw_step_for_step(weight_decay):
    """Decoupled weight decay: the same five steps as torch.optim.AdamW to 1e-12; without the decay the factors end
    far away (the decay is not a no-op here)."""
    opt = ServerOptimizer("adamw", 3e-2, (0.9, 0.999), 1e-8, weight_decay)
    params = _factors(6)
    deltas = [_factors(30 + t, scale=10.0 ** (t - 2)) for t in range(5)]
    expected = _torch_reference(opt, params, deltas)
    current = params
    for step, delta in enumerate(deltas):
        current = opt.step(current, delta)
        for name in params:
            for i in range(2):
                torch.testing.assert_close(current[name][i], expected[step][name][i], rtol=1e-12, atol=1e-12)
    plain = ServerOptimizer("adam", 3e-2, (0.9, 0.999), 1e-8)
    undecayed = params
    for delta in deltas:
        undecayed = plain.step(undecayed, delta)
    gap = max(float((undecayed[n][i] - current[n][i]).abs().max()) for n in params for i in range(2))
    assert gap > 1e-4


def test_fslora_preset_is_the_authors_server_step():
    """src/LoRA_Sketching.py: torch.optim.AdamW(lr=server_lr) with torch's defaults, uniform over participants."""
    server = ServerConfig(preset="fslora")
    assert (server.optimizer, server.lr, server.betas, server.eps, server.weight_decay, server.weighting) == (
        "adamw",
        3e-4,
        (0.9, 0.999),
        1e-8,
        0.01,
        "uniform",
    )
    defaults = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults
    assert (defaults["betas"], defaults["eps"], defaults["weight_decay"]) == ((0.9, 0.999), 1e-8, 0.01)
    assert ServerConfig(preset="fslora", lr=1e-3).lr == 1e-3  # a field the config sets wins over the preset
    assert set(SERVER_PRESETS) == {"fslora"}

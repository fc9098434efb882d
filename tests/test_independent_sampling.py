"""Methods under independent client sampling: unbiased aggregation, uniform sampling unchanged, empty rounds.

Under independent sampling client i joins with probability q_i and is weighted w_i = a_i / q_i (a_i summing to 1
over all clients), so a round's weights need not sum to 1. Every method must then be unbiased for the
full-participation aggregate with weights a_i, must not change when nobody joins, and must give exactly today's
result when the weights sum to 1.

Everything runs on two tiny modules (4×6 and 6×4) with four clients of budgets 1..4: no model, no data.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import Tensor

from fedlora import aggregation, sketch
from fedlora.lora.scaling import ScaleRule
from fedlora.lora.state import Factors, ModuleShape
from fedlora.methods import METHODS
from fedlora.methods.alternating import RoLoRA
from fedlora.methods.common import RESIDUAL_TOL, product_term, residual_weight
from fedlora.methods.factor_averaging import FactorAveraging
from fedlora.methods.fixed_frame import FedSB
from fedlora.methods.merging import MergeIntoBase
from fedlora.methods.residual_merging import FedExLoRA
from fedlora.methods.shared_a import SharedA
from fedlora.methods.truncation import TruncatedGlobal
from fedlora.methods.zero_padding import HetLoRA
from fedlora.network.sampling import sample_independent, unbiased_weights
from fedlora.server_optimizer import ServerOptimizer

# min(m, n) = 4 = max(budgets) for both modules: FlexLoRA's truncation rank max(budgets) is clamped to min(m, n),
# so its SVD keeps every direction and nothing is truncated (the combination of any clients plus the old global
# has rank <= 4). FLoRIST is built with tau = 1.0, which keeps the whole numerical rank.
SHAPES = {"layer.q": ModuleShape(4, 6), "layer.v": ModuleShape(6, 4)}
BUDGETS = [1, 2, 3, 4]
RANK = 4  # the global rank of FSLoRA / FedIT / FFA
ALPHA = ScaleRule("alpha_over_rank", 8.0)
A_POP = [0.1, 0.2, 0.3, 0.4]  # population weights a_i, summing to 1 over all clients
# q_i: client 3 (q = 0.5) can miss too, so about 1.4 % of the draws are empty rounds (which must be no-ops)
PROBS = [0.3, 0.6, 0.9, 0.5]
DRAWS = 2000
VARIANTS = (
    "fslora",
    "fedit",
    "ffa",
    "flora",
    "florist-merge",
    "florist-pad",
    "flexlora",
    "hetlora",
    "rolora",
    "fedsa",
    "fedex",
    "fedsb",
)
NEW = ("fedex", "fedsb")  # added after independent sampling: no earlier aggregation to compare with


def build(variant: str, optimizer: str = "avg") -> object:
    """A method on the tiny shapes (the "avg" server optimizer at lr 1 keeps FSLoRA/FedIT/FFA linear in Δ)."""
    init = torch.Generator().manual_seed(0)
    if variant in ("fslora", "fedit", "ffa"):
        opt = ServerOptimizer(kind=optimizer, lr=1.0 if optimizer == "avg" else 1e-2)
        sketched = BUDGETS if variant == "fslora" else None
        return FactorAveraging(variant, SHAPES, RANK, ALPHA, sketched, opt, init, freeze_A=variant == "ffa")
    if variant == "flora":
        return MergeIntoBase("flora", SHAPES, ALPHA, BUDGETS, aggregation.flora, {})
    if variant == "florist-merge":
        return MergeIntoBase("florist", SHAPES, ALPHA, BUDGETS, partial(aggregation.florist, tau=1.0), {"tau": 1.0})
    if variant == "florist-pad":
        combine = partial(aggregation.florist, tau=1.0)
        return TruncatedGlobal("florist", SHAPES, ALPHA, BUDGETS, combine, init, {"tau": 1.0})
    if variant == "flexlora":
        combine = partial(aggregation.flexlora, rank=max(BUDGETS))
        return TruncatedGlobal("flexlora", SHAPES, ALPHA, BUDGETS, combine, init, {})
    if variant == "hetlora":
        return HetLoRA(SHAPES, ScaleRule("constant", 2.0), BUDGETS, init)  # its own convention: one scale
    if variant == "rolora":  # round 1 (plans_and_uploads) trains B with A frozen
        return RoLoRA(
            SHAPES, RANK, ALPHA, ServerOptimizer(kind=optimizer, lr=1.0 if optimizer == "avg" else 1e-2), init
        )
    if variant == "fedsa":
        return SharedA(SHAPES, RANK, ALPHA, init, len(BUDGETS), "uniform", None)
    if variant == "fedex":
        return FedExLoRA(SHAPES, RANK, ALPHA, init)
    if variant == "fedsb":  # a random fixed frame and R (LoRA-SB's gradient init needs a model)
        frame = {
            n: (torch.randn(s.out_features, RANK, generator=init), torch.randn(RANK, s.in_features, generator=init))
            for n, s in SHAPES.items()
        }
        return FedSB(SHAPES, RANK, ALPHA, frame, {n: torch.randn(RANK, RANK, generator=init) for n in SHAPES})
    raise ValueError(variant)


def with_nonzero_global(method: object) -> object:
    """Give a global-adapter method a non-zero B (init has B = 0) so the old global's term matters."""
    if hasattr(method, "factors"):
        g = torch.Generator().manual_seed(1)
        method.factors = {
            name: (0.3 * torch.randn(B.shape, generator=g), A + 0.1 * torch.randn(A.shape, generator=g))
            for name, (B, A) in method.factors.items()
        }
    return method


def plans_and_uploads(method: object) -> tuple[list, list[Factors]]:
    """One plan per client from a fixed generator, and a fixed "trained" upload: plan factors + a perturbation."""
    plans, uploads = [], []
    for cid in range(len(BUDGETS)):
        plan = method.plan(cid, 1, torch.Generator().manual_seed(100 + cid))
        g = torch.Generator().manual_seed(200 + cid)
        upload = {}
        for name, (B, A) in plan.factors.items():
            new_B = B + 0.2 * torch.randn(B.shape, generator=g)
            new_A = A + 0.2 * torch.randn(A.shape, generator=g) if plan.train_A else A
            upload[name] = (new_B, new_A)
        plans.append(plan)
        uploads.append(upload)
    return plans, uploads


def aggregate_some(method: object, plans: list, uploads: list[Factors], ids: list[int], weights: list[float]) -> dict:
    return method.aggregate([plans[i] for i in ids], [uploads[i] for i in ids], weights)


def linear_view(variant: str, method: object) -> dict[str, Tensor]:
    """What the method's aggregation is linear in the weights for, in float64.

    Product-combining methods (flora, FLoRIST at tau = 1, FlexLoRA without truncation) and FFA (A frozen) are
    linear in the dense ΔW = scale · B A, the model's update relative to the original base. FSLoRA, FedIT and
    HetLoRA combine B and A separately: each factor is linear (hence unbiased) in the weights, but ΔW = s B A is
    bilinear in them, so E[ΔW] = E[B] E[A] + Cov(B, A) ≠ the full-participation ΔW; their factors are checked.
    """
    if variant in ("flora", "florist-merge"):
        update = method.pending_base_update()  # the fresh state has no earlier history: this is the whole ΔW
        if update is None:  # an empty round merged nothing
            return {name: torch.zeros(s.out_features, s.in_features, dtype=torch.float64) for name, s in SHAPES.items()}
        return {name: B.double() @ A.double() for name, (B, A) in update.items()}
    if variant == "fedsa":  # the server's state is A alone (linear in the weights); the B's stay on the clients
        return {f"{n}.A": A.double() for n, A in method.A.items()}
    if variant == "fedex":  # the exact global: this round's residual (merged into the base) + s B̄ Ā
        update = method.pending_base_update()
        factors, scales = method.eval_adapter()
        return {
            name: scales[name] * B.double() @ A.double()
            + (update[name][0].double() @ update[name][1].double() if update is not None else 0.0)
            for name, (B, A) in factors.items()
        }
    if variant == "fedsb":  # R is linear in the weights
        return {name: R.double() for name, R in method.R.items()}
    factors, scales = method.eval_adapter()
    if variant in ("fslora", "fedit", "hetlora"):
        return {f"{n}.{k}": t.double() for n, (B, A) in factors.items() for k, t in (("B", B), ("A", A))}
    return {name: scales[name] * B.double() @ A.double() for name, (B, A) in factors.items()}


@pytest.fixture(scope="module")
def draws() -> list[tuple[list[int], list[float]]]:
    """The participant sets and unbiased weights of DRAWS independent-sampling rounds (shared by all methods)."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(DRAWS):
        ids = sample_independent(PROBS, g)
        out.append((ids, unbiased_weights(ids, A_POP, PROBS)))
    return out


def test_every_method_has_a_variant():
    assert {v.split("-")[0] for v in VARIANTS} == set(METHODS)


# ------------------------------------------------------------------------------------------------ 1. unbiased
@pytest.mark.parametrize("variant", VARIANTS)
def test_unbiased_under_independent_sampling(variant, draws):
    """Mean over draws of the aggregate = the full-participation aggregate with weights a_i (5 SE + 2e-6).

    The tolerance is elementwise: |mean − expected| <= 5 · std / sqrt(DRAWS) + 2e-6, std the draws' sample
    standard deviation (the draws are fixed by the seed; 2e-6 absorbs float32 roundoff of O(1) entries).
    """
    method = with_nonzero_global(build(variant))
    plans, uploads = plans_and_uploads(method)

    full = copy.deepcopy(method)
    full.aggregate(plans, uploads, list(A_POP))
    expected = linear_view(variant, full)

    keys = list(expected)
    samples = []
    shared = {id(t): t for t in method.state_tensors().values()}  # aggregate never writes into tensors
    for ids, weights in draws:
        fresh = copy.deepcopy(method, dict(shared))  # a fresh state per draw (its tensors shared, read-only)
        aggregate_some(fresh, plans, uploads, ids, weights)
        view = linear_view(variant, fresh)
        samples.append(torch.cat([view[k].flatten() for k in keys]))
    stacked = torch.stack(samples)  # DRAWS × entries, float64
    exp = torch.cat([expected[k].flatten() for k in keys])
    se = stacked.std(dim=0) / DRAWS**0.5
    err = (stacked.mean(dim=0) - exp).abs()
    worst = float((err / (se + 1e-12)).max())
    print(f"{variant}: max |err| {err.max():.2e}, max SE {se.max():.2e}, max |err|/SE {worst:.2f}")
    assert bool((err <= 5 * se + 2e-6).all()), f"{variant}: max |err| {err.max():.3g}, |err|/SE up to {worst:.2f}"
    assert bool((se > 0).all())  # every entry did vary across draws


# ---------------------------------------------------------------------------------------- 2. uniform unchanged
def legacy_aggregate(variant: str, method: object, plans: list, uploads: list[Factors], weights: list[float]) -> dict:
    """The pre-independent-sampling aggregation, written out: the state each method had after ``aggregate``."""
    if variant in ("flora", "florist-merge", "florist-pad", "flexlora"):
        combine = {
            "flora": aggregation.flora,
            "florist-merge": partial(aggregation.florist, tau=1.0),
            "florist-pad": partial(aggregation.florist, tau=1.0),
            "flexlora": partial(aggregation.flexlora, rank=max(BUDGETS)),
        }[variant]
        out = {}
        for name in SHAPES:
            Bs = [p.scale * u[name][0] for p, u in zip(plans, uploads, strict=True)]
            out[name] = combine(Bs, [u[name][1] for u in uploads], weights)
        return out
    if variant == "hetlora":
        return {
            name: aggregation.hetlora([u[name][0] for u in uploads], [u[name][1] for u in uploads], weights, rank=4)
            for name in SHAPES
        }
    if variant == "fedsa":  # A ← A + Σ w_k (A_k − A), accumulated in client order
        out = {}
        for name, A in method.A.items():
            dA = torch.zeros_like(A)
            for u, w in zip(uploads, weights, strict=True):
                dA.add_(u[name][1] - A, alpha=float(w))
            out[name] = (torch.zeros(0), A + dA)
        return out
    out = {}
    for name, (B, A) in method.factors.items():
        dBs, dAs = [], []
        for p, u in zip(plans, uploads, strict=True):
            dB, dA = sketch.scatter_block(
                u[name][0] - p.factors[name][0], u[name][1] - p.factors[name][1], p.context[name], RANK
            )
            dBs.append(dB)
            dAs.append(dA)
        dB, dA = aggregation.fedit(dBs, dAs, weights)
        out[name] = (B + dB, A + dA)
    return out


@pytest.mark.parametrize("weights", [[0.2, 0.3, 0.5], [3 / 15, 5 / 15, 7 / 15], [1 / 3, 1 / 3, 1 / 3]])
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v not in NEW])
def test_weights_summing_to_one_give_todays_result(variant, weights):
    assert residual_weight(weights) == 0.0  # the affine term is skipped
    method = with_nonzero_global(build(variant))
    plans, uploads = plans_and_uploads(method)
    ids = [0, 2, 3]
    expected = legacy_aggregate(variant, method, [plans[i] for i in ids], [uploads[i] for i in ids], weights)
    before = method.step_count
    aggregate_some(method, plans, uploads, ids, weights)
    if isinstance(method, SharedA):
        got = {name: (torch.zeros(0), A) for name, A in method.A.items()}
    else:
        got = method.pending_base_update() if isinstance(method, MergeIntoBase) else method.factors
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name][0], expected[name][0]) and torch.equal(got[name][1], expected[name][1])
    assert method.step_count == before + 1


# ------------------------------------------------------------------------------------------------ 3. empty
@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_round_changes_nothing(variant):
    """After one real round (Adam for the factor methods, so a step would move them), an empty round is a no-op."""
    method = with_nonzero_global(build(variant, optimizer="adam"))
    plans, uploads = plans_and_uploads(method)
    method.aggregate(plans, uploads, list(A_POP))
    method.pending_base_update()  # the loop merges the round's update
    state, steps, history = method.state_tensors(), method.step_count, method.base_history()

    assert method.aggregate([], [], []) == {}
    assert method.pending_base_update() is None
    after = method.state_tensors()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert method.step_count == steps == 1
    assert len(method.base_history()) == len(history)
    if isinstance(method, MergeIntoBase):
        assert method.step_count == len(method.base_history())  # what resume relies on


def test_empty_round_before_any_update():
    """A merging method whose first round is empty stays at zero updates (step_count == len(history) == 0)."""
    for variant in ("flora", "florist-merge"):
        method = build(variant)
        assert method.aggregate([], [], []) == {}
        assert method.pending_base_update() is None and method.base_history() == [] and method.step_count == 0


# -------------------------------------------------------------------------------------- 4. negative residual
@pytest.mark.parametrize("variant", ["flexlora", "florist-pad", "hetlora"])
def test_negative_residual_weight(variant):
    """One client with q = 0.25 alone: w = a / q = 1.6 > 1, so the old global enters with weight 1 − w = −0.6."""
    method = with_nonzero_global(build(variant))
    plans, uploads = plans_and_uploads(method)
    old = {name: (B.double(), A.double()) for name, (B, A) in method.factors.items()}
    w = unbiased_weights([3], A_POP, [1.0, 1.0, 1.0, 0.25])
    c = residual_weight(w)
    assert w == [1.6] and c == pytest.approx(-0.6)
    aggregate_some(method, plans, uploads, [3], w)
    plan, upload = plans[3], uploads[3]
    for name, (B_old, A_old) in old.items():
        B_k, A_k = (t.double() for t in upload[name])
        B, A = (t.double() for t in method.factors[name])
        if variant == "hetlora":  # new = w state_k + (1 − w) old, factor by factor (client 3 is at rank r_max)
            torch.testing.assert_close(B, w[0] * B_k + c * B_old, rtol=0, atol=1e-6)
            torch.testing.assert_close(A, w[0] * A_k + c * A_old, rtol=0, atol=1e-6)
        else:  # dense: ΔW = w s_k B_k A_k + (1 − w) B_old A_old (scale folded into the global's B)
            expected = w[0] * plan.scale * B_k @ A_k + c * B_old @ A_old
            torch.testing.assert_close(B @ A, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("w", [0.4, 1.0, 1.6])
@pytest.mark.parametrize("variant", ["flexlora", "florist-pad", "hetlora"])
def test_untrained_full_rank_client_is_a_fixed_point(variant, w):
    """A full-rank client that returns what it was sent leaves the global unchanged, whatever its weight.

    This is what the affine form buys (Σ_i w_i state_i alone is unbiased too, since E[Σ w_i] = 1, but would
    rescale the global by w here).
    """
    method = with_nonzero_global(build(variant))
    plans, _ = plans_and_uploads(method)
    old = {name: (B.clone(), A.clone()) for name, (B, A) in method.factors.items()}
    aggregate_some(method, plans, [p.factors for p in plans], [3], [w])  # client 3: rank 4 = the global rank
    for name, (B_old, A_old) in old.items():
        B, A = method.factors[name]
        if variant == "hetlora":
            torch.testing.assert_close(B, B_old, rtol=0, atol=1e-6)
            torch.testing.assert_close(A, A_old, rtol=0, atol=1e-6)
        else:
            torch.testing.assert_close(B @ A, B_old @ A_old, rtol=0, atol=1e-5)


def test_negative_residual_weight_florist_gram_route():
    """FLoRIST's R×R (Gram) route, R = 2 + 2 < min(m, n) = 12, with the old global's term at weight −0.6."""
    init = torch.Generator().manual_seed(0)
    shapes = {"big": ModuleShape(16, 12)}
    method = TruncatedGlobal("florist", shapes, ALPHA, [1, 2], partial(aggregation.florist, tau=1.0), init, {})
    g = torch.Generator().manual_seed(3)
    method.factors = {"big": (torch.randn(16, 2, generator=g), torch.randn(2, 12, generator=g))}
    B_old, A_old = (t.double() for t in method.factors["big"])
    plan = method.plan(1, 1, torch.Generator().manual_seed(4))
    upload = {"big": tuple(t + 0.2 * torch.randn(t.shape, generator=g) for t in plan.factors["big"])}
    method.aggregate([plan], [upload], [1.6])
    B, A = (t.double() for t in method.factors["big"])
    B_k, A_k = (t.double() for t in upload["big"])
    expected = 1.6 * plan.scale * B_k @ A_k - 0.6 * B_old @ A_old
    torch.testing.assert_close(B @ A, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


def test_residual_helpers():
    assert residual_weight([0.5, 0.5]) == 0.0
    assert residual_weight([0.1] * 10) == 0.0  # 1 − Σ is ~1e-16: uniform sampling stays on the old path
    assert residual_weight([]) == 1.0 and residual_weight([0.25]) == 0.75 and residual_weight([2.0]) == -1.0
    assert abs(residual_weight([0.5, 0.5 + 10 * RESIDUAL_TOL])) > RESIDUAL_TOL
    B, A = torch.randn(3, 2), torch.randn(2, 4)
    Bn, An, wn = product_term(B, A, -0.5)
    assert wn == 0.5 and torch.equal(An, A) and torch.allclose(wn * Bn @ An, -0.5 * B @ A)
    assert product_term(B, A, 0.5)[0] is B


# --- joint independence of the joins (the premise of the expected-max-time formula and of DP's Poisson accounting) --


def _chi_square(observed: Tensor, expected: Tensor) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


def test_clients_join_jointly_independently_through_the_run_path():
    """8 000 rounds of ``federation.round_participants`` (the run's own seeding) with q = (0.2, 0.5, 0.7, 0.9):
    the 16 join patterns are counted and compared with Π_i q_i^{x_i} (1 − q_i)^{1 − x_i} by a chi-square test,
    15 degrees of freedom, rejecting at p < 1e-4 (statistic > 44.3 = chi2.ppf(1 − 1e-4, 15)).
    Every client's marginal is also within 5 standard errors. A sampler drawing one uniform for all clients
    (u < q_i: every marginal right, the joins nested) gives ≈ 27 000 at 20 000 rounds."""
    from scipy.stats import chi2

    from fedlora import federation
    from fedlora.config import load_config

    probs = [0.2, 0.5, 0.7, 0.9]
    tiny = Path(__file__).resolve().parents[1] / "examples" / "tiny.toml"
    config = load_config(tiny, ["sampling.scheme=independent", f"sampling.probs={probs}"])
    rounds = 8_000
    patterns = torch.zeros(16, dtype=torch.float64)
    joins = torch.zeros(rounds, 4, dtype=torch.bool)
    for r in range(rounds):
        ids = federation.round_participants(config, r + 1)
        joins[r, ids] = True
        patterns[sum(1 << i for i in ids)] += 1
    q = torch.tensor(probs, dtype=torch.float64)
    bits = torch.tensor([[(p >> i) & 1 for i in range(4)] for p in range(16)], dtype=torch.float64)
    expected = rounds * torch.prod(torch.where(bits.bool(), q, 1 - q), dim=1)
    assert _chi_square(patterns, expected) < chi2.ppf(1 - 1e-4, 15)
    marginal = joins.double().mean(0)
    assert torch.all((marginal - q).abs() < 5 * (q * (1 - q) / rounds).sqrt())
    # consecutive rounds are independent too (a generator reused across rounds would still pass the above):
    # client 1 (q = 0.5) in round t vs round t + 1, a 2×2 table, 1 degree of freedom, p < 1e-4 (15.1)
    now, then = joins[1:, 1], joins[:-1, 1]
    table = torch.tensor([[float(((now == a) & (then == b)).sum()) for b in (0, 1)] for a in (0, 1)])
    pair = torch.tensor([[1 - probs[1], probs[1]]], dtype=torch.float64)
    assert _chi_square(table.double(), (rounds - 1) * pair.T @ pair) < chi2.ppf(1 - 1e-4, 1)

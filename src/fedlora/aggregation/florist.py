"""FLoRIST: exact SVD of the stacked update without forming it, then an energy-threshold rank.

The server step of FLoRIST (arXiv 2506.09199): with B_s = [B_1 … B_K] (m×R) and A_s = [w_1 A_1; …; w_K A_K]
(R×n), R = Σ r_k, the update ΔW = B_s A_s = Σ w_k B_k A_k (the *product* is aggregated, as in FLoRA) has at
most R non-zero singular values, and they can be found from R×R matrices alone. The paper takes thin SVDs of
B_s and A_s and an SVD of the R×R core. fedlora gets the same singular values faster:

1. Gram matrices G_B = B_sᵀB_s and G_A = A_s A_sᵀ (R×R; each off-diagonal block computed once), in the
   compute dtype (float32, or float64 for float64 inputs), then promoted to float64.
2. In float64 (R×R only): drop stacked columns that contribute nothing (zero column of B_s or zero row of
   A_s, e.g. B = 0 at LoRA init or a zero weight), balance each column/row pair (b_i c_i, a_i / c_i have equal
   norms; the product is unchanged), factor G_A = L Lᵀ (Cholesky; an eigendecomposition if G_A is
   numerically singular), and eigendecompose the symmetric core M = Lᵀ G_B L = W Λ Wᵀ. With C = B_s L,
   ΔW ΔWᵀ = C Cᵀ has the non-zero spectrum of Cᵀ C = M, so σ_i(ΔW)² = λ_i(M).
3. Keep the smallest p with Σ_{i≤p} σ_i² / Σ σ_i² >= tau, and form the outputs with two GEMMs of the stacks
   against small matrices: U_p S_p = B_s (L W_p) (m×p) and V_pᵀ = Λ_p⁻¹ (L W_p)ᵀ G_B A_s (p×n).

No m×n matrix is formed and no m×R or R×n matrix is orthogonalised; the work is two R×R Grams, one R×R
Cholesky and one R×R eigh, and two output GEMMs. When R >= min(m, n) the update is no larger than the stacks,
so it is formed densely and decomposed with one thin SVD (exact, and cheaper than the Gram route there).

Accuracy: singular values well away from zero match the dense SVD to about u·σ_max²/σ_i, where u is the
unit roundoff of the compute dtype; singular values near zero are resolved only to about sqrt(u)·σ_max (the
price of Gram matrices). With tau = 1 the product B @ A reproduces ΔW to about u relative, because the
factorisation is algebraically consistent with the computed Grams. Precision policy: float64 inputs are
computed in float64; float32/float16/bfloat16 inputs in float32, with every R×R step in float64.
"""

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedlora.aggregation._validate import Factors, check_factors, check_tau, compute_dtype
from fedlora.aggregation.flora import stack

_F64 = torch.float64
_EPS64 = torch.finfo(_F64).eps
_SPLIT_GRAM_MIN = 64  # below this R a plain XᵀX is as fast as the two-block symmetric product


@dataclass(frozen=True)
class FloristResult:
    """One module's FLoRIST aggregate and what the rank rule saw.

    Attributes:
        B: U[:, :p]·diag(S[:p]), m×p, in the input dtype/device.
        A: Vᵀ[:p], p×n (orthonormal rows), in the input dtype/device.
        rank: p >= 1, the number of singular triplets kept.
        singular_values: all min(m, n, R) singular values of ΔW, descending, float64 on the input device
            (numerically zero ones are reported as 0).
        energy: Σ_{i<=p} σ_i² / Σ σ_i², the fraction of ΔW's squared Frobenius norm kept (1.0 for ΔW = 0).
    """

    B: Tensor
    A: Tensor
    rank: int
    singular_values: Tensor
    energy: float


def energy_rank(singular_values: Tensor | Sequence[float], tau: float) -> int:
    """Smallest p with Σ_{i<=p} σ_i² / Σ_i σ_i² >= tau, the σ taken in descending order.

    Args:
        singular_values: 1-D, finite, >= 0 (any order; sorted here).
        tau: energy threshold in (0, 1].

    Returns:
        p in [1, len(singular_values)]; 1 when all singular values are zero. With tau = 1, p is the position
        of the last singular value whose square still changes the float64 running sum.

    Raises:
        ValueError: ``tau`` outside (0, 1], or empty / negative / non-finite ``singular_values``.
    """
    tau = check_tau(tau)
    s = torch.as_tensor(singular_values, dtype=_F64).flatten()
    if s.numel() == 0:
        raise ValueError("singular_values: empty; need at least one singular value")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError("singular_values: must be finite and >= 0")
    cumulative = torch.sort(s.square(), descending=True).values.cumsum(0).tolist()
    if cumulative[-1] <= 0:
        return 1
    return _rank_from_cumulative(cumulative, tau)


def _rank_from_cumulative(cumulative: list[float], tau: float) -> int:
    """Smallest p with cumulative[p-1] >= tau · cumulative[-1] (cumulative energies, non-decreasing)."""
    return min(bisect.bisect_left(cumulative, tau * cumulative[-1]) + 1, len(cumulative))


@torch.no_grad()
def florist(
    Bs: Sequence[Tensor], As: Sequence[Tensor], weights: Sequence[float], tau: float = 0.9
) -> tuple[Tensor, Tensor]:
    """FLoRIST's global factors: the top-p singular triplets of ΔW = Σ w_k B_k A_k by energy threshold.

    The *product* of the client factors is aggregated (never the factors separately), and ΔW (m×n) is not
    formed. See :func:`florist_decompose` for the chosen rank and the singular values.

    Args:
        Bs: client factors B_k, each m×r_k (ranks may differ).
        As: client factors A_k, each r_k×n.
        weights: w_k per client, used as given (not renormalised).
        tau: energy threshold in (0, 1]; tau = 1 reproduces FLoRA's product B_s @ A_s.

    Returns:
        ``(B, A)`` with B = U[:, :p]·diag(S[:p]) (m×p) and A = Vᵀ[:p] (p×n), in the input dtype and device.
        An all-zero update (e.g. every B_k = 0, as at LoRA init) gives rank-1 zero factors, B = 0 (m×1),
        A = 0 (1×n), so that callers always get at least one column.

    Raises:
        ValueError: bad inputs (the message names the argument and client index) or ``tau`` outside (0, 1].
    """
    result = florist_decompose(Bs, As, weights, tau)
    return result.B, result.A


@torch.no_grad()
def florist_decompose(
    Bs: Sequence[Tensor], As: Sequence[Tensor], weights: Sequence[float], tau: float = 0.9
) -> FloristResult:
    """Like :func:`florist`, but also return the chosen rank, all singular values and the energy kept.

    Shapes: B_k m×r_k, A_k r_k×n, R = Σ r_k; result B m×p, A p×n, singular_values (min(m, n, R),).
    """
    f = check_factors(Bs, As, weights)
    tau = check_tau(tau)
    dtype = compute_dtype(f.dtype)
    if sum(f.ranks) >= min(f.m, f.n):
        return _florist_dense(Bs, As, f, tau, dtype)
    return _florist_gram(Bs, As, f, tau, dtype)


def _zero_result(f: Factors, count: int) -> FloristResult:
    """The documented answer for ΔW = 0: rank-1 zero factors and all-zero singular values."""
    B = torch.zeros(f.m, 1, dtype=f.dtype, device=f.device)
    A = torch.zeros(1, f.n, dtype=f.dtype, device=f.device)
    return FloristResult(B, A, 1, torch.zeros(count, dtype=_F64, device=f.device), 1.0)


def _florist_dense(
    Bs: Sequence[Tensor], As: Sequence[Tensor], f: Factors, tau: float, dtype: torch.dtype
) -> FloristResult:
    """R >= min(m, n): ΔW (m×n) is no larger than the stacks, so one thin SVD of it is the exact route."""
    B_s, A_s = stack(Bs, As, f.weights, dtype)
    U, S, Vh = torch.linalg.svd(B_s @ A_s, full_matrices=False)
    sv = S.to(_F64)
    if not bool(sv[0] > 0):
        return _zero_result(f, sv.numel())
    cumulative = sv.square().cumsum(0).tolist()
    p = _rank_from_cumulative(cumulative, tau)
    B = (U[:, :p] * S[:p]).to(f.dtype)
    A = Vh[:p].to(f.dtype, copy=True)
    return FloristResult(B, A, p, sv, cumulative[p - 1] / cumulative[-1])


def _gram(X: Tensor) -> Tensor:
    """XᵀX (R×R) for X (k×R), computing each off-diagonal block once (X may be a transposed view)."""
    R = X.shape[1]
    if R < _SPLIT_GRAM_MIN:
        return X.T @ X
    h = R // 2
    G = torch.empty(R, R, dtype=X.dtype, device=X.device)
    torch.matmul(X[:, :h].T, X, out=G[:h])
    G[h:, h:] = X[:, h:].T @ X[:, h:]
    G[h:, :h] = G[:h, h:].T
    return G


def _psd_factor(G: Tensor) -> Tensor:
    """L (R×q) with L Lᵀ = G for symmetric PSD G (float64): Cholesky, or eigh if G is numerically singular."""
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        return L
    lam, V = torch.linalg.eigh(G)
    keep = lam > lam[-1].clamp_min(0) * (G.shape[0] * _EPS64)
    return V[:, keep] * lam[keep].sqrt()


def _florist_gram(
    Bs: Sequence[Tensor], As: Sequence[Tensor], f: Factors, tau: float, dtype: torch.dtype
) -> FloristResult:
    """R < min(m, n): spectrum from R×R Gram matrices, outputs from two GEMMs against the stacks."""
    R = sum(f.ranks)
    B_s = torch.cat([b.to(dtype) for b in Bs], dim=1)  # m×R, a new tensor
    A_h = torch.cat([a.to(dtype) for a in As], dim=0)  # R×n, unweighted: weights go into R×R space
    G_B = _gram(B_s).to(_F64)
    G_A = _gram(A_h.T).to(_F64)
    d = torch.tensor(
        [w for w, r in zip(f.weights, f.ranks, strict=True) for _ in range(r)], dtype=_F64, device=f.device
    )

    # Column i of B_s times row i of A_s is the i-th rank-1 term; drop terms that are exactly zero.
    b2 = G_B.diagonal().clone()
    a2 = G_A.diagonal() * d.square()
    live = (b2 > 0) & (a2 > 0)
    if not bool(live.all()):
        idx = live.nonzero().flatten()
        if idx.numel() == 0:
            return _zero_result(f, R)
        B_s, A_h, d, b2, a2 = B_s[:, idx], A_h[idx], d[idx], b2[idx], a2[idx]
        G_B, G_A = G_B[idx][:, idx], G_A[idx][:, idx]

    # Balance: B_s diag(s_B) and diag(s_A) A_h have equal column/row norms and the same product as B_s A_s.
    c = (a2 / b2).pow(0.25)
    s_B, s_A = c, d / c
    G_B.mul_(s_B[:, None]).mul_(s_B)  # G_B, G_A are our own tensors: scale in place
    G_A.mul_(s_A[:, None]).mul_(s_A)

    L = _psd_factor(G_A)  # R×q
    lam, W = torch.linalg.eigh(L.T @ (G_B @ L))  # ascending; eigh reads one triangle only
    lam = lam.flip(0).clamp_min(0)
    lam = torch.where(lam > lam[0] * (lam.numel() * _EPS64), lam, 0.0)  # numerically zero -> 0
    cumulative = lam.cumsum(0).tolist()
    if cumulative[-1] <= 0:
        return _zero_result(f, R)
    p = _rank_from_cumulative(cumulative, tau)
    sv = torch.zeros(R, dtype=_F64, device=f.device)
    sv[: lam.numel()] = lam.sqrt()

    X = L @ W[:, -p:].flip(1)  # R×p: U_p S_p = (B_s diag(s_B)) X
    Y = (X.T @ G_B) / lam[:p, None]  # p×R: V_pᵀ = Y diag(s_A) A_h
    B = (B_s @ X.mul_(s_B[:, None]).to(dtype)).to(f.dtype)
    A = (Y.mul_(s_A).to(dtype) @ A_h).to(f.dtype)
    return FloristResult(B, A, p, sv, cumulative[p - 1] / cumulative[-1])

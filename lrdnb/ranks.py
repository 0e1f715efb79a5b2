"""Rank rules: pure functions of shapes (and, for VBMF / energy, of a weight array).

* :func:`tucker2_rank` - eq. 5 of the sequential-freezing paper (Hajimolahoseini et al. 2023).
* :func:`tucker2_rank_min` - eq. 6 (the rank at compression ``alpha + 1``), the lower end of
  Algorithm 1's search.
* :func:`svd_rank` - the same parameter rule for SVD (``C*S -> r*(C+S)``, eq. 2).
* :func:`vbmf_rank` / :func:`vbmf_ranks` - empirical variational Bayes matrix factorization
  (Nakajima et al. 2013) on the mode unfoldings, with the weakening factor of the
  layers-targeted paper (Ahmed et al. 2022, after Kholiavchenko 2018).
* :func:`energy_rank` - keep the singular values that hold a fraction of the energy.
* :func:`quantize_rank` - rank quantization of the layers-targeted paper (multiples of N).
* :func:`rank_range` - the ranks Algorithm 1 searches, eq. 5 down to eq. 6;
  :func:`beta_of` / :func:`tucker2_pair` - the Tucker2 pair ``(r1, floor(beta r1))`` of eq. 5.

No torch modules here; weights enter only as arrays (numpy or torch).
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

__all__ = [
    "beta_of",
    "tucker2_pair",
    "rank_range",
    "tucker2_rank",
    "tucker2_rank_min",
    "tucker2_params",
    "svd_rank",
    "svd_params",
    "quantize_rank",
    "energy_rank",
    "evbmf_rank",
    "vbmf_rank",
    "vbmf_ranks",
    "energy_ranks",
]


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 1):
        raise ValueError(f"compression ratio alpha must be a number > 1, got {alpha!r}")


def tucker2_params(c: int, s: int, kernel: Sequence[int] | int, r1: int, r2: int) -> int:
    """Parameters of a Tucker2 chain (no bias): ``C r1 + r1 r2 k_h k_w + r2 S``."""
    kk = _kk(kernel)
    return c * r1 + r1 * r2 * kk + r2 * s


def svd_params(c: int, s: int, r: int) -> int:
    """Parameters of an SVD pair (no bias) for a ``C x S`` matrix: ``r (C + S)``."""
    return r * (c + s)


def _kk(kernel: Sequence[int] | int) -> int:
    if isinstance(kernel, int):
        return kernel * kernel
    kh, kw = kernel
    return int(kh) * int(kw)


def _tucker2_r1_real(c: int, s: int, kernel: Sequence[int] | int, alpha: float, beta: float) -> float:
    """Real root of eq. 5: ``beta k^2 r1^2 + (C + beta S) r1 - C S k^2 / alpha = 0``."""
    _check_alpha(alpha)
    if beta <= 0:
        raise ValueError(f"beta (r2 = beta * r1) must be > 0, got {beta!r}")
    k2 = _kk(kernel)
    b = (c + beta * s) / (beta * k2)
    return (-b + math.sqrt(b * b + 4.0 * c * s / (beta * alpha))) / 2.0


def tucker2_rank(
    c: int, s: int, kernel: Sequence[int] | int, alpha: float = 2.0, beta: float = 1.0
) -> tuple[int, int]:
    """Tucker2 ranks ``(r1, r2)`` giving compression ratio ``alpha`` (eq. 5), ``r2 = beta r1``.

    ``C`` is the number of input channels, ``S`` of output channels (the paper's
    ``W in R^{C x S x h x w}``). The real root is floored so the achieved compression is at
    least ``alpha``; ranks are at least 1.

    Example:
        >>> tucker2_rank(512, 512, 3, alpha=2)
        (309, 309)
    """
    r1 = _tucker2_r1_real(c, s, kernel, alpha, beta)
    r1i = max(1, math.floor(r1))
    return r1i, max(1, math.floor(beta * r1i))


def tucker2_rank_min(
    c: int, s: int, kernel: Sequence[int] | int, alpha: float = 2.0, beta: float = 1.0
) -> tuple[int, int]:
    """``R_min`` of Algorithm 1: the eq.-5 rank at ratio ``alpha + 1`` (eq. 6).

    Example:
        >>> tucker2_rank_min(512, 512, 3, alpha=2)
        (244, 244)
    """
    return tucker2_rank(c, s, kernel, alpha + 1.0, beta)


def svd_rank(c: int, s: int, alpha: float = 2.0) -> int:
    """SVD rank giving ratio ``alpha`` for a ``C x S`` matrix: ``floor(C S / (alpha (C+S)))``.

    For a conv, ``C`` is ``in_channels * k_h * k_w`` (the unfolding the first factor sees).

    Example:
        >>> svd_rank(2048, 1000, alpha=2)
        335
    """
    _check_alpha(alpha)
    return max(1, math.floor(c * s / (alpha * (c + s))))


def quantize_rank(rank: int, multiple: int | None, max_rank: int, mode: str = "floor") -> int:
    """Round ``rank`` to a multiple of ``multiple`` (rank quantization, layers-targeted paper).

    Never returns 0 (a rank below one quantum rounds up to the quantum, or to ``max_rank`` if
    that is smaller) and never more than ``max_rank``.

    Args:
        rank: the rank to round.
        multiple: the quantum N (``None`` or 1: unchanged).
        max_rank: the full rank of that mode.
        mode: ``"floor"``, ``"nearest"`` or ``"ceil"``.

    Example:
        >>> quantize_rank(309, 16, 512), quantize_rank(309, 16, 512, "nearest"), quantize_rank(5, 16, 512)
        (304, 304, 16)
    """
    if mode not in ("floor", "nearest", "ceil"):
        raise ValueError(f"unknown quantization mode {mode!r}; valid: 'floor', 'nearest', 'ceil'")
    if multiple is not None and (not isinstance(multiple, int) or multiple < 1):
        raise ValueError(f"quantization multiple must be a positive int or None, got {multiple!r}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if multiple is None or multiple == 1:
        q = rank
    elif mode == "floor":
        q = (rank // multiple) * multiple
    elif mode == "ceil":
        q = -(-rank // multiple) * multiple
    else:
        q = int(math.floor(rank / multiple + 0.5)) * multiple
    if q < 1:
        q = multiple or 1
    if q > max_rank:
        # largest multiple that fits, else the full rank itself
        fit = (max_rank // multiple) * multiple if multiple else max_rank
        q = fit if fit >= 1 else max_rank
    return int(min(max(q, 1), max_rank))


def beta_of(ranks: Sequence[int]) -> float:
    """``beta = r2 / r1`` of a Tucker2 rank pair (eq. 5); 1.0 for anything else (an SVD rank, none).

    Example:
        >>> beta_of([300, 150]), beta_of([64])
        (0.5, 1.0)
    """
    return ranks[1] / ranks[0] if len(ranks) == 2 and ranks[0] > 0 else 1.0


def tucker2_pair(r1: int, beta: float, s: int | None = None) -> list[int]:
    """The Tucker2 ranks ``[r1, r2]`` at input rank ``r1``: ``r2 = floor(beta r1)`` (eq. 5),
    at least 1 and at most ``s`` (the output channels) when given.

    Example:
        >>> tucker2_pair(256, 1.0), tucker2_pair(300, 0.5), tucker2_pair(300, 2.0, s=512)
        ([256, 256], [300, 150], [300, 512])
    """
    r2 = max(1, int(beta * r1 + 1e-9))
    return [int(r1), min(r2, s) if s is not None else r2]


def rank_range(
    c: int,
    s: int,
    kernel: Sequence[int] | int,
    method: str,
    alpha: float | None = None,
    ranks: Sequence[int] = (),
    beta: float | None = None,
) -> list[int]:
    """The ranks Algorithm 1 searches: from ``R`` (compression ``alpha``, eq. 5) down to ``R_min``
    (compression ``alpha + 1``, eq. 6), descending.

    For Tucker2 these are ``r1`` (``r2 = floor(beta r1)``, ``beta`` from ``ranks`` by default);
    for SVD the eq.-2 rank of the ``S x (C k_h k_w)`` unfolding (``c`` is the input channels,
    the kernel is multiplied in here). With ``alpha=None``, ``ranks`` (the layer's current ranks)
    give ``R`` and ``R_min`` is the rank at their achieved compression + 1: for VBMF, quantized or
    hand-set plans.

    Example:
        >>> r = rank_range(512, 512, 3, "tucker2", alpha=2); (r[0], r[-1], len(r))
        (309, 244, 66)
        >>> rank_range(512, 512, 3, "tucker2", ranks=[256, 256])[:2]
        [256, 255]
    """
    kk = _kk(kernel)
    full = c * s * kk
    if method == "tucker2":
        beta = beta_of(ranks) if beta is None else beta
        if alpha is None:
            if len(ranks) != 2:
                raise ValueError(f"give alpha, or Tucker2 ranks [r1, r2] (got {list(ranks)})")
            top, alpha = int(ranks[0]), full / tucker2_params(c, s, kernel, *ranks)
        else:
            top = tucker2_rank(c, s, kernel, alpha, beta)[0]
        low = tucker2_rank_min(c, s, kernel, alpha, beta)[0]
    elif method == "svd":
        if alpha is None:
            if len(ranks) != 1:
                raise ValueError(f"give alpha, or an SVD rank [r] (got {list(ranks)})")
            top, alpha = int(ranks[0]), full / svd_params(c * kk, s, ranks[0])
        else:
            top = svd_rank(c * kk, s, alpha)
        low = svd_rank(c * kk, s, alpha + 1.0)
    else:
        raise ValueError(f"unknown method {method!r}; valid: 'svd', 'tucker2'")
    low = max(1, min(low, top))
    return list(range(int(top), int(low) - 1, -1))


def _as_numpy(w) -> np.ndarray:
    if hasattr(w, "detach"):
        w = w.detach().cpu().double().numpy()
    return np.asarray(w, dtype=np.float64)


def _unfold(w: np.ndarray, mode: int) -> np.ndarray:
    return np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1)


def energy_rank(matrix, energy: float = 0.9) -> int:
    """Smallest ``r`` whose top singular values hold ``energy`` of ``sum(sigma^2)``.

    Example:
        >>> energy_rank(np.diag([3.0, 1.0, 0.0]), 0.9)
        1
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    s = np.linalg.svd(_as_numpy(matrix), compute_uv=False)
    e = np.cumsum(s**2)
    if e[-1] == 0:
        return 1
    return int(min(len(s), np.searchsorted(e / e[-1], energy - 1e-12) + 1))


def energy_ranks(weight, energy: float = 0.9, modes: Sequence[int] = (1, 0)) -> list[int]:
    """:func:`energy_rank` on each mode unfolding of ``weight`` (Tucker2: input mode 1, output 0)."""
    w = _as_numpy(weight)
    return [energy_rank(_unfold(w, m), energy) for m in modes]


def _evb_sigma2_objective(sigma2, L, M, s, residual, xubar):
    H = len(s)
    alpha = L / M
    x = s**2 / (M * sigma2)
    z1 = x[x > xubar]
    z2 = x[x <= xubar]
    tau_z1 = 0.5 * (z1 - (1 + alpha) + np.sqrt((z1 - (1 + alpha)) ** 2 - 4 * alpha))
    term1 = np.sum(z2 - np.log(z2))
    term2 = np.sum(z1 - tau_z1)
    term3 = np.sum(np.log((tau_z1 + 1) / z1))
    term4 = alpha * np.sum(np.log(tau_z1 / alpha + 1))
    return term1 + term2 + term3 + term4 + residual / (M * sigma2) + (L - H) * np.log(sigma2)


def evbmf_rank(matrix) -> int:
    """Rank estimated by empirical VBMF (Nakajima et al., JMLR 2013, analytic global solution).

    The noise variance is estimated by minimising the free energy over its analytic bounds;
    the rank is the number of singular values above the EVB threshold. May return 0 for
    pure noise (callers clamp; see :func:`vbmf_rank`).
    """
    from scipy.optimize import minimize_scalar

    y = _as_numpy(matrix)
    if y.shape[0] > y.shape[1]:
        y = y.T
    L, M = y.shape
    H = L
    alpha = L / M
    tauubar = 2.5129 * math.sqrt(alpha)
    s = np.linalg.svd(y, compute_uv=False)[:H]
    residual = 0.0
    if H < L:
        residual = float(np.sum(y**2) - np.sum(s**2))
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    eh_ub = int(min(math.ceil(L / (1 + alpha)) - 1, H)) - 1
    upper = (np.sum(s**2) + residual) / (L * M)
    tail = s[eh_ub + 1 :]
    lower = max(tail[0] ** 2 / (M * xubar) if len(tail) else 0.0, np.mean(tail**2) / M if len(tail) else 0.0)
    if not upper > lower > 0:
        return int(np.sum(s > 0))
    res = minimize_scalar(
        _evb_sigma2_objective, args=(L, M, s, residual, xubar), bounds=[lower, upper], method="bounded"
    )
    sigma2 = res.x
    threshold = math.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return int(np.sum(s > threshold))


def vbmf_rank(matrix, weakening: float = 1.0, full_rank: int | None = None) -> int:
    """Weakened VBMF rank: ``full - weakening * (full - r_vbmf)`` (layers-targeted paper, Fig. 2).

    ``weakening = 1`` keeps the VBMF rank, ``0`` keeps the full rank; values in between give
    the paper's control over the final compression. Never returns 0: a VBMF rank of 0 (the
    unfolding looks like pure noise) is clamped to 1 with a warning.
    """
    if not 0 <= weakening <= 1:
        raise ValueError(f"VBMF weakening factor must be in [0, 1], got {weakening!r}")
    y = _as_numpy(matrix)
    full = full_rank if full_rank is not None else min(y.shape)
    r = evbmf_rank(y)
    r = int(full - weakening * (full - r))
    if r < 1:
        warnings.warn("VBMF estimated rank 0 (unfolding looks like noise); clamped to 1", stacklevel=2)
        r = 1
    return min(r, full)


def vbmf_ranks(weight, weakening: float = 1.0, modes: Sequence[int] = (1, 0)) -> list[int]:
    """:func:`vbmf_rank` on each mode unfolding (Tucker2 ranks ``(r1, r2)``: modes 1 then 0)."""
    w = _as_numpy(weight)
    return [vbmf_rank(_unfold(w, m), weakening) for m in modes]

"""Factor weights and reconstruction errors: pure functions of a weight tensor.

* SVD (eq. 1-2 of the sequential-freezing paper): ``W = U S V^T``; ``first = sqrt(S_r) V_r^T``,
  ``last = U_r sqrt(S_r)``. For a KxK conv the ``S x (C k_h k_w)`` unfolding is used.
* Tucker2 (eq. 4): factors on the output (mode 0) and input (mode 1) channels of
  ``W [S, C, k_h, k_w]``, by HOSVD (closed form, De Lathauwer et al. 2000b) or HOOI
  (``tensorly.decomposition.partial_tucker``, PyTorch backend, De Lathauwer et al. 2000a).
* Relative reconstruction error curves for every rank (eq. 3), which joint rank selection and
  the explorers read. They sit below both :mod:`lrdnb.decompose` and :mod:`lrdnb.rankopt`.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["svd_factors", "tucker2_factors", "svd_error_curve", "tucker2_error_curve"]


def _gram_svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` SVD ``(u, s, vh)`` of a float64 matrix via the eigendecomposition of its
    smaller Gram matrix (5-10x faster than ``linalg.svd`` on wide unfoldings). Falls back to a
    full SVD where a kept singular value is too small for the Gram route to resolve it."""
    m, n = matrix.shape
    if rank > min(m, n):
        raise ValueError(f"rank {rank} exceeds min{tuple(matrix.shape)}")
    wide = m <= n
    gram = matrix @ matrix.T if wide else matrix.T @ matrix
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals, evecs = evals.flip(0)[:rank], evecs.flip(1)[:, :rank]
    s = evals.clamp_min(0).sqrt()
    if rank and s[-1] <= 1e-6 * s[0]:
        u, s_, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :rank], s_[:rank], vh[:rank]
    if wide:
        return evecs, s, (evecs.T @ matrix) / s[:, None]
    return (matrix @ evecs) / s[None, :], s, evecs.T


def svd_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``r`` factors (Eckart-Young, eq. 2): ``matrix ~= last @ first``.

    Returns ``(first [r, n], last [m, r])`` with the singular values split evenly
    (``sqrt(S)`` on each side) so both factors have comparable scale for fine-tuning.
    """
    u, s, vh = _gram_svd(matrix.detach().to(torch.float64), rank)
    root = s.sqrt()
    first = root[:, None] * vh
    last = u * root[None, :]
    return first.to(matrix.dtype), last.to(matrix.dtype)


def _leading_vectors(unfolding: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-``rank`` left singular vectors of an unfolding (float64)."""
    # eigenvectors of the Gram matrix span the same leading subspace as the left singular
    # vectors, and also complete the basis when rank > C k k (full-rank Tucker2 of thin layers)
    evecs = torch.linalg.eigh(unfolding @ unfolding.T)[1]
    return evecs.flip(1)[:, :rank]


def tucker2_factors(
    weight: torch.Tensor, ranks: Sequence[int], method: str = "hosvd", n_iter_max: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker2 of a conv weight ``[S, C, kh, kw]`` at ``ranks = (r1, r2)`` (input, output mode).

    Returns ``(u_in [C, r1], core [r2, r1, kh, kw], u_out [S, r2])`` with
    ``weight ~= core x_0 u_out x_1 u_in``.

    Args:
        method: ``"hosvd"`` (truncated HOSVD, closed form) or ``"hooi"`` (tensorly
            ``partial_tucker`` initialised by SVD, ``n_iter_max`` sweeps).
    """
    r1, r2 = (int(r) for r in ranks)
    w = weight.detach().to(torch.float64)
    s_, c_ = w.shape[:2]
    if method == "hosvd":
        u_out = _leading_vectors(w.reshape(s_, -1), r2)
        u_in = _leading_vectors(w.transpose(0, 1).reshape(c_, -1), r1)
        core = torch.einsum("sckl,so,ci->oikl", w, u_out, u_in)
    elif method == "hooi":
        import tensorly as tl
        from tensorly.decomposition import partial_tucker

        with tl.backend_context("pytorch"):
            (core, (u_out, u_in)), _ = partial_tucker(
                w, rank=[r2, r1], modes=[0, 1], n_iter_max=n_iter_max, init="svd", tol=1e-6
            )
    else:
        raise ValueError(f"unknown Tucker2 weight method {method!r}; valid: 'hosvd', 'hooi'")
    dt = weight.dtype
    return u_in.to(dt), core.to(dt), u_out.to(dt)


def svd_error_curve(weight: torch.Tensor) -> torch.Tensor:
    """Relative reconstruction error ``||W - W_r|| / ||W||`` for every rank ``r = 0..R``
    (eq. 3; Eckart-Young makes it exact from the singular values)."""
    w = weight.detach().to(torch.float64)
    s = torch.linalg.svdvals(w.reshape(w.shape[0], -1))
    tail = torch.flip(torch.cumsum(torch.flip(s**2, [0]), 0), [0])  # tail[r] = sum_{i>=r} s_i^2
    tail = torch.cat([tail, tail.new_zeros(1)])
    return (tail / (s**2).sum()).clamp_min(0).sqrt()


def tucker2_error_curve(weight: torch.Tensor) -> torch.Tensor:
    """Relative HOSVD error for every ``(r1, r2)``: a ``[C+1, S+1]`` table (index ``[r1, r2]``).

    With orthonormal factors, ``||W - W'||^2 = ||W||^2 - ||core||^2``, and the truncated core is
    a corner of the full rotated core, so one pass gives every rank pair.
    """
    w = weight.detach().to(torch.float64)
    s_, c_ = w.shape[:2]
    u_out = _leading_vectors(w.reshape(s_, -1), s_)
    u_in = _leading_vectors(w.transpose(0, 1).reshape(c_, -1), c_)
    full = torch.einsum("sckl,so,ci->iokl", w, u_out, u_in)  # [C', S', kh, kw]
    energy = (full**2).sum(dim=(2, 3))  # [C', S']
    cum = energy.cumsum(0).cumsum(1)
    table = torch.zeros(c_ + 1, s_ + 1, dtype=torch.float64)
    table[1 : cum.shape[0] + 1, 1 : cum.shape[1] + 1] = cum
    total = (w**2).sum()
    return ((total - table) / total).clamp_min(0).sqrt()

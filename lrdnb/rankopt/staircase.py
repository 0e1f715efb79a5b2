"""Algorithm 1 for one layer signature: its step-time curve measured (coarse to fine, or every
rank), its candidate steps re-timed in pairs, the rank chosen, the original kept only when a
paired check says it is faster.

On a device the curve ``t(r)`` is a staircase: flat between ranks where the kernels' tiling
changes, dropping where ``r`` crosses a multiple of the tile (16 for AVX-512 fp32 oneDNN kernels,
8 for tensor cores; Fig. 2: 15% down from 257 to 256). So the staircase search times a coarse grid
(both ends and every multiple of ``grid``), takes the largest coarse drops, and re-times each
drop's tile boundary ``lo + 1 -> lo`` in pairs (:func:`lrdnb.rankopt.verify.verify_steps`);
the exhaustive search times every rank (the paper's procedure, and Fig. 2).

Every decision is a pure function of measurements that the timing cache stores (coarse
ratios, paired per-round ratios), so a warm run replays a cold run's choice exactly.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..spec import LayerSpec
from ..ranks import beta_of
from .config import RankSearch, ResolvedTiming
from .measure import ORDERS, LayerBench, visit_order
from .select import algorithm1, top_candidates
from .sweep import LayerCurves, repeats_matrix
from .verify import original_faster, verify_steps

__all__ = ["coarse_grid", "LayerChoice", "search_layer"]

#: A chosen rank whose measured time is above this fraction of the original's is checked against
#: the original in paired rounds (below it the decomposition is clearly faster).
CLOSE = 0.9


def coarse_grid(ranks: Sequence[int], grid: int) -> list[int]:
    """Both ends of the range and every multiple of ``grid`` inside it, descending.

    Example:
        >>> coarse_grid(range(244, 310), 16)
        [309, 304, 288, 272, 256, 244]
    """
    r = sorted({int(x) for x in ranks}, reverse=True)
    return [x for i, x in enumerate(r) if i == 0 or i == len(r) - 1 or x % grid == 0]


def _picks(val: dict[int, float], refine: int) -> list[int]:
    """The lower grid rank ``lo`` of the largest coarse drop, then of the highest-rank drops of at
    least half of it, ``refine`` in all: on a device with many near-equal steps noise decides
    which is largest, and the highest of them loses the least accuracy."""
    asc = sorted(val)
    drops = sorted(((val[hi] - val[lo], lo, hi) for lo, hi in zip(asc, asc[1:])), reverse=True)
    drops = [d for d in drops if d[0] > 0]
    pick = drops[:1] + sorted((d for d in drops[1:] if d[0] >= 0.5 * drops[0][0]), key=lambda d: -d[2])
    return [lo for _, lo, _ in pick[:refine]]


@dataclass
class LayerChoice:
    """What the search decided for one signature, and the evidence."""

    rank: int | None  # None: keep the original layer
    reason: str
    t_chosen: float  # seconds per call (reference-normalised), the original's when kept
    T: float  # the original layer's
    timings: int  # measurements taken now (0 on a warm run)


def _measure_curve(bench_of: Callable[[], LayerBench], store: LayerCurves, ranks: list[int], repeats: int, seed: int) -> None:
    """Time the ``ranks`` (and the original) the cache lacks, ``repeats`` passes in rotating
    orders, closed by a reference so every rank is bracketed, and store them."""
    todo = [r for r in ranks if not store.has(r, repeats)]
    if not todo and store.has(0, 1):
        return
    bench = bench_of()
    rng = random.Random(seed)
    for k in range(repeats):
        for r in visit_order(todo, ORDERS[k % len(ORDERS)], rng):
            bench.measure(k, r)
    bench.reference(repeats - 1)
    store.add(bench.rows())


def _values(store: LayerCurves, ranks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ranks ascending, per-repeat times ``[repeats, ranks]`` in units of the original's) from
    the cache (rows with fewer repeats padded with their median)."""
    asc = sorted(ranks)
    return np.asarray(asc), repeats_matrix([store.ratios(store.method, r) for r in asc])


def search_layer(spec: LayerSpec, ranks: Sequence[int], search: RankSearch, t: ResolvedTiming,
                 seed: int = 0) -> LayerChoice:
    """Algorithm 1 (Hajimolahoseini et al. 2023, Sec. 2.1) for ``spec`` over ``ranks``.

    1. measure the curve: the coarse grid (``search.kind == "staircase"``) or every rank;
    2. candidate steps: each large coarse drop's tile boundary ``lo + 1 -> lo``, or the best
       single-rank drops of the full curve (:func:`lrdnb.rankopt.select.top_candidates`);
    3. re-time them in pairs; :func:`lrdnb.rankopt.select.algorithm1` takes the largest confirmed
       drop (ties within ``tie_tol``: the highest rank), the top rank ``R`` if none is confirmed;
    4. if the chosen rank is not clearly faster than the original (time above :data:`CLOSE` of
       it), time both in pairs and keep the original only if it is confirmed faster.
    """
    ranks = sorted({int(r) for r in ranks}, reverse=True)
    beta = beta_of(spec.ranks)
    store = LayerCurves(spec, spec.method, beta, t, (t.pass_,))
    benches: list[LayerBench] = []

    def bench() -> LayerBench:  # built only when something needs timing (never on a warm run)
        if not benches:
            benches.append(LayerBench(spec, spec.method, beta, t, size_rank=ranks[0], seed=seed))
        return benches[0]

    measured = coarse_grid(ranks, search.grid) if search.kind == "staircase" else ranks
    _measure_curve(bench, store, measured, search.repeats, seed)
    r, q = _values(store, measured)
    cands: list[int] = []
    if len(r) >= 2 and search.kind == "staircase":
        cands = _picks(dict(zip(r.tolist(), np.median(q, axis=0).tolist())), search.refine)
    elif len(r) >= 2:
        cands = top_candidates(r, q, search.refine, smooth="consistent" if q.shape[0] > 1 else "median3",
                               min_drop=search.min_drop)
    verified = verify_steps(bench, store, cands, search.rounds, search.confirm, search.min_drop) if cands else None
    if len(r) < 2:
        choice, why = int(r[0]), f"rank {r[0]}, the only rank in the range"
    else:  # times are in units of the original's, which Algorithm 1's last line compares with; that
        # comparison is made below in pairs, so here T is infinite and a rank is always returned
        choice, why = algorithm1(r, q, float("inf"), min_drop=search.min_drop, verified=verified,
                                 tie_tol=search.tie_tol, confirm=search.confirm)
        why = why.rsplit("; ", 1)[0]
    ratio = float(np.median(q[:, r == choice]))
    if ratio > CLOSE:
        kept, rq = original_faster(bench, store, choice, search.rounds, search.confirm)
        if kept:
            why += (f"; original layer kept: faster than rank {choice} in {np.mean(np.asarray(rq) < 1):.0%} of "
                    f"{len(rq)} paired rounds (median t(original) / t({choice}) = {np.median(rq):.2f})")
            choice, ratio = None, 1.0
    if choice is not None:
        why += f"; {1 - ratio:.0%} faster than the original" if ratio < 1 else f"; {ratio - 1:.0%} slower than the original, not confirmed in pairs"
    T = float(store.rows[(t.pass_, "keep", 0)]["norm_s"])
    return LayerChoice(choice, why, T * ratio, T, benches[0].count if benches else 0)

"""A layer's step time over a range of ranks: the exhaustive sweep (Algorithm 1's ``t(r)`` for
every ``r`` from ``R`` to ``R_min``, and Fig. 2), and the cached curve both searches share.

Step time depends only on shapes, so modules of the right shapes are built with arbitrary
weights (:func:`lrdnb.rankopt.measure.shape_module`) and never decomposed. Curves are cached by
(device, torch, dtype, pass, signature, layout, threads, frozen roles, protocol)
(:mod:`lrdnb.rankopt.cache`), so a signature that repeats in a model is timed once.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import pandas as pd

from .. import ranks as R
from .cache import as_cache, timing_key
from ..spec import LayerSpec
from ..provenance import device_name
from .config import ResolvedTiming, Timing
from .measure import ORDERS, LayerBench, visit_order

__all__ = ["rank_range", "sweep", "per_repeat", "repeats_matrix", "curve_arrays", "LayerCurves"]


def rank_range(spec: LayerSpec, alpha: float | None = None, beta: float | None = None,
               method: str | None = None) -> list[int]:
    """:func:`lrdnb.ranks.rank_range` (eq. 5 down to eq. 6) for a plan entry: ``alpha=None``
    takes the entry's own ranks as ``R``.

    Example:
        >>> spec = LayerSpec("c", "conv2d", [512, 512, 3, 3], False, [8, 512, 14, 14], method="tucker2")
        >>> r = rank_range(spec, alpha=2); (r[0], r[-1])
        (309, 244)
    """
    return R.rank_range(spec.in_channels, spec.out_channels, spec.kernel, method or spec.method, alpha,
                        spec.ranks, beta)


def spec_at_batch(spec: LayerSpec, batch: int | None) -> LayerSpec:
    """``spec`` with its input/output shapes at another batch size (``None``: as is)."""
    if spec.input_shape is None:
        raise ValueError(f"layer {spec.name!r} has no input shape; make the plan with an example batch")
    if batch is None:
        return spec
    d = spec.to_dict()
    d["input_shape"] = [int(batch)] + list(spec.input_shape[1:])
    if spec.output_shape:
        d["output_shape"] = [int(batch)] + list(spec.output_shape[1:])
    return LayerSpec.from_dict(d)


class LayerCurves:
    """What the timing cache holds for one layer signature (one key per pass), by
    ``(pass, method, rank)``; the original layer is ``("keep", 0)``, paired checks are stored
    under methods ``"<method>-step"`` (rank ``c``: ``c`` vs ``c + 1``) and ``"<method>-orig"``
    (rank ``c`` vs the original)."""

    def __init__(self, spec: LayerSpec, method: str, beta: float, t: ResolvedTiming, passes: Sequence[str]) -> None:
        self.spec, self.method, self.beta, self.passes = spec, method, beta, tuple(passes)
        self.store = as_cache(t.cache)
        frozen = t.frozen.get(method, ())
        self.keys = {p: timing_key(device_name(t.device), t.dtype, p, spec.timed_signature(p), t.channels_last,
                                   t.threads, frozen) for p in self.passes}
        self.rows: dict[tuple[str, str, int], dict] = {}
        r2 = (lambda r: R.tucker2_pair(r, beta, spec.out_channels)[1]) if method == "tucker2" else (lambda r: 0)
        for p in self.passes if self.store is not None else ():
            for row in self.store.lookup(self.keys[p]):
                m = str(row["method"])
                if m == "keep" or (m == method and row["r2"] == r2(row["rank"])) or m.startswith(method + "-"):
                    self.rows[(p, m, int(row["rank"]))] = row

    def has(self, rank: int, repeats: int) -> bool:
        m = "keep" if rank == 0 else self.method
        return all((p, m, rank) in self.rows and self.rows[(p, m, rank)]["n"] >= repeats for p in self.passes)

    def ratios(self, kind: str, rank: int, n: int = 1) -> list[float] | None:
        """The stored per-repeat (or per-round) ratios of a curve point (``kind`` = method) or
        paired check (``kind`` = ``"step"``/``"orig"``), if at least ``n`` are stored."""
        m = kind if kind in ("keep", self.method) else f"{self.method}-{kind}"
        row = self.rows.get((self.passes[0], m, rank))
        if row is None or row["n"] < n:
            return None
        return [float(x) for x in str(row.get("ratios") or "").split(";") if x and x != "nan"] or None

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            self.rows[(r["pass"], r["method"], int(r["rank"]))] = r
        if rows and self.store is not None:
            self.store.add(rows, self.keys)

    def add_paired(self, kind: str, q: dict[int, list[float]]) -> None:
        """Store paired checks ``{rank: per-round ratios}`` under ``"<method>-<kind>"``."""
        p = self.passes[0]
        self.add([{"method": f"{self.method}-{kind}", "rank": int(c), "r2": 0, "pass": p,
                   "median_s": float(np.median(v)), "min_s": float(min(v)), "max_s": float(max(v)), "n": len(v),
                   "ratios": ";".join(f"{x:.6g}" for x in v)} for c, v in q.items()])

    def frame(self, ranks: Sequence[int], t: ResolvedTiming, fresh: set[tuple[str, int]]) -> pd.DataFrame:
        """The curve as the sweep frame (see :func:`sweep`), rows of ``ranks`` and the original."""
        want = set(ranks)
        rows = [dict(r, cached=(p, k) not in fresh) for (p, m, k), r in self.rows.items()
                if m == "keep" or (m == self.method and k in want)]
        s = self.spec
        meta = {**t.record(), "frozen": ",".join(t.frozen.get(self.method, ())), "batch": s.input_shape[0],
                "input_shape": "x".join(map(str, s.input_shape)), "weight_shape": "x".join(map(str, s.weight_shape)),
                "signature": s.signature}
        meta.pop("pass")
        rows.sort(key=lambda r: (r["pass"], r["method"], -r["rank"]))
        return pd.DataFrame([{**r, **meta} for r in rows])


def sweep(
    spec: LayerSpec,
    ranks: Sequence[int] | None = None,
    passes: Sequence[str] = ("forward", "train"),
    timing: Timing | ResolvedTiming | dict | None = None,
    batch: int | None = None,
    method: str | None = None,
    beta: float | None = None,
    repeats: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Time a layer at every rank of a range, plus the original layer (Algorithm 1's ``T``).

    Each of ``repeats`` passes visits all ranks in the next order of :data:`ORDERS` (descending,
    ascending, shuffled), every pass type of a rank back to back; each time is also divided by
    the original layer's, timed as a reference every few measurements (:class:`LayerBench`).

    Args:
        spec: the layer (a plan entry with its input shape).
        ranks: ``r1`` for Tucker2 (``r2 = floor(beta r1)``), the rank for SVD; default
            :func:`rank_range` of the entry's ranks.
        passes: any of ``"forward"``, ``"train"``, ``"step"``.
        timing: where and how (:class:`~lrdnb.rankopt.config.Timing`; its ``pass_`` is ignored
            here, ``passes`` are timed; default: no cache).
        batch: override the batch size of the spec's shapes.
        beta: ``r2 / r1`` for Tucker2; default the spec's own.
        repeats: passes over the ranks (>= 3 lets a median reject one slow episode). Ranks the
            cache holds with at least ``repeats`` repeats are not re-timed.

    Returns:
        Tidy DataFrame, one row per (method, rank, pass): ``rank`` (0 for the original, method
        ``"keep"``), ``r2``, ``method``, ``pass``, ``median_s``, ``iqr_s``, ``min_s``, ``max_s``,
        ``n`` (repeats), ``number`` (calls per measurement), ``norm_s`` (reference-normalised
        seconds), ``norm_iqr_s``, ``ref_s``, ``times_s`` / ``ratios`` (per repeat, ``;``-joined),
        ``cached`` and how it was timed (device, threads, dtype, layout, shapes, signature).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t = timing if isinstance(timing, ResolvedTiming) else \
        Timing.from_dict(timing if timing is not None else {"cache": None}).resolve()
    spec = spec_at_batch(spec, batch)
    method = method or spec.method
    if method not in ("svd", "tucker2"):
        raise ValueError(f"sweep needs method 'svd' or 'tucker2' (layer {spec.name!r} has {method!r})")
    beta = R.beta_of(spec.ranks) if beta is None else beta
    ranks = sorted({int(r) for r in (ranks if ranks is not None else rank_range(spec, beta=beta, method=method))},
                   reverse=True)
    if not ranks or ranks[-1] < 1:
        raise ValueError(f"ranks must be positive integers, got {ranks}")
    store = LayerCurves(spec, method, beta, t, passes)
    todo = [r for r in ranks if not store.has(r, repeats)]
    fresh: set[tuple[str, int]] = set()
    if todo or not store.has(0, 1):
        from tqdm.auto import tqdm

        bench = LayerBench(spec, method, beta, t, passes, size_rank=max(todo) if todo else None, seed=seed)
        rng = random.Random(seed)
        with tqdm(total=repeats * len(todo), desc=f"sweep {spec.name or spec.signature[:30]}", unit="rank",
                  disable=not progress, leave=False) as bar:
            for k in range(repeats):
                bench.reference(k)  # every pass starts with a reference
                for r in visit_order(todo, ORDERS[k % len(ORDERS)], rng):
                    bench.measure(k, r)
                    bar.update()
            bench.reference(repeats - 1)  # every rank bracketed
        rows = bench.rows()
        store.add(rows)
        fresh = {(r["pass"], r["rank"]) for r in rows}
    return store.frame(ranks, t, fresh)


def per_repeat(df: pd.DataFrame, column: str = "ratios") -> np.ndarray:
    """Per-repeat values of a sweep frame's ``times_s`` or ``ratios`` column as ``[repeats, rows]``
    (rows in frame order); rows with fewer repeats are padded with their median."""
    return repeats_matrix([[float(x) for x in str(s).split(";") if x] for s in df[column]])


def repeats_matrix(vals: Sequence[Sequence[float]]) -> np.ndarray:
    """Per-row repeat values as ``[repeats, rows]``, rows with fewer repeats padded with their median."""
    n = max(len(v) for v in vals)
    return np.array([list(v) + [float(np.median(v))] * (n - len(v)) for v in vals]).T


def curve_arrays(df: pd.DataFrame, pass_: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(ranks ascending, per-repeat times [repeats, ranks], median times, T)`` of a sweep frame:
    every time is its ratio to the original layer measured beside it, times one ``T`` (the
    original's median), so points timed in different sessions (a partly cached curve) compare."""
    here = df["pass"].to_numpy() == pass_
    keep = df["method"].to_numpy() == "keep"
    T = float(df["norm_s"].to_numpy()[here & keep][0])
    sel = np.flatnonzero(here & ~keep)
    ranks = df["rank"].to_numpy(int)[sel]
    order = np.argsort(ranks, kind="stable")
    q = per_repeat(pd.DataFrame({"ratios": df["ratios"].to_numpy()[sel][order]}), "ratios")
    return ranks[order], q * T, np.median(q, axis=0) * T, T
